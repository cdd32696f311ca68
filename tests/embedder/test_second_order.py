"""Second-order pooling: the projected channels' mean outer product, signed square root."""

import torch

from kshot.embedder.second_order import EPS, SecondOrderPool, drawn_tensors


def test_pooling_against_a_direct_computation():
    pool = SecondOrderPool(channels=5, dim=3, seed=1)
    maps = torch.randn(2, 5, 4, 6)
    pooled = pool(maps)
    assert pooled.shape == (2, 6) and pool.out_dim == 6
    for n in range(2):
        vectors = [maps[n, :, i, j] @ pool.projection for i in range(4) for j in range(6)]
        gram = sum(torch.outer(v, v) for v in vectors) / len(vectors)
        upper = torch.stack([gram[r, c] for r in range(3) for c in range(r, 3)])
        expected = torch.sign(upper) * torch.sqrt(upper.abs() + EPS)
        torch.testing.assert_close(pooled[n], expected, rtol=1e-5, atol=1e-6)


def test_channels_that_fire_together_are_told_from_channels_that_fire_apart():
    """The same mean activation of every channel, so mean pooling cannot tell them apart."""
    together, apart = torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2, 2)
    together[0, :, 0, 0] = 1.0  # both channels at one place
    apart[0, 0, 0, 0] = apart[0, 1, 1, 1] = 1.0  # each at its own place
    assert torch.equal(together.mean(dim=(2, 3)), apart.mean(dim=(2, 3)))
    pool = SecondOrderPool(channels=2, dim=2, seed=0)
    assert not torch.allclose(pool(together), pool(apart), atol=1e-3)


def test_the_projection_is_fixed_by_its_seed_and_saved():
    """Drawn from a seeded torch generator, and saved in the state dict: a model file keeps the
    projection its library embedded with even if a later torch draws another one."""
    pool = SecondOrderPool(channels=112, dim=64)
    again, other = SecondOrderPool(112, 64), SecondOrderPool(112, 64, seed=1)
    assert torch.equal(pool.projection, again.projection)
    assert not torch.equal(pool.projection, other.projection)
    assert list(pool.state_dict()) == ["projection"]
    first = [round(v, 4) for v in (pool.projection[0, :3] * 8).tolist()]
    assert first == PINNED


PINNED = [-1.1258, -1.1524, -0.2506]  # torch.manual_seed(0); torch.randn(3)


def test_bf16_autocast_leaves_the_pooling_in_fp32():
    pool, maps = SecondOrderPool(channels=8, dim=4), torch.randn(2, 8, 5, 5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        pooled = pool(maps.bfloat16())
    assert pooled.dtype == torch.float32
    torch.testing.assert_close(pooled, pool(maps.bfloat16().float()))


def test_drawn_tensors_names_each_pool_s_projection_by_its_state_key():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), SecondOrderPool(4, dim=2))
    drawn = drawn_tensors(model)
    assert list(drawn) == ["1.projection"]
    assert drawn["1.projection"] is model[1].projection
    assert set(drawn) <= set(model.state_dict())
