"""`engine.fileio`: the one atomic write. A reader sees the old content or the new, a failure
leaves the old content and no temporary, and temporaries live beside the target."""
from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from noduleflow.engine.fileio import TEMP_PREFIX, atomic_dir, atomic_path, atomic_write, temp_name, write_new


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask():
    """Set a umask for one test and restore the old one."""
    old = os.umask(0o022)

    def set_(value: int) -> None:
        os.umask(value)

    yield set_
    os.umask(old)


def test_atomic_write_creates_and_replaces(tmp_path):
    target = tmp_path / "r.json"
    assert atomic_write(target, "one") == target and target.read_text() == "one"
    atomic_write(target, b"two")
    assert target.read_bytes() == b"two"
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


@pytest.mark.parametrize("fail", ["bad data", "writer raises"])
def test_a_failed_write_leaves_the_old_content_and_no_temporary(tmp_path, fail):
    target = tmp_path / "f.csv"
    atomic_write(target, "old\n")
    with pytest.raises((TypeError, RuntimeError)):
        if fail == "bad data":
            atomic_write(target, 12345)
        else:
            with atomic_path(target) as tmp:
                tmp.write_text("half")
                raise RuntimeError("writer failed")
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["f.csv"]


def test_the_temporary_is_beside_the_target_and_keeps_its_suffix(tmp_path):
    target = tmp_path / "sub" / "3.npz"
    target.parent.mkdir()
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.startswith(TEMP_PREFIX) and tmp.suffix == ".npz"
        assert tmp.exists() and not target.exists()
        np.savez(tmp, x=np.arange(3))   # would append .npz to a name without it
    assert np.load(target)["x"].tolist() == [0, 1, 2]
    assert [p.name for p in target.parent.iterdir()] == ["3.npz"]
    assert temp_name(target) != temp_name(target)


def test_tmp_dir_holds_the_temporary(tmp_path):
    spool_tmp = tmp_path / "tmp"
    spool_tmp.mkdir()
    seen = []
    with atomic_path(tmp_path / "series.json", tmp_dir=spool_tmp) as tmp:
        seen.append(tmp.parent)
        tmp.write_text("{}")
    assert seen == [spool_tmp] and not any(spool_tmp.iterdir())
    assert (tmp_path / "series.json").read_text() == "{}"


def test_modes(tmp_path, umask):
    umask(0o000)   # a permissive umask must not open an explicit mode
    atomic_write(tmp_path / "private", "x", mode=0o600)
    assert _mode(tmp_path / "private") == 0o600
    umask(0o027)   # None: as `open` makes it
    atomic_write(tmp_path / "plain", "x")
    assert _mode(tmp_path / "plain") == 0o640
    with atomic_dir(tmp_path / "d", mode=0o700):
        pass
    assert _mode(tmp_path / "d") == 0o700
    with atomic_dir(tmp_path / "e"):
        pass
    assert _mode(tmp_path / "e") == 0o750


def test_write_new_refuses_an_existing_file_and_cleans_up_a_failed_one(tmp_path):
    f = write_new(tmp_path / "a.part", b"data", mode=0o600)
    assert f.read_bytes() == b"data"
    with pytest.raises(FileExistsError):
        write_new(f, b"other")
    assert f.read_bytes() == b"data"
    with pytest.raises(TypeError, match="str or bytes"):
        write_new(tmp_path / "b.part", 3.5)
    assert [p.name for p in tmp_path.iterdir()] == ["a.part"]


def test_atomic_dir(tmp_path):
    final = tmp_path / "entry"
    with atomic_dir(final) as d:
        assert d.parent == tmp_path and d.name.startswith(TEMP_PREFIX) and not final.exists()
        (d / "meta.json").write_text("{}")
    assert (final / "meta.json").read_text() == "{}"

    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "other") as d:
            (d / "half.npy").write_bytes(b"..")
            raise RuntimeError("writer failed")
    # a non-empty folder in place is kept (a concurrent writer's complete entry)
    with pytest.raises(FileExistsError):
        with atomic_dir(final) as d:
            (d / "meta.json").write_text('{"second": 1}')
    assert (final / "meta.json").read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["entry"]
