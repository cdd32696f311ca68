"""Enrolling on several processes, as ``torchrun --nproc-per-node N -m kshot enroll ...`` starts
them: every process embeds, one writes.

Why: embedding (decoding each photo, a forward pass) is nearly all the time an enrollment takes,
and it shares out; committing does not, and a library has one writer at a time (its lock,
SQLite's transactions). So the main process (rank 0) alone opens the library: it runs
:meth:`Library.enroll` as one process would, deciding what each batch of ``ENROLL_BATCH`` still
needs (skipping bytes already committed), and each batch's new files are embedded by every
process, process r taking files r, r + N, r + 2N, ...; the main one gathers the vectors, puts
them back in the batch's order and commits, batch after batch. The catalogue ends as a single
process's enrollment leaves it, and only the main process prints. The others read the library's
model file and manifest, write nothing, and end with the main process's exit code, which it
sends them when it is done or has failed.

The images must be at the same paths for every process (one machine, or a shared filesystem).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from kshot.embedder.distributed import Distributed, start_from_env, stop
from kshot.embedder.inference import Embedded, embed_files
from kshot.embedder.model import Embedder
from kshot.errors import EXIT_FAILED, EXIT_INTERRUPTED, KshotError
from kshot.fewshot.library import EmbedFiles, Library, Progress, bound_embedder
from kshot.fewshot.store import LibraryStore

Shard = Callable[[Library], EmbedFiles]  # an open library's embedding, shared among processes
Main = Callable[[str, Shard | None], int]  # the command on the main process: its exit code


@dataclass(frozen=True)
class Embed:
    """Embed your share of ``paths`` as the library does (its precision and TTA views)."""

    paths: list[Path]
    precision: str
    tta: tuple[str, ...]


@dataclass(frozen=True)
class Stop:
    """Enrollment is over: end with ``code``."""

    code: int


@dataclass(frozen=True)
class Failed:
    """Process ``rank`` could not embed its share."""

    rank: int
    reason: str


class Group:
    """The two collectives enrollment uses, over the process group torchrun describes."""

    def __init__(self, world: Distributed):
        self.rank, self.size = world.rank, world.world_size
        self.world = world

    def tell(self, message: Embed | Stop | None) -> Embed | Stop:
        """The main process's ``message``, in every process."""
        return self.world.share_from_main(message)

    def collect(self, part: Embedded | Failed | None) -> list | None:
        """Every process's ``part``, by rank, in the main process (``None`` elsewhere)."""
        parts = [None] * self.size if self.rank == 0 else None
        dist.gather_object(part, parts, dst=0)
        return parts


def run_sharded(root: Path, device: str, main: Main) -> int:
    """``main(device, shard)``'s exit code. Without torchrun (no ``WORLD_SIZE`` over 1) it is
    called as it is, with ``shard`` None. Under torchrun the main process calls it with this
    process's device and a ``shard`` that makes an open library's embedding shared, while the
    others embed what they are sent (reading the model of the library at ``root``) until told
    the code to end with."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return main(device, None)
    world, chosen = start_from_env(device)
    group = Group(world)
    try:
        if world.is_main:
            return _lead(group, main, str(chosen))
        return serve(group, root, chosen)
    finally:
        world.wait_for_all()
        stop(world)


def _lead(group: Group, main: Main, device: str) -> int:
    """Run ``main`` on the main process and tell the others how it ended."""
    try:
        code = main(device, lambda library: shared_embedding(group, library))
    except BaseException as exc:
        group.tell(Stop(EXIT_INTERRUPTED if isinstance(exc, KeyboardInterrupt) else EXIT_FAILED))
        raise
    group.tell(Stop(code))
    return code


def shared_embedding(group: Group, library: Library) -> EmbedFiles:
    """``library``'s embedding of a batch, shared among ``group``'s processes (main process)."""
    embedder = library.embedder

    def embed(paths: list[Path], on_progress: Progress | None = None) -> Embedded:
        if not paths:  # nothing new in the batch: no need to wake the others
            return library.embed_files(paths, on_progress)
        message = group.tell(Embed(list(paths), embedder.precision, library.manifest.tta))
        failure: BaseException | None = None
        try:
            mine: Embedded | Failed = share(embedder, message, group.rank, group.size)
        except BaseException as exc:  # collected all the same, or the others would wait
            mine, failure = Failed(group.rank, str(exc)), exc
        parts = group.collect(mine)
        if failure is not None:
            raise failure
        failed = [part for part in parts if isinstance(part, Failed)]
        if failed:
            raise KshotError(f"process {failed[0].rank} could not embed: {failed[0].reason}")
        if on_progress is not None:
            on_progress(len(paths))
        return merged(parts)

    return embed


def serve(group: Group, root: Path, device: torch.device) -> int:
    """Embed the shares the main process sends until it says stop (another process): the exit
    code it sends. The library's model is read once, at the first share; nothing is written."""
    embedder: Embedder | None = None
    while True:
        message = group.tell(None)
        if isinstance(message, Stop):
            return message.code
        try:
            if embedder is None:
                manifest = LibraryStore.read_manifest(root)
                embedder = bound_embedder(Path(root), manifest, device, message.precision)
            part: Embedded | Failed = share(embedder, message, group.rank, group.size)
        except Exception as exc:  # told to the main process, which fails with it
            part = Failed(group.rank, f"{type(exc).__name__}: {exc}")
        group.collect(part)


def share(embedder: Embedder, message: Embed, rank: int, size: int) -> Embedded:
    """Process ``rank``'s share of ``message.paths`` (every ``size``-th, from ``rank``) embedded;
    its indices are positions in the share."""
    return embed_files(embedder, message.paths[rank::size], digest=True, tta=message.tta)


def merged(parts: list[Embedded]) -> Embedded:
    """The shares of ``len(parts)`` processes as one embedding of the whole batch, in its order
    (indices, errors' too, are positions in the batch again)."""
    size = len(parts)
    indices = [rank + i * size for rank, part in enumerate(parts) for i in part.indices]
    order = np.argsort(np.array(indices, dtype=np.int64), kind="stable")
    sha256 = [sha for part in parts for sha in part.sha256]
    errors = [
        (rank + i * size, error) for rank, part in enumerate(parts) for i, error in part.errors
    ]
    return Embedded(
        vectors=np.concatenate([part.vectors for part in parts])[order],
        indices=[indices[j] for j in order],
        sha256=[sha256[j] for j in order],
        errors=sorted(errors, key=lambda error: error[0]),
    )
