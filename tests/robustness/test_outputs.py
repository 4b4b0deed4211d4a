"""Outputs that fail early and never half-write: `--out` checked before detecting, a full disk
is one line with nothing left behind, two processes never interleave on one folder, files with
patient data are 0600 in 0700 folders, and values from files are printed and written escaped.

A full disk is made two ways: a real tmpfs of 64 KiB where this machine lets the tests mount one
(root with CAP_SYS_ADMIN, as in CI; skipped elsewhere), and an ENOSPC injected into the one
atomic-write helper (`engine.fileio.write_new`) everywhere. Read-only folders: a tmpfs remounted
read-only, or the permission bits when not root (root ignores them).
"""
from __future__ import annotations

import errno
import functools
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from noduleflow.cli import main as cli
from noduleflow.engine import fileio
from noduleflow.engine.errors import ConfigError, NoduleflowError
from noduleflow.engine.io import load_volume, save_volume
from noduleflow.engine.results import Candidate, Detections, ResultFolder, csv_text, make_private_folder
from noduleflow.synthetic.phantom import PhantomParams, generate_phantom

ESC = "\x1b"


@functools.lru_cache(maxsize=1)
def small_scan():
    """A small phantom (24 x 64 x 64 voxels of 5 x 3.5 x 3.5 mm, one nodule): a detection of a few
    seconds that finds stage-1 candidates."""
    return generate_phantom(1, params=PhantomParams(n_nodules=1), shape_zyx=(24, 64, 64),
                            spacing_zyx_mm=(5.0, 3.5, 3.5)).volume


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _one_line_error(err: str, command: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"noduleflow {command}: error:"), err
    assert "Traceback" not in err
    return lines[0]


def _detections(uid="1.2.3", volume=None) -> Detections:
    return Detections(uid, (Candidate((1.0, 2.0, 3.0), 0.9, diameter_mm=6.0), Candidate((4.0, 5.0, 6.0), 0.2)),
                      {"total": 1.0}, "fake", "dense", "m", "0", volume=volume)


@pytest.fixture
def umask0():
    old = os.umask(0)
    yield
    os.umask(old)


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return False
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
                       capture_output=True)
    return r.returncode == 0


@pytest.fixture
def tiny_disk(tmp_path):
    """A real 64 KiB filesystem (tmpfs), or skip where this user cannot mount one."""
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "64k"):
        pytest.skip("cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN)")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


@pytest.fixture
def readonly_dir(tmp_path):
    """A folder this process cannot create files in: a read-only tmpfs (root), else mode 0500."""
    ro = tmp_path / "ro"
    if os.geteuid() != 0:
        ro.mkdir()
        ro.chmod(0o500)
        yield ro
        ro.chmod(0o700)
        return
    if not _mount_tmpfs(ro, "64k"):
        pytest.skip("root, and cannot mount a read-only tmpfs here")
    subprocess.run(["mount", "-o", "remount,ro", str(ro)], check=True)
    yield ro
    subprocess.run(["umount", "-l", str(ro)], check=False)


def _enospc_on(monkeypatch, suffix: str) -> list:
    """Make the atomic-write helper fail with ENOSPC on files (temporaries) ending in ``suffix`` after it wrote
    half of them, as a disk that fills mid-file does (and remove its half file, as it does)."""
    real, calls = fileio.write_new, []

    def write_new(path, data, *, mode=None):
        calls.append(Path(path).name)
        if Path(path).name.endswith(suffix):
            real(path, data[: len(data) // 2], mode=mode)
            Path(path).unlink()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(path, data, mode=mode)

    monkeypatch.setattr(fileio, "write_new", write_new)
    return calls


# -- --out checked before detecting ---------------------------------------------------------------

@pytest.mark.parametrize("kind", ["is-a-file", "under-a-file", "read-only"])
def test_detect_refuses_an_unusable_out_before_loading_anything(tmp_path, capsys, request, kind):
    if kind == "read-only":
        out = request.getfixturevalue("readonly_dir") / "results"
        expected = "cannot create output folder"
    else:
        (tmp_path / "f").write_text("x")
        out = tmp_path / ("f" if kind == "is-a-file" else "f/results")
        expected = "is a file"
    t = time.perf_counter()
    assert cli(["detect", str(tmp_path / "never-read.mhd"), "--out", str(out)]) == 2
    cap = capsys.readouterr()
    assert expected in _one_line_error(cap.err, "detect")
    assert "model " not in cap.out and time.perf_counter() - t < 5   # before the model was even loaded


def test_a_read_only_existing_out_is_refused_before_detecting(readonly_dir, capsys):
    assert cli(["detect", "never-read.mhd", "--out", str(readonly_dir)]) == 2
    line = _one_line_error(capsys.readouterr().err, "detect")
    assert "is not writable" in line and ("EROFS" in line or "EACCES" in line)


# -- a full disk: one line, nothing partial -------------------------------------------------------

def test_detect_on_a_full_disk_is_one_line_and_leaves_nothing(tmp_path, monkeypatch, capsys):
    """The CSV (written last) does not fit: the JSON already written must go too."""
    scan = save_volume(small_scan(), tmp_path / "scan.mhd")
    out = tmp_path / "out"
    calls = _enospc_on(monkeypatch, ".csv")
    assert cli(["detect", str(scan), "--no-png", "--out", str(out)]) == 2
    cap = capsys.readouterr()
    line = _one_line_error(cap.err, "detect")
    assert "No space left on device" in line and "nothing of this run was written" in line
    assert any(c.endswith(".json") for c in calls)   # the JSON had been written when the CSV failed
    assert os.listdir(out) == []                     # no result, no temporary, no lock file


def test_a_real_full_disk_leaves_neither_json_nor_png(tiny_disk):
    d = _detections(volume=small_scan())
    with pytest.raises(NoduleflowError, match=r"cannot write .*\.png .*No space left on device \(ENOSPC\)") as e:
        d.save(tiny_disk / "out")
    assert "\n" not in str(e.value)
    assert os.listdir(tiny_disk / "out") == []
    d.save(tiny_disk / "out", png=False)   # what fits is written whole
    assert sorted(os.listdir(tiny_disk / "out")) == ["1.2.3.json", "candidates.csv"]


def test_a_failed_run_keeps_the_previous_results_as_they_were(tmp_path, monkeypatch):
    out = tmp_path / "out"
    _detections().save(out, png=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    _enospc_on(monkeypatch, ".csv")
    with pytest.raises(NoduleflowError, match="No space left"):
        _detections("4.5.6").save(out, png=False)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before   # no 4.5.6.json, old CSV intact


def test_an_exception_inside_the_run_discards_what_it_staged(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt), ResultFolder(out) as rf:
        rf.add(_detections(), png=False)
        raise KeyboardInterrupt
    assert os.listdir(out) == []


def test_convert_on_a_full_disk_leaves_nothing(tiny_disk, tmp_path, capsys):
    scan = save_volume(small_scan(), tmp_path / "scan.mhd")
    assert cli(["convert", str(scan), str(tiny_disk / "copy.mhd")]) == 2
    line = _one_line_error(capsys.readouterr().err, "convert")
    assert "cannot write" in line and "nothing was written" in line
    assert os.listdir(tiny_disk) == []


# -- one process at a time ------------------------------------------------------------------------

def test_a_second_detect_on_the_same_out_refuses_and_the_first_is_intact(tmp_path, capsys):
    """Two processes: a real `noduleflow detect` (its scan's name holds a terminal escape, which
    must reach neither the terminal nor the CSV) and this one on the same --out while it runs."""
    scan = save_volume(small_scan(), tmp_path / f"scan{ESC}[2J.mhd")
    out = tmp_path / "out"
    first = subprocess.Popen([sys.executable, "-m", "noduleflow", "detect", str(scan), "--out", str(out), "--no-png"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lock = out / fileio.FolderLock.LOCK_NAME
    deadline = time.monotonic() + 60
    while not lock.exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert lock.exists(), "the first process never took the lock"
    assert cli(["detect", str(scan), "--out", str(out), "--no-png"]) == 2
    line = _one_line_error(capsys.readouterr().err, "detect")
    assert "in use by another noduleflow process" in line and f"pid {first.pid}" in line
    stdout, stderr = first.communicate(timeout=120)
    assert first.returncode == 0, stderr
    assert ESC not in stdout and ESC not in stderr and "scan?[2J" in stdout
    text = (out / "candidates.csv").read_text()
    rows = text.splitlines()[1:]
    assert ESC not in text and rows and all(r.startswith("scan?[2J,") for r in rows)
    assert not lock.exists()


def test_a_lock_file_left_by_a_killed_process_does_not_block(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / fileio.FolderLock.LOCK_NAME).write_text("pid 999999\n")   # nobody holds the flock
    stale = fileio.temp_name(out / "x.json")
    stale.write_text("half")
    (out / ".tmp-mine").write_text("not ours")
    _detections().save(out, png=False)
    assert sorted(os.listdir(out)) == [".tmp-mine", "1.2.3.json", "candidates.csv"]


def test_the_lock_is_held_across_processes(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\n"
                               "from noduleflow.engine.fileio import FolderLock\n"
                               f"l = FolderLock({str(out)!r}).acquire(); print('held', flush=True); "
                               "sys.stdin.readline()"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ConfigError, match=f"in use by another noduleflow process \\(pid {holder.pid}\\)"):
            ResultFolder(out).open()
    finally:
        holder.communicate("\n", timeout=30)
    with ResultFolder(out) as rf:   # released with its process
        rf.add_csv([])
    assert (out / "candidates.csv").exists()


# -- private files and folders --------------------------------------------------------------------

def test_results_are_0600_in_0700_folders_whatever_the_umask(tmp_path, umask0):
    out = tmp_path / "a" / "b" / "out"
    written = _detections(volume=small_scan()).save(out)
    assert sorted(p.name for p in written.values()) == ["1.2.3.json", "1.2.3.png", "candidates.csv"]
    assert {_mode(p) for p in written.values()} == {0o600}
    assert _mode(out) == _mode(out.parent) == _mode(out.parent.parent) == 0o700


def test_an_existing_out_keeps_its_mode(tmp_path, umask0):
    out = tmp_path / "shared"
    out.mkdir(mode=0o755)
    _detections().save(out, png=False)
    assert _mode(out) == 0o755 and _mode(out / "candidates.csv") == 0o600


def test_convert_writes_the_volume_0600_in_a_0700_folder(tmp_path, umask0, capsys):
    scan = save_volume(small_scan(), tmp_path / "scan.mhd")
    out = tmp_path / "new" / "copy.mhd"
    assert cli(["convert", str(scan), str(out)]) == 0
    names = sorted(os.listdir(out.parent))
    assert names == ["copy.mhd", "copy.raw"] or names == ["copy.mhd", "copy.zraw"], names
    assert {_mode(out.parent / n) for n in names} == {0o600} and _mode(out.parent) == 0o700
    np.testing.assert_array_equal(load_volume(out).hu, small_scan().hu)


@pytest.mark.parametrize("where", ["read-only", "under-a-file", "a-folder"])
def test_convert_to_an_unwritable_place_is_one_line(tmp_path, capsys, request, where):
    scan = save_volume(small_scan(), tmp_path / "scan.mhd")
    if where == "read-only":
        target, expected = request.getfixturevalue("readonly_dir") / "copy.mhd", "not writable"
    elif where == "under-a-file":
        (tmp_path / "f").write_text("x")
        target, expected = tmp_path / "f" / "copy.mhd", "is a file"
    else:
        target, expected = tmp_path, "is a folder"
    assert cli(["convert", str(scan), str(target)]) == 2
    assert expected in _one_line_error(capsys.readouterr().err, "convert")


@pytest.mark.parametrize("command", ["inspect", "convert"])
def test_a_nul_byte_in_a_metaimage_data_file_name_is_one_line(tmp_path, capsys, command):
    scan = save_volume(small_scan(), tmp_path / "scan.mhd")
    text = scan.read_bytes()
    data_name = [ln.split(b"=")[1].strip() for ln in text.splitlines() if ln.startswith(b"ElementDataFile")][0]
    scan.write_bytes(text.replace(data_name, data_name[:2] + b"\x00" + data_name[2:]))
    args = [command, str(scan)] + ([str(tmp_path / "copy.mhd")] if command == "convert" else [])
    assert cli(args) == 2
    _one_line_error(capsys.readouterr().err, command)


# -- values from files, escaped -------------------------------------------------------------------

def test_csv_and_json_carry_no_raw_control_characters():
    uid = f"1.2{ESC}[2J\n3\r\x00"
    d = _detections(uid)
    text = csv_text(d.rows())
    assert ESC not in text and "\r" not in text and "\x00" not in text and len(text.splitlines()) == 3
    assert text.splitlines()[1].startswith("1.2?[2J?3??,")
    j = d.to_json()
    assert ESC not in j and "\x00" not in j and json.loads(j)["series_uid"] == uid   # escaped, not lost


def test_inspect_prints_a_uid_with_escapes_escaped(tmp_path, capsys):
    scan = save_volume(small_scan(), tmp_path / f"evil{ESC}]0;owned\x07{ESC}[2J.mhd")
    assert cli(["inspect", str(scan)]) == 0
    out = capsys.readouterr().out
    assert ESC not in out and "\x07" not in out
    uid_line = [ln for ln in out.splitlines() if ln.startswith("series_uid")][0]
    assert "evil?]0;owned??[2J" in uid_line


def test_make_private_folder_refuses_a_file_in_the_way(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        make_private_folder(tmp_path / "f" / "g")
    link = tmp_path / "dangling"
    link.symlink_to(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="not a folder"):
        make_private_folder(link)


# -- generated files stay out of the installed package --------------------------------------------
# One engine kernel compiled in a fresh process (numba's first compile costs ~10 s of CPU), the
# variants on a one-line kernel of a module beside the test (numba would otherwise cache it in a
# __pycache__ beside that module, as it did beside the engine's), and a whole detection (slow).

_COMPILE = """
import sys
if sys.argv[1] == "numba-first":
    import numba  # noqa: F401  (numba imported before the engine: it read the environment already)
import numpy as np
import noduleflow.engine
if sys.argv[2] == "engine":
    from noduleflow.engine.ccl import label
    label(np.ones((8, 8, 8), bool))     # compiles (and caches) the labelling kernels
elif sys.argv[2] == "detect":
    from noduleflow.cli import main
    main(["detect", sys.argv[3], "--no-png", "--out", sys.argv[4]])
else:
    sys.path.insert(0, sys.argv[3])
    import probe_kernel
    probe_kernel.plus_one(1)
print(noduleflow.engine.numba_cache_dir())
"""


def _kernel_caches(*roots: Path) -> dict:
    return {p: p.stat().st_mtime_ns for r in roots for p in r.rglob("*") if p.suffix in (".nbi", ".nbc")}


def _compile(tmp_path: Path, how: str = "engine-first", what: str = "probe", *args, **env) -> str:
    """Run ``what`` in a fresh process with HOME and XDG_CACHE_HOME in ``tmp_path``; no kernel cache
    may appear or change inside the package (or beside the probe kernel). -> the cache folder."""
    import noduleflow

    package = Path(noduleflow.__file__).resolve().parent
    engine = Path(noduleflow.engine.__file__).resolve().parent   # its own folder in a source checkout
    probe = tmp_path / "probe"
    probe.mkdir(exist_ok=True)
    (probe / "probe_kernel.py").write_text("from numba import njit\n\n\n@njit(cache=True)\n"
                                           "def plus_one(x):\n    return x + 1\n")
    before = _kernel_caches(package, engine, probe)
    run_env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    run_env.update({"HOME": str(tmp_path / "home"), "XDG_CACHE_HOME": str(tmp_path / "xdg"), **env})
    r = subprocess.run([sys.executable, "-c", _COMPILE, how, what, *(args or (str(probe),))], env=run_env,
                       cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    after = _kernel_caches(package, engine, probe)
    assert after == before, f"kernel caches written beside the code: {sorted(set(after) - set(before))}"
    return r.stdout.strip().splitlines()[-1]


def _has_caches(folder: Path) -> bool:
    return {p.suffix for p in folder.rglob("*")} >= {".nbi", ".nbc"}


def test_the_engines_kernels_are_cached_in_the_users_cache_folder_not_the_package(tmp_path):
    cache = tmp_path / "xdg" / "noduleflow" / "numba"
    assert _compile(tmp_path, "engine-first", "engine") == str(cache)
    assert _has_caches(cache) and _mode(cache) == 0o700


@pytest.mark.parametrize("how", ["engine-first", "numba-first"])
def test_kernels_are_cached_in_the_users_cache_folder_whoever_imported_numba(tmp_path, how):
    cache = tmp_path / "xdg" / "noduleflow" / "numba"
    assert _compile(tmp_path, how) == str(cache) and _has_caches(cache)


def test_numba_cache_dir_set_by_the_user_wins(tmp_path):
    mine = tmp_path / "mine"
    assert _compile(tmp_path, NUMBA_CACHE_DIR=str(mine)) == str(mine) and _has_caches(mine)
    assert not (tmp_path / "xdg").exists()


def test_an_unusable_cache_folder_falls_back_to_a_private_temporary_one(tmp_path):
    (tmp_path / "xdg-file").write_text("not a folder")
    used = _compile(tmp_path, XDG_CACHE_HOME=str(tmp_path / "xdg-file"))
    assert "noduleflow-numba-" in used and not Path(used).exists()   # removed when the process ended


@pytest.mark.slow
def test_a_whole_detection_writes_no_kernel_cache_into_the_package(tmp_path):
    scan = save_volume(small_scan(), tmp_path / "scan.mhd")
    cache = tmp_path / "xdg" / "noduleflow" / "numba"
    assert _compile(tmp_path, "engine-first", "detect", str(scan), str(tmp_path / "out")) == str(cache)
    assert _has_caches(cache) and (tmp_path / "out" / "candidates.csv").exists()
