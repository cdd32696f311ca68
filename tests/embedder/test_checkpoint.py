"""The embedder (model.py) and its checkpoint file (checkpoint.py)."""

import pickle
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kshot.embedder import checkpoint
from kshot.embedder.checkpoint import load_checkpoint, model_hash, save_checkpoint
from kshot.embedder.model import EmbedderConfig, build_embedder
from kshot.errors import KshotError


def images(n: int = 4, channels: int = 1, size: int = 28, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, channels, size, size, generator=torch.Generator().manual_seed(seed))


# --- the embedder -------------------------------------------------------------------------------


def test_output_is_unit_length_with_the_embedding_dim(conv4_factory):
    embedder = conv4_factory(embedding_dim=16)
    assert embedder.embedding_dim == 16
    with torch.inference_mode():
        out = embedder(images(5))
    assert out.shape == (5, 16)
    assert torch.allclose(out.norm(dim=1), torch.ones(5), atol=1e-5)
    assert isinstance(embedder.head, nn.Linear)
    assert embedder.head.in_features == embedder.feature_dim == 64


def test_no_head_gives_normalised_backbone_features(conv4_embedder):
    assert isinstance(conv4_embedder.head, nn.Identity)
    assert conv4_embedder.embedding_dim == conv4_embedder.feature_dim == 64
    x = images(3)
    with torch.inference_mode():
        out = conv4_embedder(x)
        features = conv4_embedder.backbone(x)
    assert out.shape == (3, 64)
    assert torch.allclose(out, F.normalize(features, dim=1), atol=1e-6)
    assert not torch.allclose(features.norm(dim=1), torch.ones(3))  # it did normalise something


def test_head_hidden_builds_two_layers(conv4_factory):
    embedder = conv4_factory(embedding_dim=8, head_hidden=32, dropout=0.1)
    linears = [m for m in embedder.head.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(64, 32), (32, 8)]
    dropouts = [m for m in embedder.head.modules() if isinstance(m, nn.Dropout)]
    assert len(dropouts) == 1 and dropouts[0].p == 0.1
    with torch.inference_mode():
        out = embedder(images(2))
    assert out.shape == (2, 8)
    assert torch.allclose(out.norm(dim=1), torch.ones(2), atol=1e-5)


def test_config_dict_round_trip():
    config = EmbedderConfig.for_backbone("conv4", embedding_dim=12, head_hidden=24, dropout=0.3)
    assert EmbedderConfig.from_dict(config.to_dict()) == config
    assert config.preprocess == build_embedder(config, pretrained=False).config.preprocess


def test_colour_conv4_at_84_pixels():
    from kshot.embedder.preprocess import PreprocessConfig

    preprocess = PreprocessConfig(84, 92, (0.5,) * 3, (0.5,) * 3, channels=3)
    embedder = build_embedder(EmbedderConfig("conv4", preprocess), pretrained=False).eval()
    assert embedder.embedding_dim == 64 * 25
    with torch.inference_mode():
        assert embedder(images(2, channels=3, size=84)).shape == (2, 64 * 25)


# --- checkpoints --------------------------------------------------------------------------------


def test_save_load_round_trip(tmp_path, conv4_factory):
    embedder = conv4_factory(embedding_dim=16, head_hidden=32)
    path = tmp_path / "model.kshot"
    digest = save_checkpoint(embedder, path, info={"epochs": 3, "loss": "triplet"})
    assert digest == model_hash(embedder)
    loaded, info = load_checkpoint(path)
    assert info == {"epochs": 3, "loss": "triplet"}
    assert not loaded.training
    assert loaded.config == embedder.config
    assert model_hash(loaded) == digest
    x = images(4)
    with torch.inference_mode():
        assert torch.equal(loaded(x), embedder(x))
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary file left behind


def test_info_defaults_to_empty(tmp_path, conv4_embedder):
    path = tmp_path / "m.kshot"
    save_checkpoint(conv4_embedder, path)
    assert load_checkpoint(path)[1] == {}


def test_model_hash_changes_with_one_weight(conv4_factory):
    a = conv4_factory(seed=5)
    b = conv4_factory(seed=5)
    assert model_hash(a) == model_hash(b)
    with torch.no_grad():
        b.backbone[0].weight[0, 0, 0, 0] += 1e-3
    assert model_hash(a) != model_hash(b)


def test_model_hash_changes_with_a_buffer(conv4_factory):
    a, b = conv4_factory(seed=5), conv4_factory(seed=5)
    b.backbone[1].running_mean[0] = 0.5
    assert model_hash(a) != model_hash(b)


def test_model_hash_changes_with_config(conv4_factory):
    # dropout changes no tensor at all (there is no head), only the config
    a = conv4_factory(seed=5, dropout=0.2)
    b = conv4_factory(seed=5, dropout=0.3)
    assert all(torch.equal(a.state_dict()[k], v) for k, v in b.state_dict().items())
    assert model_hash(a) != model_hash(b)


def test_model_hash_is_independent_of_train_or_eval_mode(conv4_factory):
    a = conv4_factory(seed=5)
    digest = model_hash(a)
    a.train()
    assert model_hash(a) == digest


def test_different_models_have_different_hashes(conv4_factory):
    assert model_hash(conv4_factory(seed=1)) != model_hash(conv4_factory(seed=2))


class MakesMarker:
    """Unpickling this object would create a file: what a malicious checkpoint could do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _payload(**overrides):
    data = {"format": checkpoint.FORMAT, "version": checkpoint.VERSION}
    data.update(overrides)
    return data


def test_pickled_code_in_torch_save_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.kshot"
    torch.save(_payload(config=MakesMarker(marker)), path)
    with pytest.raises(KshotError) as caught:
        load_checkpoint(path)
    assert str(path) in str(caught.value)
    assert "not a kshot model file" in str(caught.value)
    assert not marker.exists()
    # the payload really would have created the file, had it been unpickled
    torch.load(path, weights_only=False)
    assert marker.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_plain_pickle_with_code_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.kshot"
    with open(path, "wb") as handle:
        pickle.dump(MakesMarker(marker), handle)
    with pytest.raises(KshotError, match="not a kshot model file"):
        load_checkpoint(path)
    assert not marker.exists()


def test_pickled_function_is_refused(tmp_path):
    path = tmp_path / "function.kshot"
    torch.save(_payload(hook=images), path)
    with pytest.raises(KshotError, match="not a kshot model file"):
        load_checkpoint(path)


@pytest.mark.parametrize(
    "content", [b"", b"\x00\x01random bytes\xff" * 50], ids=["empty", "random-bytes"]
)
def test_non_model_bytes_are_refused(tmp_path, content):
    path = tmp_path / "bytes.kshot"
    path.write_bytes(content)
    with pytest.raises(KshotError) as caught:
        load_checkpoint(path)
    assert str(path) in str(caught.value)


@pytest.mark.parametrize(
    "payload",
    [{"state_dict": {}}, [1, 2, 3], {"format": "something-else", "version": 1}],
    ids=["no-tag", "list", "other-format"],
)
def test_torch_files_that_are_not_kshot_models(tmp_path, payload):
    path = tmp_path / "other.pt"
    torch.save(payload, path)
    with pytest.raises(KshotError, match="no 'kshot-embedder' format tag"):
        load_checkpoint(path)


def test_wrong_version_is_refused(tmp_path, conv4_embedder):
    path = tmp_path / "future.kshot"
    torch.save(
        _payload(
            version=checkpoint.VERSION + 1,
            config=conv4_embedder.config.to_dict(),
            state_dict=conv4_embedder.state_dict(),
        ),
        path,
    )
    with pytest.raises(KshotError) as caught:
        load_checkpoint(path)
    assert str(path) in str(caught.value)
    assert f"version {checkpoint.VERSION + 1}" in str(caught.value)


def test_missing_file(tmp_path):
    with pytest.raises(KshotError, match="no such kshot model file"):
        load_checkpoint(tmp_path / "absent.kshot")


@pytest.mark.parametrize("damage", ["no-config", "bad-config", "wrong-tensors"])
def test_damaged_model_file(tmp_path, conv4_embedder, conv4_factory, damage):
    config = conv4_embedder.config.to_dict()
    state = conv4_embedder.state_dict()
    if damage == "no-config":
        payload = _payload(state_dict=state)
    elif damage == "bad-config":
        payload = _payload(config={"backbone": "conv4"}, state_dict=state)
    else:  # the weights of a model with a head, under a config without one
        payload = _payload(config=config, state_dict=conv4_factory(embedding_dim=8).state_dict())
    path = tmp_path / "damaged.kshot"
    torch.save(payload, path)
    with pytest.raises(KshotError) as caught:
        load_checkpoint(path)
    assert str(path) in str(caught.value)
    assert "damaged model file" in str(caught.value)
