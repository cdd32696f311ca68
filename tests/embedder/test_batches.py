"""An epoch's batches: class-balanced ones hold m images of each of their classes."""

import torch

from kshot.embedder.batches import epoch_loader
from kshot.embedder.distributed import Distributed
from kshot.embedder.recipe import TrainConfig


def test_balanced_batches_hold_m_images_of_each_class():
    labels = torch.arange(5).repeat_interleave(6)  # 5 classes x 6
    dataset = torch.utils.data.TensorDataset(torch.arange(30), labels)
    config = TrainConfig(loss="triplet", batch_size=8, samples_per_class=2)
    batches = [
        batch_labels for _, batch_labels in epoch_loader(dataset, labels, config, Distributed())
    ]
    assert len(batches) == 30 // 8
    for batch_labels in batches:
        counts = torch.bincount(batch_labels, minlength=5)
        assert sorted(counts.tolist()) == [0, 2, 2, 2, 2]
