"""Integrity that cannot be bypassed: a package's graphs read nothing the manifest does not hash
(ONNX external data), and no graph's output is used unless every value is finite.

Each package case copies the shipped package and changes one graph with the `onnx` package (as a
user or an exporter would), rehashing what the manifest lists so that only the new checks stand
between it and inference. The engine itself reads the graphs without `onnx` (a minimal protobuf
walk): its list of external files is held equal to onnx's own on the same graphs.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from noduleflow.engine.backends import open_backend
from noduleflow.engine.backends.base import Backend
from noduleflow.engine.errors import PackageError
from noduleflow.engine.package import ModelPackage, default_package_path, external_data_locations

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402  (after the importorskip)
from onnx.external_data_helper import set_external_data  # noqa: E402


def _copy_package(tmp_path: Path) -> Path:
    pkg = tmp_path / "pkg"
    shutil.copytree(default_package_path(), pkg)
    return pkg


def _manifest(pkg: Path) -> dict:
    return json.loads((pkg / "manifest.json").read_text())


def _rehash(pkg: Path, *names: str, drop: tuple[str, ...] = ()) -> None:
    m = _manifest(pkg)
    for name in names:
        m["files"][name] = hashlib.sha256((pkg / name).read_bytes()).hexdigest()
    for name in drop:
        m["files"].pop(name, None)
    (pkg / "manifest.json").write_text(json.dumps(m))


def _external(pkg: Path, graph: str = "stage2.onnx", location: str = "stage2.weights") -> None:
    """Re-save ``graph`` with its weights in the external file ``location`` (onnx's own writer)."""
    model = onnx.load(str(pkg / graph))
    onnx.save_model(model, str(pkg / graph), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=location, size_threshold=1024)   # the weights; small shape constants stay


# -- external data --------------------------------------------------------------------------------

def test_external_data_not_in_the_manifest_is_refused(tmp_path):
    pkg = _copy_package(tmp_path)
    _external(pkg)
    _rehash(pkg, "stage2.onnx")   # the graph's hash updated; its weights file not listed
    with pytest.raises(PackageError, match=r"stage2\.onnx reads tensor data from external file.*stage2\.weights"):
        ModelPackage.load(pkg)


def test_unlisted_external_data_is_refused_without_hash_checks_too(tmp_path):
    pkg = _copy_package(tmp_path)
    _external(pkg)
    with pytest.raises(PackageError, match="does not list and hash"):
        ModelPackage.load(pkg, verify_hashes=False)


def test_flipped_external_weights_no_longer_change_the_output(tmp_path):
    """The reported attack: weights moved out of the hashed graph and then changed. Listed and
    hashed, the change is caught by the hash; unlisted, by the external-data check."""
    pkg = _copy_package(tmp_path)
    _external(pkg)
    _rehash(pkg, "stage2.onnx", "stage2.weights")
    ModelPackage.load(pkg)   # listed and hashed: a legitimate package
    w = np.frombuffer((pkg / "stage2.weights").read_bytes(), np.float32).copy()
    (pkg / "stage2.weights").write_bytes((-w).tobytes())
    with pytest.raises(PackageError, match="stage2.weights does not match its manifest hash"):
        ModelPackage.load(pkg)
    _rehash(pkg, "stage2.onnx", drop=("stage2.weights",))
    with pytest.raises(PackageError, match="stage2.weights"):
        ModelPackage.load(pkg)


def test_listed_external_data_loads_and_scores_as_the_inline_graph(tmp_path):
    pkg = _copy_package(tmp_path)
    _external(pkg)
    _rehash(pkg, "stage2.onnx", "stage2.weights")
    package = ModelPackage.load(pkg)
    x = np.random.default_rng(0).random((2, package.contract.stage2.channels, 41, 41, 41), np.float32)
    with open_backend(package, "onnxruntime-cpu", "stage2") as ext, \
            open_backend(ModelPackage.load(default_package_path()), "onnxruntime-cpu", "stage2") as inline:
        np.testing.assert_allclose(ext.infer(x), inline.infer(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("location", ["../stage2.weights", "/etc/passwd", "sub/stage2.weights", "manifest.json"])
def test_external_data_outside_the_package_or_not_a_listed_name_is_refused(tmp_path, location):
    pkg = _copy_package(tmp_path)
    model = onnx.load(str(pkg / "patch.onnx"))
    init = max(model.graph.initializer, key=lambda t: t.ByteSize())
    set_external_data(init, location=location, offset=0, length=16)
    init.data_location = TensorProto.EXTERNAL
    init.ClearField("raw_data")
    onnx.save(model, str(pkg / "patch.onnx"))
    _rehash(pkg, "patch.onnx")
    with pytest.raises(PackageError, match="does not list and hash") as e:
        ModelPackage.load(pkg)
    assert "\n" not in str(e.value)


def test_external_marker_without_a_file_name_is_refused(tmp_path):
    pkg = _copy_package(tmp_path)
    model = onnx.load(str(pkg / "patch.onnx"))
    model.graph.initializer[0].data_location = TensorProto.EXTERNAL
    (pkg / "patch.onnx").write_bytes(model.SerializeToString())   # onnx.save itself refuses to write it
    _rehash(pkg, "patch.onnx")
    assert "" in external_data_locations((pkg / "patch.onnx").read_bytes())
    with pytest.raises(PackageError, match="external file"):
        ModelPackage.load(pkg)


def _constant_graph_model(external_in: str) -> onnx.ModelProto:
    """y = x + c, with c a Constant node's tensor (``external_in`` "node"), or the same inside an If
    node's branch ("subgraph"): places where tensors live that are not initializers."""
    c = numpy_helper.from_array(np.ones(4, np.float32), "c")
    set_external_data(c, location=f"{external_in}.bin", offset=0, length=16)
    c.data_location = TensorProto.EXTERNAL
    c.ClearField("raw_data")
    const = helper.make_node("Constant", [], ["c"], value=c)
    add = helper.make_node("Add", ["x", "c"], ["y"])
    vi = lambda n: helper.make_tensor_value_info(n, TensorProto.FLOAT, [4])  # noqa: E731
    if external_in == "node":
        graph = helper.make_graph([const, add], "g", [vi("x")], [vi("y")])
    else:
        branch = helper.make_graph([const, add], "b", [], [vi("y")])
        cond = helper.make_tensor_value_info("cond", TensorProto.BOOL, [])
        node = helper.make_node("If", ["cond"], ["y"], then_branch=branch, else_branch=branch)
        graph = helper.make_graph([node], "g", [vi("x"), cond], [vi("y")])
    return helper.make_model(graph)


@pytest.mark.parametrize("external_in", ["node", "subgraph"])
def test_external_tensors_outside_initializers_are_found(external_in):
    data = _constant_graph_model(external_in).SerializeToString()
    # the subgraph case has the tensor twice: in the If's then and else branches
    assert external_data_locations(data) == [f"{external_in}.bin"] * (1 if external_in == "node" else 2)


def test_the_engine_lists_the_same_external_files_as_onnx(tmp_path):
    """The protobuf walk against onnx's own reading, on graphs onnx saved with external data."""
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    pkg = _copy_package(tmp_path)
    for graph in ("patch.onnx", "dense.onnx", "stage2.onnx", "stage2_int8.onnx"):
        assert external_data_locations((pkg / graph).read_bytes()) == []
        model = onnx.load(str(pkg / graph))
        onnx.save_model(model, str(pkg / graph), save_as_external_data=True, all_tensors_to_one_file=False,
                        size_threshold=256)
        model = onnx.load(str(pkg / graph), load_external_data=False)
        want = sorted(next(e.value for e in t.external_data if e.key == "location")
                      for t in _get_all_tensors(model) if uses_external_data(t))
        assert want and sorted(external_data_locations((pkg / graph).read_bytes())) == want


@pytest.mark.parametrize("data", [b"\x0a\xff\xff\xff\xff\x0f", b"\x0f" * 64, b"\x3a\x05ab"],
                         ids=["length-past-end", "group-wire-type", "short-graph"])
def test_a_malformed_graph_is_a_one_line_refusal(tmp_path, data):
    pkg = _copy_package(tmp_path)
    (pkg / "patch.onnx").write_bytes(data)
    _rehash(pkg, "patch.onnx")
    with pytest.raises(PackageError, match="not a well-formed ONNX graph") as e:
        ModelPackage.load(pkg)
    assert "\n" not in str(e.value)


# -- non-finite outputs ---------------------------------------------------------------------------

def _poison(pkg: Path, graph: str, value: float) -> None:
    """``graph``'s logits times a constant ``value`` (NaN or inf): a graph that runs and gives
    non-finite output, as broken weights or an overflowing precision do."""
    model = onnx.load(str(pkg / graph))
    out = model.graph.output[0].name
    model.graph.initializer.append(numpy_helper.from_array(np.array(value, np.float32), "poison"))
    for node in model.graph.node:
        node.output[:] = [o if o != out else "unpoisoned" for o in node.output]
    model.graph.node.append(helper.make_node("Mul", ["unpoisoned", "poison"], [out]))
    onnx.save(model, str(pkg / graph))
    _rehash(pkg, graph)


class _Fixed(Backend):
    """A backend whose graph returns ``values`` whatever the batch (the check is the base class's)."""
    name = "fixed"

    def __init__(self, values, graph="patch"):
        super().__init__(graph, max_batch=8)
        self.values = np.asarray(values, np.float32)

    def _infer(self, batch, extra):
        return self.values[:len(batch)]

    def infer_many(self, batches):   # its own streaming path, which never calls infer
        for b in batches:
            yield self._infer(b, None)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_logits_are_refused_by_infer_and_infer_many(value):
    be = _Fixed([0.5, value, 1.0])
    batch = np.zeros((3, 1, 41, 41, 41), np.float32)
    with pytest.raises(PackageError, match="non-finite logits") as e:
        be.infer(batch)
    assert "\n" not in str(e.value)
    with pytest.raises(PackageError, match="non-finite logits"):
        list(be.infer_many([batch]))
    ok = _Fixed([0.5, -3.0, 1.0])
    assert ok.infer(batch).tolist() == [0.5, -3.0, 1.0] and len(list(ok.infer_many([batch, batch]))) == 2


@pytest.mark.parametrize("backend,streams", [("onnxruntime-cpu", 1), ("onnxruntime-cpu", 2), ("openvino-cpu", 2)])
def test_a_graph_giving_nan_is_refused_by_every_backend(tmp_path, backend, streams):
    if backend == "openvino-cpu":
        pytest.importorskip("openvino")
    pkg = _copy_package(tmp_path)
    _poison(pkg, "stage2.onnx", np.nan)
    package = ModelPackage.load(pkg)
    x = np.zeros((2, package.contract.stage2.channels, 41, 41, 41), np.float32)
    with open_backend(package, backend, "stage2", streams=streams) as be:
        with pytest.raises(PackageError, match="NaN"):
            be.infer(x)
        with pytest.raises(PackageError, match="NaN"):
            list(be.infer_many(iter([x, x, x])))


def test_a_nan_graph_fails_the_scan_instead_of_reporting_no_candidates(tmp_path, capsys):
    """Through the command: the scan FAILED in one line and exit 1, never "0 candidates", exit 0."""
    from noduleflow.cli import main as cli
    from noduleflow.engine.io import save_volume

    from .test_outputs import small_scan

    pkg = _copy_package(tmp_path)
    _poison(pkg, "stage2.onnx", np.nan)
    scan = save_volume(small_scan(), tmp_path / "scan.mhd")
    rc = cli(["detect", str(scan), "--model", str(pkg), "--backend", "onnxruntime-cpu", "--no-png",
              "--out", str(tmp_path / "out")])
    cap = capsys.readouterr()
    assert rc == 1, cap
    failed = [ln for ln in cap.err.splitlines() if ln.startswith("FAILED")]
    assert len(failed) == 1 and "non-finite logits" in failed[0] and "Traceback" not in cap.err
    assert "0 candidates, top" not in cap.out
