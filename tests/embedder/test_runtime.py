import platform

import pytest
import torch

from kshot.embedder.runtime import resolve_device, tune_allocator


def test_tune_allocator_returns_a_bool_and_is_idempotent():
    first = tune_allocator()
    assert isinstance(first, bool)
    assert tune_allocator() is first
    assert tune_allocator() is first


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_tune_allocator_succeeds_on_glibc():
    assert tune_allocator() is True


def test_resolve_device_auto():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    device = resolve_device("auto")
    assert isinstance(device, torch.device)
    assert device.type == expected
    assert resolve_device() == device


def test_resolve_device_auto_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")


def test_resolve_device_auto_with_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")


@pytest.mark.parametrize("name", ["cpu", "cuda:1", "meta"])
def test_resolve_device_named(name):
    assert resolve_device(name) == torch.device(name)


def test_resolve_device_bad_name():
    with pytest.raises(RuntimeError):
        resolve_device("gpu-please")
