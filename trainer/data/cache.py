"""On-disk cache of preprocessed scans: the engine's 1 mm volume, lung mask and candidate centres
as memory-mapped .npy files, keyed by scan id and a hash of the preprocessing spec.

Layout: ``<root>/<scan key>/<spec hash>/{hu.npy, mask.npy, candidates.npy, meta.json}``.
A changed spec (preprocessing, candidate rules, cache format) hashes differently: a miss; the
stale entries of that scan are removed when the new one is written. Entries are written to a
temporary folder and renamed, so an interrupted run never leaves a half entry that looks valid.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from noduleflow.engine.candidates import CandidateRules, candidates
from noduleflow.engine.fileio import TEMP_PREFIX, atomic_dir
from noduleflow.engine.preprocess import PreprocessSpec, preprocess
from noduleflow.engine.volume import Volume

log = logging.getLogger(__name__)

CACHE_FORMAT = 2  # 2: the lung mask takes juxta-pleural lesions in and never loses lungs to its coarse grid


@dataclass(frozen=True)
class CacheSpec:
    """Everything the cached arrays depend on."""

    preprocess: PreprocessSpec = field(default_factory=PreprocessSpec)
    rules: CandidateRules = field(default_factory=CandidateRules)

    def digest(self) -> str:
        text = json.dumps({"format": CACHE_FORMAT, "preprocess": self.preprocess.to_dict(),
                           "rules": asdict(self.rules)}, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True, eq=False)
class CachedScan:
    """A preprocessed scan; ``volume.hu`` (int16 (z, y, x), 1 mm) and ``mask`` (bool) are
    read-only memory maps; ``candidates`` int64 (n, 3) voxel indices on that grid."""

    scan_id: str
    volume: Volume
    mask: np.ndarray
    candidates: np.ndarray
    bbox_native: tuple


def _safe(scan_id: str) -> str:
    s = re.sub(r"[^A-Za-z0-9._-]", "_", scan_id)
    if s != scan_id or len(s) > 120:
        s = s[:100] + "-" + hashlib.sha256(scan_id.encode()).hexdigest()[:12]
    return s


class ScanCache:
    """``get(scan_id, load)``: the cached entry, or ``load()`` -> Volume, preprocessed, stored."""

    def __init__(self, root, spec: CacheSpec = CacheSpec()):
        self.root = Path(root)
        self.spec = spec
        self.digest = spec.digest()
        self.hits = 0
        self.misses = 0

    def entry_dir(self, scan_id: str) -> Path:
        return self.root / _safe(scan_id) / self.digest

    def has(self, scan_id: str) -> bool:
        return (self.entry_dir(scan_id) / "meta.json").is_file()

    def get(self, scan_id: str, load: Callable[[], Volume]) -> CachedScan:
        if self.has(scan_id):
            self.hits += 1
            return self._read(scan_id)
        self.misses += 1
        self._write(scan_id, load())
        return self._read(scan_id)

    def _write(self, scan_id: str, volume: Volume) -> None:
        pre = preprocess(volume, self.spec.preprocess)
        cand = candidates(pre.volume.hu, pre.mask, self.spec.rules)
        scan_dir = self.root / _safe(scan_id)
        scan_dir.mkdir(parents=True, exist_ok=True)
        final = self.entry_dir(scan_id)
        try:
            with atomic_dir(final, mode=0o700) as tmp:
                self._fill(tmp, scan_id, pre, cand)
                self._drop_stale(scan_dir, scan_id, final)
        except FileExistsError:
            if not (final / "meta.json").is_file():
                raise
            log.debug("cache: %s was written concurrently, keeping that entry", scan_id)

    def _fill(self, folder: Path, scan_id: str, pre, cand) -> None:
        """The entry's files, into the folder ``folder`` (not yet in place)."""
        np.save(folder / "hu.npy", np.ascontiguousarray(pre.volume.hu, dtype=np.int16))
        np.save(folder / "mask.npy", np.ascontiguousarray(pre.mask, dtype=bool))
        np.save(folder / "candidates.npy", np.asarray(cand, dtype=np.int64).reshape(-1, 3))
        v = pre.volume
        meta = {"scan_id": scan_id, "series_uid": v.series_uid, "spacing_zyx_mm": list(v.spacing_zyx_mm),
                "origin_xyz_mm": list(v.origin_xyz_mm), "direction": list(v.direction),
                "bbox_native": [int(b) for b in pre.bbox_native], "spec_digest": self.digest,
                "spec": {"preprocess": self.spec.preprocess.to_dict(), "rules": asdict(self.spec.rules)}}
        (folder / "meta.json").write_text(json.dumps(meta, indent=1, default=str))

    def _drop_stale(self, scan_dir: Path, scan_id: str, final: Path) -> None:
        """Remove the scan's entries of other specs, and a leftover ``final`` without its meta."""
        for stale in scan_dir.iterdir():
            # other writers' temporary folders are theirs to finish
            if stale.is_dir() and not stale.name.startswith(TEMP_PREFIX) and stale.name != self.digest:
                log.info("cache: spec changed for %s, removing %s", scan_id, stale.name)
                shutil.rmtree(stale, ignore_errors=True)
        if final.exists() and not (final / "meta.json").is_file():
            shutil.rmtree(final, ignore_errors=True)  # a leftover without its meta: not valid

    def _read(self, scan_id: str) -> CachedScan:
        d = self.entry_dir(scan_id)
        meta = json.loads((d / "meta.json").read_text())
        hu = np.load(d / "hu.npy", mmap_mode="r")
        vol = Volume(hu, tuple(meta["spacing_zyx_mm"]), tuple(meta["origin_xyz_mm"]), tuple(meta["direction"]),
                     series_uid=meta["series_uid"], meta={"cache": str(d)})
        return CachedScan(scan_id, vol, np.load(d / "mask.npy", mmap_mode="r"),
                          np.load(d / "candidates.npy", mmap_mode="r"), tuple(meta["bbox_native"]))
