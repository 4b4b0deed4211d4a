"""Tampered model packages: every one is refused with a one-line PackageError (or ConfigError),
never a traceback, a hang, or a package that loads and gives silently wrong output.

Each case copies the shipped package, changes one thing (a manifest field, a file entry, a
file) and, where the change is to a graph, updates its hash so that only the schema and the
graph checks stand between it and inference. The package must be refused by
`ModelPackage.load` or when a backend opens its graphs (the point of no return before use).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from noduleflow.engine.backends import open_backend
from noduleflow.engine.errors import NoduleflowError
from noduleflow.engine.package import ModelPackage, default_package_path


def _rehash(pkg: Path, m: dict, name: str) -> None:
    m["files"][name] = hashlib.sha256((pkg / name).read_bytes()).hexdigest()


def _set(path, value):
    """Mutation: manifest[path...] = value."""
    def f(pkg, m):
        d = m
        for k in path[:-1]:
            d = d[k]
        d[path[-1]] = value
    return f


def _drop(path):
    def f(pkg, m):
        d = m
        for k in path[:-1]:
            d = d[k]
        del d[path[-1]]
    return f


def _replace_manifest(text: bytes):
    def f(pkg, m):
        m.clear()
        m["__raw__"] = text
    return f


def _manifest_dir(pkg, m):
    m.clear()
    m["__dir__"] = True


def _file_entry(name):
    def f(pkg, m):
        m["files"][name] = "0" * 64
    return f


def _symlink_graph(target):
    def f(pkg, m):
        (pkg / "patch.onnx").unlink()
        os.symlink(target, pkg / "patch.onnx")
    return f


def _fifo_graph(pkg, m):
    (pkg / "patch.onnx").unlink()
    os.mkfifo(pkg / "patch.onnx")


def _garbage_graph(pkg, m):
    (pkg / "patch.onnx").write_bytes(b"\x08\x07not an onnx graph" * 100)
    _rehash(pkg, m, "patch.onnx")


def _swap(src, dst):
    def f(pkg, m):
        shutil.copy(pkg / src, pkg / dst)
        _rehash(pkg, m, dst)
    return f


def _flip_byte(pkg, m):
    data = bytearray((pkg / "dense.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (pkg / "dense.onnx").write_bytes(bytes(data))


def _delete_file(pkg, m):
    (pkg / "dense.onnx").unlink()


C = ("contract",)
CASES = {
    # the manifest as a whole
    "manifest-list": _replace_manifest(b"[]"),
    "manifest-null": _replace_manifest(b"null"),
    "manifest-string": _replace_manifest(b'"model"'),
    "manifest-garbage": _replace_manifest(b"\x00\x01{{{"),
    "manifest-bad-utf8": _replace_manifest(b'{"model_id": "\xff\xfe"}'),
    "manifest-huge": _replace_manifest(b'{"x": "' + b"a" * (2 << 20) + b'"}'),
    "manifest-deep": _replace_manifest(b"[" * 100000 + b"]" * 100000),
    "manifest-is-a-folder": _manifest_dir,
    "format-version-99": _set(("format_version",), 99),
    "format-version-missing": _drop(("format_version",)),
    "format-version-string": _set(("format_version",), "2"),
    "format-version-bool": _set(("format_version",), True),
    "unknown-field": _set(("surprise",), 1),
    "model-id-missing": _drop(("model_id",)),
    "model-id-escape": _set(("model_id",), "m\x1b[31mred"),
    "model-id-long": _set(("model_id",), "m" * 1000),
    "architecture-number": _set(("architecture",), 3),
    "training-list": _set(("training",), []),
    "output-probability": _set(("output",), "probability"),
    # file entries
    "files-list": _set(("files",), []),
    "file-etc-passwd": _file_entry("../../../../etc/passwd"),
    "file-dev-zero": _file_entry("/dev/zero"),
    "file-subfolder": _file_entry("sub/x.onnx"),
    "file-dot-dot": _file_entry(".."),
    "file-manifest": _file_entry("manifest.json"),
    "file-hash-not-hex": _set(("files", "patch.onnx"), "xyz"),
    "file-listed-missing": _file_entry("extra.onnx"),
    "no-patch-graph": _drop(("files", "patch.onnx")),
    "graph-symlink-dev-zero": _symlink_graph("/dev/zero"),
    "graph-symlink-etc-passwd": _symlink_graph("/etc/passwd"),
    "graph-fifo": _fifo_graph,
    "graph-hash-mismatch": _flip_byte,
    "graph-deleted": _delete_file,
    # the input contract
    "contract-list": _set(C, []),
    "contract-unknown-key": _set(C + ("surprise",), 1),
    "patch-size-even": _set(C + ("patch_size",), 40),
    "patch-size-string": _set(C + ("patch_size",), "41"),
    "patch-size-huge": _set(C + ("patch_size",), 10 ** 9),
    "patch-size-other": _set(C + ("patch_size",), 33),
    "hu-window-string": _set(C + ("hu_window",), "-1000,400"),
    "hu-window-one-value": _set(C + ("hu_window",), [400]),
    "hu-window-reversed": _set(C + ("hu_window",), [400, -1000]),
    "hu-window-nan": _set(C + ("hu_window",), [float("nan"), 400]),
    "normalisation-unknown": _set(C + ("normalisation",), "zscore"),
    "dense-stride-0": _set(C + ("dense_stride",), 0),
    "dense-stride-1e9": _set(C + ("dense_stride",), 10 ** 9),
    "dense-stride-2": _set(C + ("dense_stride",), 2),
    "dense-stride-float": _set(C + ("dense_stride",), 4.5),
    "dense-offset-negative": _set(C + ("dense_offset",), -5),
    "dense-offset-huge": _set(C + ("dense_offset",), 10 ** 6),
    "dense-offset-off-centre": _set(C + ("dense_offset",), 16),
    "dense-offset-null": _set(C + ("dense_offset",), None),
    "uses-location-string": _set(C + ("uses_location",), "yes"),
    "uses-location-no-input": _set(C + ("uses_location",), True),
    "spacing-26-tib": _set(C + ("preprocess", "target_spacing_zyx_mm"), [0.001, 0.001, 0.001]),
    "spacing-string": _set(C + ("preprocess", "target_spacing_zyx_mm"), "1,1,1"),
    "preprocess-unknown-key": _set(C + ("preprocess", "surprise"), 1),
    "preprocess-list": _set(C + ("preprocess",), []),
    "lung-threshold-positive": _set(C + ("preprocess", "lung", "threshold_hu"), 5.0),
    "lung-list": _set(C + ("preprocess", "lung"), [1, 2]),
    "rules-stride-0": _set(C + ("candidate_rules", "stride"), 0),
    "rules-unknown-key": _set(C + ("candidate_rules", "surprise"), 1),
    # graphs with their hashes updated
    "garbage-onnx": _garbage_graph,
    "patch-graph-in-dense-slot": _swap("patch.onnx", "dense.onnx"),
    "dense-graph-in-patch-slot": _swap("dense.onnx", "patch.onnx"),
}


def _tamper(tmp_path: Path, mutate) -> Path:
    pkg = tmp_path / "pkg"
    shutil.copytree(default_package_path(), pkg)
    m = json.loads((pkg / "manifest.json").read_text())
    mutate(pkg, m)
    (pkg / "manifest.json").unlink()
    if m.get("__dir__"):
        (pkg / "manifest.json").mkdir()
    elif "__raw__" in m:
        (pkg / "manifest.json").write_bytes(m["__raw__"])
    else:
        (pkg / "manifest.json").write_text(json.dumps(m))
    return pkg


def _use(pkg: Path) -> None:
    p = ModelPackage.load(pkg)
    for graph in ("patch", "dense"):
        open_backend(p, "onnxruntime-cpu", graph=graph).close()


def test_enough_cases():
    assert len(CASES) >= 40


@pytest.mark.timeout(30)
@pytest.mark.parametrize("case", sorted(CASES))
def test_tampered_package_is_refused(case, tmp_path):
    pkg = _tamper(tmp_path, CASES[case])
    with pytest.raises(NoduleflowError) as err:
        _use(pkg)
    msg = str(err.value)
    assert "\n" not in msg and "\x1b" not in msg, msg
    assert len(msg) < 400, msg


def test_untampered_copy_is_accepted(tmp_path):
    _use(_tamper(tmp_path, lambda pkg, m: None))
