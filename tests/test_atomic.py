import os
import stat

import pytest

from kshot.atomic import atomic_path, write_text_atomic


@pytest.fixture
def umask():
    """Set the process's umask for one test, and put it back."""
    saved = os.umask(0o022)
    os.umask(saved)
    yield lambda mask: os.umask(mask)
    os.umask(saved)


@pytest.mark.parametrize(("mask", "mode"), [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_files_get_the_mode_the_umask_gives(tmp_path, umask, mask, mode):
    umask(mask)
    path = tmp_path / "manifest.json"
    write_text_atomic(path, "{}")
    assert stat.S_IMODE(path.stat().st_mode) == mode
    with atomic_path(tmp_path / "index.faiss") as tmp, open(tmp, "wb") as handle:
        handle.write(b"x")
    assert stat.S_IMODE((tmp_path / "index.faiss").stat().st_mode) == mode


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "model.kshot"
    path.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash")
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.kshot"]
