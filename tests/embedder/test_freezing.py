"""Freezing the backbone's blocks for a training stage (freezing.py), and the blocks each
registered backbone declares (``BackboneSpec.blocks``)."""

import pytest
import torch
from torch import nn

from kshot.embedder.backbone_info import TIMM_SUGGESTED, meta_backbone
from kshot.embedder.backbones import BACKBONES
from kshot.embedder.freezing import (
    backbone_blocks,
    freeze_backbone,
    set_train_mode,
    trainable_parameters,
)
from kshot.embedder.model import Embedder, EmbedderConfig


@pytest.fixture
def embedder(conv4_factory):
    return conv4_factory(embedding_dim=8, head_hidden=16)


def grads(module: nn.Module) -> set[bool]:
    return {p.requires_grad for p in module.parameters()}


def test_conv4_has_four_blocks_of_conv_norm_relu_pool(embedder):
    blocks = backbone_blocks(embedder)
    assert len(blocks) == 4
    for block in blocks:
        kinds = [type(m) for m in block]
        assert kinds == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d]


def test_none_lets_every_block_train(embedder):
    assert freeze_backbone(embedder, None) == []
    assert grads(embedder) == {True}


@pytest.mark.parametrize("blocks", [4, 9])
def test_as_many_blocks_as_the_backbone_has_lets_all_train(embedder, blocks):
    assert freeze_backbone(embedder, blocks) == []
    assert grads(embedder) == {True}


@pytest.mark.parametrize("blocks", [0, -1])
def test_zero_freezes_the_whole_backbone_but_not_the_head(embedder, blocks):
    assert freeze_backbone(embedder, blocks) == [embedder.backbone]
    assert grads(embedder.backbone) == {False}
    assert grads(embedder.head) == {True}


@pytest.mark.parametrize("trainable", [1, 2, 3])
def test_only_the_last_blocks_train(embedder, trainable):
    blocks = backbone_blocks(embedder)
    frozen = freeze_backbone(embedder, trainable)
    # conv4's blocks are slices of one Sequential, made anew on each call: compare their layers.
    assert [list(f) for f in frozen] == [list(b) for b in blocks[: 4 - trainable]]
    for i, block in enumerate(blocks):
        assert grads(block) == {i >= 4 - trainable}, i
    assert grads(embedder.head) == {True}
    expected = [p for p in embedder.parameters() if p.requires_grad]
    assert trainable_parameters(embedder) == expected
    n_block = sum(p.numel() for p in blocks[3].parameters())
    n_head = sum(p.numel() for p in embedder.head.parameters())
    if trainable == 1:
        assert sum(p.numel() for p in trainable_parameters(embedder)) == n_block + n_head


def test_freezing_again_starts_from_everything_trainable(embedder):
    freeze_backbone(embedder, 0)
    freeze_backbone(embedder, 1)
    blocks = backbone_blocks(embedder)
    assert grads(blocks[3]) == {True}
    assert grads(blocks[0]) == {False}
    freeze_backbone(embedder, None)
    assert grads(embedder) == {True}


@pytest.mark.parametrize("trainable", [0, 1])
def test_train_mode_keeps_frozen_parts_in_eval(embedder, trainable):
    embedder.eval()
    frozen = freeze_backbone(embedder, trainable)
    set_train_mode(embedder, frozen)
    assert embedder.training and embedder.head.training
    frozen_modules = {id(m) for part in frozen for m in part.modules()}
    assert frozen_modules
    for module in embedder.modules():
        assert module.training is (id(module) not in frozen_modules)


def test_a_frozen_block_keeps_its_batch_norm_statistics(embedder):
    blocks = backbone_blocks(embedder)
    set_train_mode(embedder, freeze_backbone(embedder, 1))
    before = [b[1].running_mean.clone() for b in blocks]
    embedder(torch.randn(4, 1, 28, 28))
    after = [b[1].running_mean for b in blocks]
    assert [torch.equal(x, y) for x, y in zip(before, after, strict=True)] == [
        True,
        True,
        True,
        False,
    ]


@pytest.mark.parametrize("name", [*BACKBONES, *TIMM_SUGGESTED, "timm:test_resnet.r160_in1k"])
def test_blocks_cover_the_backbone_without_overlap(name):
    """Unfreezing "the last N blocks" must count (almost) every weight: blocks share no parameter,
    and what lies outside them (a final norm layer) is a tiny fraction of the backbone. Built on
    the meta device: the blocks are a matter of structure, not of values."""
    config = EmbedderConfig.for_backbone(name)
    model = Embedder(config, meta_backbone(name, config.preprocess))
    blocks = backbone_blocks(model)
    assert len(blocks) >= 4
    in_blocks = [id(p) for block in blocks for p in block.parameters()]
    assert len(in_blocks) == len(set(in_blocks))
    sizes = {id(p): p.numel() for p in model.backbone.parameters()}
    assert set(in_blocks) <= set(sizes)
    covered = sum(sizes[i] for i in in_blocks) / sum(sizes.values())
    assert covered > 0.999
    assert all(sum(p.numel() for p in block.parameters()) > 0 for block in blocks)
