"""What ``kshot train`` shows and keeps while it trains: a progress bar per epoch, a line per
epoch, TensorBoard scalars, and the state file ``--resume`` continues from."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

import torch

from kshot.atomic import atomic_path
from kshot.cli.console import progress, say
from kshot.embedder.run import format_scores
from kshot.embedder.training import EpochStats, Observer

# TensorBoard tags of the validation scores (kshot.fewshot.validation).
SCALARS = {
    "precision_at_1": "val/precision_at_1",
    "accuracy": "val/accuracy",
    "fewshot_accuracy": "holdout/fewshot_accuracy",
    "library_accuracy": "holdout/library_accuracy",
}


class TrainingConsole(Observer):
    """The main process's observer; ``close()`` ends the bar and flushes TensorBoard."""

    def __init__(self, total_epochs: int, state_file: Path, logdir: Path | None):
        self.total_epochs = total_epochs
        self.state_file = state_file
        self.stack = ExitStack()
        self.advance = None
        self.writer = None
        if logdir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(logdir))

    def epoch_started(self, stage: str, epoch: int, steps: int) -> None:
        label = f"epoch {epoch}/{self.total_epochs} ({stage})"
        self.advance = self.stack.enter_context(progress(label, steps))

    def step_done(self) -> None:
        self.advance(1)

    def epoch_done(self, stats: EpochStats) -> None:
        self.stack.close()
        scores = format_scores(stats.metrics)
        say(
            f"epoch {stats.epoch}/{self.total_epochs} ({stats.stage})  loss {stats.loss:.4f}  "
            f"lr {stats.lr:.2g}  {stats.seconds:.1f} s  {scores}".rstrip()
        )
        if self.writer is not None:
            self.writer.add_scalar("loss/train", stats.loss, stats.epoch)
            self.writer.add_scalar("lr", stats.lr, stats.epoch)
            self.writer.add_scalar("seconds_per_epoch", stats.seconds, stats.epoch)
            for name, value in stats.metrics.items():
                self.writer.add_scalar(SCALARS.get(name, f"val/{name}"), value, stats.epoch)
            self.writer.flush()

    def notice(self, message: str) -> None:
        say(message)

    def save_state(self, state: dict) -> None:
        with atomic_path(self.state_file) as tmp:
            torch.save(state, tmp)

    def close(self) -> None:
        self.stack.close()
        if self.writer is not None:
            self.writer.close()
