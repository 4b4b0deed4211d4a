"""Model packages: one folder with the graphs and a manifest the engine verifies before use.

    patch.onnx      (N, 1, 41, 41, 41) float32 -> (N,) logits, dynamic batch
    dense.onnx      (N, 1, D, H, W) -> (N, D', H', W') logits, the same weights as a
                    fully convolutional net (3-D models); D' = (D - 41) // stride + 1
    manifest.json   architecture, patch size, target spacing, HU window and
                    normalisation, dense stride/offset, candidate rules, training data
                    and metrics, sha256 of every file, format version

The engine refuses a package whose format version it does not know, whose files are
missing or do not match their hashes, or whose preprocessing it cannot honour.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import PackageError

FORMAT_VERSION = 1
SUPPORTED_FORMAT_VERSIONS = (1,)
NORMALISATIONS = ("window_to_unit",)


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
    format_version: int = FORMAT_VERSION
    patch_size: int = 41
    target_spacing_zyx_mm: tuple = (1.0, 1.0, 1.0)
    hu_window: tuple = (-1000.0, 400.0)
    normalisation: str = "window_to_unit"
    output: str = "logit"
    dense_stride: int | None = None
    dense_offset: int | None = None
    uses_location: bool = False
    preprocess: dict = field(default_factory=dict)
    candidate_rules: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)
    export: dict = field(default_factory=dict)
    files: dict = field(default_factory=dict)
    engine_version: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def write_manifest(folder, **fields_) -> Manifest:
    """Hash every file in ``folder`` (but the manifest) and write manifest.json."""
    from . import __version__

    folder = Path(folder)
    files = {p.name: sha256_file(p) for p in sorted(folder.iterdir())
             if p.is_file() and p.name != "manifest.json"}
    m = Manifest(**{**fields_, "files": files, "engine_version": fields_.get("engine_version") or __version__})
    (folder / "manifest.json").write_text(m.to_json())
    return m


@dataclass(frozen=True)
class ModelPackage:
    path: Path
    manifest: Manifest

    def file(self, name: str) -> Path | None:
        return self.path / name if name in self.manifest.files else None

    @property
    def has_dense(self) -> bool:
        return "dense.onnx" in self.manifest.files and self.manifest.dense_stride is not None

    @classmethod
    def load(cls, path, verify_hashes: bool = True) -> "ModelPackage":
        """Open and verify a package folder; PackageError says exactly what is wrong."""
        folder = Path(path)
        mpath = folder / "manifest.json"
        if not mpath.exists():
            raise PackageError(f"{folder} is not a model package: no manifest.json")
        try:
            raw = json.loads(mpath.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise PackageError(f"{mpath}: manifest is not valid JSON ({exc})") from exc
        version = raw.get("format_version")
        if version not in SUPPORTED_FORMAT_VERSIONS:
            raise PackageError(f"{folder.name}: package format version {version!r} is not supported; this engine "
                               f"reads versions {', '.join(map(str, SUPPORTED_FORMAT_VERSIONS))}")
        known = set(Manifest.__dataclass_fields__)
        unknown = sorted(set(raw) - known)
        if unknown:
            raise PackageError(f"{folder.name}: unknown manifest fields {unknown} for format version {version}")
        try:
            m = Manifest(**{**raw, "target_spacing_zyx_mm": tuple(raw.get("target_spacing_zyx_mm", (1, 1, 1))),
                            "hu_window": tuple(raw.get("hu_window", (-1000, 400)))})
        except TypeError as exc:
            raise PackageError(f"{folder.name}: manifest incomplete ({exc})") from exc
        if m.patch_size != 41:
            raise PackageError(f"{folder.name}: patch size {m.patch_size} is not supported (41 only)")
        if m.normalisation not in NORMALISATIONS:
            raise PackageError(f"{folder.name}: unknown normalisation {m.normalisation!r}; known: {NORMALISATIONS}")
        lo, hi = m.hu_window
        if not -3000 <= lo < hi <= 4000:
            raise PackageError(f"{folder.name}: HU window {m.hu_window} is not a valid window")
        if "patch.onnx" not in m.files:
            raise PackageError(f"{folder.name}: manifest lists no patch.onnx")
        for name, digest in m.files.items():
            f = folder / name
            if not f.exists():
                raise PackageError(f"{folder.name}: {name} is listed in the manifest but missing")
            if verify_hashes:
                actual = sha256_file(f)
                if actual != digest:
                    raise PackageError(f"{folder.name}: {name} does not match its manifest hash "
                                       f"(manifest {digest[:12]}..., file {actual[:12]}...)")
        return cls(folder, m)


def default_package_path() -> Path:
    """The model shipped inside the engine (trained on synthetic phantoms; see README)."""
    return Path(__file__).resolve().parent / "models" / "default"
