"""Layer-wise learning rates (layer_decay.py): the groups they make, and a training stage whose
first blocks move less than its last."""

import pytest

from kshot.embedder.freezing import backbone_blocks, freeze_backbone, trainable_parameters
from kshot.embedder.layer_decay import layer_decay_groups
from kshot.embedder.training import train_embedder
from kshot.errors import KshotError
from tests.embedder.test_training import FAST, recipe, tiny_embedder, tiny_images


@pytest.fixture
def embedder(conv4_factory):
    return conv4_factory(embedding_dim=8, head_hidden=16)


def ids(params) -> set[int]:
    return {id(p) for p in params}


def test_each_block_learns_at_decay_times_the_next_and_the_head_at_the_rate(embedder):
    freeze_backbone(embedder, None)
    groups = layer_decay_groups(embedder, 1e-3, 0.5)
    assert [g["lr"] for g in groups] == pytest.approx([1e-3, 5e-4, 2.5e-4, 1.25e-4])
    blocks = backbone_blocks(embedder)
    assert ids(groups[0]["params"]) == ids(blocks[3].parameters()) | ids(embedder.head.parameters())
    assert ids(groups[3]["params"]) == ids(blocks[0].parameters())


def test_every_trainable_parameter_is_in_exactly_one_group(embedder):
    freeze_backbone(embedder, None)
    grouped = [id(p) for g in layer_decay_groups(embedder, 1e-3, 0.7) for p in g["params"]]
    assert len(grouped) == len(set(grouped))
    assert set(grouped) == ids(trainable_parameters(embedder))


def test_frozen_blocks_get_no_group(embedder):
    freeze_backbone(embedder, 2)
    groups = layer_decay_groups(embedder, 1e-2, 0.1)
    assert [g["lr"] for g in groups] == pytest.approx([1e-2, 1e-3])
    assert ids(p for g in groups for p in g["params"]) == ids(trainable_parameters(embedder))


def test_training_moves_the_first_block_by_about_its_own_rate():
    """Adam's first steps move a weight by about its learning rate: with a decay of 0.01 the
    first conv block (1e-3 x 0.01**3) barely moves while the last block and the head move."""
    embedder = tiny_embedder()
    blocks = backbone_blocks(embedder)
    first, last = blocks[0][0].weight.detach().clone(), blocks[3][0].weight.detach().clone()
    head = embedder.head[0].weight.detach().clone()
    train_embedder(embedder, tiny_images(), recipe(epochs=1, layer_decay=0.01, **FAST))
    assert (blocks[0][0].weight - first).abs().max() < 1e-7
    assert (blocks[3][0].weight - last).abs().max() > 1e-4
    assert (embedder.head[0].weight - head).abs().max() > 1e-4


def test_a_decay_of_one_trains_the_first_block_at_the_stage_s_rate():
    """The counterpart of the test above: at 1 the first block moves as the last does."""
    embedder = tiny_embedder()
    first = backbone_blocks(embedder)[0][0].weight.detach().clone()
    train_embedder(embedder, tiny_images(), recipe(epochs=1, layer_decay=1.0, **FAST))
    assert (backbone_blocks(embedder)[0][0].weight - first).abs().max() > 1e-4


@pytest.mark.parametrize("decay", [0.0, -0.5, 1.5])
def test_a_decay_outside_zero_to_one_is_refused(decay):
    with pytest.raises(KshotError, match="--layer-decay"):
        recipe(layer_decay=decay)
