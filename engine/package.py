"""Model packages: one folder with the graphs and a manifest the engine verifies before use.

    patch.onnx      (N, 1, P, P, P) float32 -> (N,) logits, dynamic batch (P: the contract's
                    patch size)
    stage2.onnx     two-stage packages: (N, C, P, P, P) multi-scale context patches -> (N,)
                    logits, the false-positive reduction of stage 1's candidates (the
                    contract's ``stage2`` block says how candidates are made and scored)
    dense.onnx      (N, 1, D, H, W) -> (N, D', H', W') logits, the same weights as a fully
                    convolutional net (3-D models); D' = (D - P) // stride + 1
    manifest.json   format version, model id, architecture, the input contract
                    (`engine.contract.InputContract`: patch size, HU window and
                    normalisation, location input, dense stride/offset, preprocessing,
                    candidate rules), training data and metrics, export details, sha256 of
                    every file

The engine refuses, with a message that says why: an unknown format version; a manifest that
is not a JSON object of the expected types and ranges; a file entry that is not a plain name
inside the package folder, not a regular file (symlinks, devices, FIFOs), too large, missing
or not matching its hash; an ONNX graph whose tensors keep their data in external files (ONNX
external data) unless each such file is itself listed, and so hashed, in the manifest
(`external_data_locations`). Older manifests are still read, with a log line saying so: version 1
(top-level contract fields) and version 2 (stage 1's settings inside the contract's ``stage2``
block; version 3 gives them their own ``stage1`` block).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import stat
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .contract import InputContract, split_stage_settings
from .errors import ConfigError, PackageError
from .fileio import atomic_write

FORMAT_VERSION = 3
SUPPORTED_FORMAT_VERSIONS = (1, 2, 3)
MAX_MANIFEST_BYTES = 1 << 20
MAX_FILE_BYTES = 4 << 30           # a graph of this product is a few MB; 4 GiB is far beyond any
_FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")

log = logging.getLogger(__name__)


def printable(text) -> str:
    """``text`` with control characters (terminal escapes) replaced, for messages."""
    return _CONTROL.sub("?", str(text))


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class Manifest:
    model_id: str
    architecture: str
    contract: InputContract = field(default_factory=InputContract)
    format_version: int = FORMAT_VERSION
    output: str = "logit"
    training: dict = field(default_factory=dict)
    export: dict = field(default_factory=dict)
    files: dict = field(default_factory=dict)
    engine_version: str = ""

    def to_dict(self) -> dict:
        d = asdict(self)
        d["contract"] = self.contract.to_dict()
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, raw, where: str = "manifest") -> Manifest:
        """Validate a manifest's JSON (any format version this engine reads); PackageError says
        what is wrong, naming the field and its value."""
        if not isinstance(raw, dict):
            raise PackageError(f"{where}: the manifest must be a JSON object, got {type(raw).__name__}")
        version = raw.get("format_version")
        if version not in SUPPORTED_FORMAT_VERSIONS or isinstance(version, bool):
            raise PackageError(f"{where}: package format version {printable(repr(version))} is not supported; "
                               f"this engine reads versions {', '.join(map(str, SUPPORTED_FORMAT_VERSIONS))}")
        raw = _from_v1(raw) if version == 1 else dict(raw)
        if version in (1, 2):
            raw = _from_v2(raw, where)
            log.info("%s: package format version %s read as version %s", where, version, FORMAT_VERSION)
        unknown = sorted(set(raw) - set(cls.__dataclass_fields__))
        if unknown:
            raise PackageError(f"{where}: unknown manifest fields {printable(unknown)} for format version {version}")
        for key in ("model_id", "architecture"):
            v = raw.get(key)
            if not isinstance(v, str) or not 1 <= len(v) <= 128 or _CONTROL.search(v):
                raise PackageError(f"{where}: {key} must be 1-128 printable characters, got {printable(repr(v))[:80]}")
        for key in ("training", "export", "files"):
            if not isinstance(raw.get(key, {}), dict):
                raise PackageError(f"{where}: {key} must be a JSON object, got {type(raw[key]).__name__}")
        if raw.get("output", "logit") != "logit":
            raise PackageError(f"{where}: output must be 'logit', got {printable(repr(raw['output']))}")
        if not isinstance(raw.get("engine_version", ""), str):
            raise PackageError(f"{where}: engine_version must be a string")
        for name, digest in raw.get("files", {}).items():
            if not _FILE_NAME.match(name) or name == "manifest.json":
                raise PackageError(f"{where}: file entry {printable(repr(name))[:80]} is not a plain file name "
                                   "inside the package folder")
            if not isinstance(digest, str) or not _SHA256.match(digest):
                raise PackageError(f"{where}: the hash of {name} is not a sha256 hex digest")
        try:
            contract = InputContract.from_dict(raw.get("contract", {}))
        except (ConfigError, TypeError, ValueError) as exc:
            raise PackageError(f"{where}: invalid contract: {printable(exc)}") from None
        return cls(**{**raw, "contract": contract, "format_version": FORMAT_VERSION})


def _from_v1(raw: dict) -> dict:
    """A version-1 manifest (contract fields at the top level) in version-2 form."""
    raw = dict(raw)
    contract = {}
    for key in ("patch_size", "hu_window", "normalisation", "dense_stride", "dense_offset", "uses_location"):
        if key in raw:
            contract[key] = raw.pop(key)
    if raw.get("preprocess"):
        contract["preprocess"] = raw.pop("preprocess")
    raw.pop("preprocess", None)
    raw.pop("target_spacing_zyx_mm", None)  # v1 duplicated preprocess.target_spacing_zyx_mm here
    if raw.get("candidate_rules"):
        contract["candidate_rules"] = raw.pop("candidate_rules")
    raw.pop("candidate_rules", None)
    raw["contract"] = contract
    return raw


def _from_v2(raw: dict, where: str) -> dict:
    """A version-2 manifest (stage 1's settings inside ``contract.stage2``) in version-3 form."""
    contract = raw.get("contract")
    if not isinstance(contract, dict) or not isinstance(contract.get("stage2"), dict) or "stage1" in contract:
        return raw
    try:
        stage1, stage2 = split_stage_settings(contract["stage2"])
    except (ConfigError, TypeError) as exc:
        raise PackageError(f"{where}: invalid contract: stage2: {printable(exc)}") from None
    return {**raw, "contract": {**contract, "stage1": asdict(stage1), "stage2": asdict(stage2)}}


def write_manifest(folder, manifest: Manifest) -> Manifest:
    """Hash every file of ``folder`` (but the manifest) into ``manifest`` and write it, once.
    -> the manifest as written."""
    from . import __version__

    folder = Path(folder)
    files = {p.name: sha256_file(p) for p in sorted(folder.iterdir())
             if p.is_file() and not p.is_symlink() and p.name != "manifest.json"}
    m = Manifest(**{**manifest.__dict__, "files": files, "format_version": FORMAT_VERSION,
                    "engine_version": manifest.engine_version or __version__})
    atomic_write(folder / "manifest.json", m.to_json())
    return m


def _regular_file(path: Path, limit: int, where: str) -> int:
    """Size of ``path`` if it is a regular file (not a symlink, device or FIFO) under ``limit``."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise PackageError(f"{where}: {path.name} is listed in the manifest but missing") from None
    except OSError as exc:
        raise PackageError(f"{where}: cannot read {path.name} ({exc.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        kind = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a regular file"
        raise PackageError(f"{where}: {path.name} is {kind}; package files must be regular files")
    if st.st_size > limit:
        raise PackageError(f"{where}: {path.name} is {st.st_size} bytes, more than the {limit} allowed")
    return st.st_size


@dataclass(frozen=True)
class ModelPackage:
    path: Path
    manifest: Manifest

    def file(self, name: str) -> Path | None:
        return self.path / name if name in self.manifest.files else None

    @property
    def contract(self) -> InputContract:
        return self.manifest.contract

    @property
    def has_stage2(self) -> bool:
        """A two-stage package: the contract declares stage 2 and ``stage2.onnx`` is listed."""
        return self.contract.stage2 is not None and "stage2.onnx" in self.manifest.files

    @property
    def has_dense(self) -> bool:
        return "dense.onnx" in self.manifest.files and self.contract.dense_stride is not None

    @classmethod
    def load(cls, path, verify_hashes: bool = True) -> ModelPackage:
        """Open and verify a package folder; PackageError says exactly what is wrong."""
        folder = Path(path)
        where = printable(folder.name or folder)
        if not folder.is_dir():
            raise PackageError(f"{printable(folder)} is not a model package folder")
        mpath = folder / "manifest.json"
        if not mpath.exists() and not mpath.is_symlink():
            raise PackageError(f"{where} is not a model package: no manifest.json")
        _regular_file(mpath, MAX_MANIFEST_BYTES, where)
        try:
            raw = json.loads(mpath.read_bytes().decode("utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
            raise PackageError(f"{where}: manifest.json is not valid JSON ({printable(exc)})") from None
        m = Manifest.from_dict(raw, where)
        if "patch.onnx" not in m.files:
            raise PackageError(f"{where}: manifest lists no patch.onnx")
        if (m.contract.stage2 is None) != ("stage2.onnx" not in m.files):
            raise PackageError(f"{where}: the contract's stage2 and the file stage2.onnx come together "
                               f"(contract stage2 {'set' if m.contract.stage2 else 'null'}, stage2.onnx "
                               f"{'listed' if 'stage2.onnx' in m.files else 'not listed'})")
        for name, digest in m.files.items():
            f = folder / name
            _regular_file(f, MAX_FILE_BYTES, where)
            if verify_hashes:
                actual = sha256_file(f)
                if actual != digest:
                    raise PackageError(f"{where}: {name} does not match its manifest hash "
                                       f"(manifest {digest[:12]}..., file {actual[:12]}...)")
        for name in m.files:
            if name.endswith(".onnx"):
                _check_external_data(folder / name, m.files, where)
        return cls(folder, m)


# -- ONNX external data ------------------------------------------------------------------------------
# A graph may keep a tensor's values in another file (TensorProto.data_location = EXTERNAL, the file
# named by its external_data entry "location"); ONNX Runtime and OpenVINO then read that file
# from beside the graph. Such a file escapes the manifest's hashes unless it is listed itself. The
# engine needs no `onnx` package to see this (it is not a runtime dependency): the few messages
# that can hold a tensor are walked with a minimal protobuf reader, every other field is skipped.
# field number -> message kind, per message kind (onnx.proto3)
_ONNX_CHILDREN = {
    "model": {7: "graph", 20: "training", 25: "function"},        # graph, training_info, functions
    "training": {1: "graph", 2: "graph"},                          # initialization, algorithm
    "function": {7: "node", 11: "attribute"},                      # node, attribute_proto
    "graph": {1: "node", 5: "tensor", 15: "sparse"},               # node, initializer, sparse_initializer
    "node": {5: "attribute"},
    "attribute": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"},
    "sparse": {1: "tensor", 2: "tensor"},                          # values, indices
}
_TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION, _EXTERNAL = 13, 14, 1
_MAX_ONNX_DEPTH = 64


def _varint(buf: bytes, i: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= end or shift > 63:
            raise ValueError("truncated or overlong varint")
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, i


def _proto_fields(buf: bytes, start: int, end: int):
    """(field number, wire type, value) of one protobuf message in ``buf[start:end]``; the value of
    a length-delimited field is its (start, end) span, of a varint its integer, else None."""
    i = start
    while i < end:
        key, i = _varint(buf, i, end)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i, end)
            yield number, wire, value
        elif wire == 2:
            n, i = _varint(buf, i, end)
            if i + n > end:
                raise ValueError(f"field {number} runs past its message")
            yield number, wire, (i, i + n)
            i += n
        elif wire in (1, 5):
            i += 8 if wire == 1 else 4
            yield number, wire, None
        else:
            raise ValueError(f"wire type {wire} (field {number}) is not used by ONNX")
    if i != end:
        raise ValueError("a field runs past the end of its message")


def _tensor_locations(buf: bytes, start: int, end: int, found: list) -> None:
    external, locations = False, []
    for number, wire, value in _proto_fields(buf, start, end):
        if number == _TENSOR_DATA_LOCATION and wire == 0:
            external = value == _EXTERNAL
        elif number == _TENSOR_EXTERNAL_DATA and wire == 2:
            entry = {k: bytes(buf[v[0]:v[1]]) for k, w, v in _proto_fields(buf, *value) if w == 2}
            if entry.get(1) == b"location":
                locations.append(entry.get(2, b"").decode("utf-8", "replace"))
    if external and not locations:
        locations.append("")  # EXTERNAL with no file named: refused like any unlisted file
    found.extend(locations)


def _walk(buf: bytes, start: int, end: int, kind: str, depth: int, found: list) -> None:
    if depth > _MAX_ONNX_DEPTH:
        raise ValueError(f"subgraphs nested more than {_MAX_ONNX_DEPTH} deep")
    if kind == "tensor":
        _tensor_locations(buf, start, end, found)
        return
    children = _ONNX_CHILDREN[kind]
    for number, wire, value in _proto_fields(buf, start, end):
        child = children.get(number)
        if child is not None and wire == 2:
            _walk(buf, *value, child, depth + 1, found)


def external_data_locations(data: bytes) -> list[str]:
    """Every external-data file named by a tensor of the ONNX model ``data`` (a serialised
    ModelProto): initializers, sparse initializers, node attributes (Constant values), and those of
    subgraphs (If/Loop/Scan bodies), functions and training graphs. A tensor marked EXTERNAL with
    no file named gives ``""``. ValueError if ``data`` is not a well-formed protobuf message."""
    found: list[str] = []
    _walk(data, 0, len(data), "model", 0, found)
    return found


def _check_external_data(path: Path, files: dict, where: str) -> None:
    """Refuse a graph whose external data is not made of files listed (so hashed) in the manifest."""
    try:
        locations = external_data_locations(path.read_bytes())
    except OSError as exc:
        raise PackageError(f"{where}: cannot read {path.name} ({exc.strerror})") from None
    except ValueError as exc:
        raise PackageError(f"{where}: {path.name} is not a well-formed ONNX graph ({printable(exc)})") from None
    unlisted = sorted({loc for loc in locations if loc not in files or loc == "manifest.json"})
    if unlisted:
        names = ", ".join(printable(repr(n))[:80] for n in unlisted[:5])
        raise PackageError(f"{where}: {path.name} reads tensor data from external file(s) {names} that the "
                           "manifest does not list and hash; list every external-data file in the manifest's "
                           "files (or save the graph with its weights inside)")


def default_package_path() -> Path:
    """The model shipped inside the engine (trained on synthetic phantoms; see README)."""
    return Path(__file__).resolve().parent / "models" / "default"
