"""Phantom cohorts for evaluation and training, and an on-disk cache of their preprocessed scans.

Every phantom seed range the project uses is written down here, once:

- ``train`` 1000-1071: training of the 3D-1 rounds and of stage 2 (their false positives);
- ``train_more`` 1172-1371 (v11) and ``train_kernels`` 1372-1571 (v12): further stage-2 training
  scans; the v12 data makes 1372-1505 with the generator's standard kernel, 1506-1538 smooth and
  1539-1571 sharp (``--kernel`` of the builders below; `kernel_cache`);
- ``validation`` 2000-2005: model selection (best epoch) of every round;
- ``tuning_v6`` 2100-2109 and ``heldout_v6`` 3000-3009: the v6 round's tuning and held-out sets
  (too small to steer by: 20 and 34 nodules);
- ``tuning`` 4000-4059: every detection threshold and setting (stage-1 generators, clustering,
  calibration checks) and the stage-2 weights are chosen here (4000-4029 until the v9 round:
  70 nodules were too few to tell stage-2 checkpoints apart);
- ``heldout`` 5000-5059: the held-out evaluation (>= 120 nodules). Never used for training,
  tuning or model selection; figures on it are reported, never optimised.

The cache holds, per seed, what the engine's preprocessing makes of the phantom (the 1 mm lung
box as int16 HU, its lung mask, the world geometry) and the phantom's findings with their kind,
shape and location, so that a rerun skips the ~15 s of phantom synthesis and ~4 s of
preprocessing per scan. Layout: ``<root>/<spec digest>/<seed>/{hu.npy, mask.npy, meta.json}``,
written to a temporary folder and renamed (an interrupted run leaves no half entry). Default
root: ``$NODULEFLOW_COHORT_CACHE`` or ``~/.cache/noduleflow/cohorts``. Synthetic phantoms are a
regression signal, not clinical evidence.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from noduleflow.engine import ConfigError
from noduleflow.engine.fileio import atomic_dir
from noduleflow.engine.preprocess import Preprocessed, PreprocessSpec, preprocess
from noduleflow.engine.volume import Volume

COHORTS = {
    "train": range(1000, 1072),
    "train_extra": range(1072, 1172),
    "train_more": range(1172, 1372),
    "train_kernels": range(1372, 1572),
    "validation": range(2000, 2006),
    "tuning_v6": range(2100, 2110),
    "heldout_v6": range(3000, 3010),
    "tuning": range(4000, 4060),
    "heldout": range(5000, 5060),
}
CACHE_FORMAT = 2  # 2: the lung mask takes juxta-pleural lesions in and never loses lungs to its coarse grid


def cohort_seeds(name_or_range: str) -> list[int]:
    """``"heldout"`` (a name in `COHORTS`) or ``"5000-5059"`` (inclusive) -> seeds."""
    if name_or_range in COHORTS:
        return list(COHORTS[name_or_range])
    try:
        lo, hi = (int(v) for v in name_or_range.split("-"))
    except ValueError as exc:
        raise ConfigError(f"cohort must be one of {sorted(COHORTS)} or 'FIRST-LAST', got {name_or_range!r}") from exc
    if hi < lo:
        raise ConfigError(f"cohort range must be FIRST-LAST with LAST >= FIRST, got {name_or_range!r}")
    return list(range(lo, hi + 1))


@dataclass(frozen=True, eq=False)
class Finding:
    """A phantom finding in world mm, with what the generator says it is."""

    center_xyz_mm: tuple[float, float, float]
    diameter_mm: float
    kind: str
    shape: str
    location: str


@dataclass(frozen=True, eq=False)
class CohortScan:
    """One cached phantom: ``pre`` as `engine.preprocess.preprocess` returns it (``hu`` and
    ``mask`` are read-only memory maps), its nodules and excluded (< 3 mm) findings."""

    seed: int
    pre: Preprocessed
    nodules: tuple[Finding, ...]
    excluded: tuple[Finding, ...]
    meta: dict

    @property
    def series_uid(self) -> str:
        return self.pre.volume.series_uid

    def xyzd(self, excluded: bool = False) -> np.ndarray:
        """(n, 4) float64 [x, y, z, diameter] mm (LUNA16 layout)."""
        f = self.excluded if excluded else self.nodules
        return np.array([(*n.center_xyz_mm, n.diameter_mm) for n in f], dtype=np.float64).reshape(-1, 4)


def default_root() -> Path:
    return Path(os.environ.get("NODULEFLOW_COHORT_CACHE", Path.home() / ".cache" / "noduleflow" / "cohorts"))


def spec_digest(spec: PreprocessSpec, phantom_kwargs: dict | None = None) -> str:
    text = json.dumps({"format": CACHE_FORMAT, "preprocess": spec.to_dict(), **({"phantom": phantom_kwargs}
                                                                                 if phantom_kwargs else {})},
                      sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class CohortCache:
    """``get(seed)``: the cached phantom of ``seed``, synthesised and preprocessed on a miss.
    ``phantom_kwargs``: passed to `generate_phantom` (e.g. a small ``shape_zyx`` for tests);
    they are part of the cache key."""

    def __init__(self, root=None, spec: PreprocessSpec = PreprocessSpec(), phantom_kwargs: dict | None = None):
        self.spec = spec
        self.phantom_kwargs = dict(phantom_kwargs or {})
        self.root = Path(root) if root else default_root()
        self.dir = self.root / spec_digest(spec, self.phantom_kwargs)

    def has(self, seed: int) -> bool:
        return (self.dir / str(int(seed)) / "meta.json").is_file()

    def get(self, seed: int) -> CohortScan:
        if not self.has(seed):
            self._write(int(seed))
        return self._read(int(seed))

    def scans(self, seeds):
        """Yield `CohortScan` for each seed, in order."""
        for s in seeds:
            yield self.get(s)

    def _write(self, seed: int) -> None:
        from noduleflow.synthetic.phantom import generate_phantom

        ph = generate_phantom(seed, **self.phantom_kwargs)
        pre = preprocess(ph.volume, self.spec)
        self.dir.mkdir(parents=True, exist_ok=True)
        final = self.dir / str(seed)
        try:
            with atomic_dir(final, mode=0o700) as tmp:
                self._fill(tmp, seed, ph, pre)
        except FileExistsError:
            if not (final / "meta.json").is_file():
                raise  # a concurrent writer's complete entry is as good as ours

    def _fill(self, folder: Path, seed: int, ph, pre) -> None:
        """The entry's files, into the folder ``folder`` (not yet in place)."""
        np.save(folder / "hu.npy", np.ascontiguousarray(pre.volume.hu, dtype=np.int16))
        np.save(folder / "mask.npy", np.ascontiguousarray(pre.mask, dtype=bool))
        v = pre.volume

        def rec(n):
            return {"center_xyz_mm": list(n.center_xyz_mm), "diameter_mm": n.diameter_mm, "kind": n.kind,
                    "shape": n.shape, "location": n.location}

        meta = {"seed": seed, "series_uid": v.series_uid, "spacing_zyx_mm": list(v.spacing_zyx_mm),
                "origin_xyz_mm": list(v.origin_xyz_mm), "direction": list(v.direction),
                "bbox_native": [int(b) for b in pre.bbox_native],
                "native_shape_zyx": list(ph.volume.shape),
                "native_spacing_zyx_mm": list(ph.volume.spacing_zyx_mm),
                "phantom": {k: v for k, v in ph.meta.items() if isinstance(v, (int, float, bool, str))},
                "nodules": [rec(n) for n in ph.nodules], "excluded": [rec(n) for n in ph.excluded],
                "spec": self.spec.to_dict()}
        (folder / "meta.json").write_text(json.dumps(meta, indent=1, default=str))

    def _read(self, seed: int) -> CohortScan:
        d = self.dir / str(seed)
        meta = json.loads((d / "meta.json").read_text())
        hu = np.load(d / "hu.npy", mmap_mode="r")
        vol = Volume(hu, tuple(meta["spacing_zyx_mm"]), tuple(meta["origin_xyz_mm"]), tuple(meta["direction"]),
                     series_uid=meta["series_uid"], meta={"source": f"phantom seed={seed}", "cache": str(d)})
        pre = Preprocessed(vol, np.load(d / "mask.npy", mmap_mode="r"), tuple(meta["bbox_native"]), {})

        def fs(key):
            return tuple(Finding(tuple(n["center_xyz_mm"]), float(n["diameter_mm"]), n["kind"], n["shape"],
                                 n["location"]) for n in meta[key])

        return CohortScan(seed, pre, fs("nodules"), fs("excluded"), meta)


def kernel_cache(kernel: str = "standard", root=None) -> CohortCache:
    """The cache of phantoms made with reconstruction ``kernel`` ("standard", the generator's default,
    shares the cohorts' own entries)."""
    from noduleflow.synthetic.phantom import RECON_KERNELS, PhantomParams

    if kernel not in RECON_KERNELS:
        raise ConfigError(f"kernel must be one of {list(RECON_KERNELS)}, got {kernel!r}")
    return CohortCache(root, phantom_kwargs={} if kernel == "standard" else {"params": PhantomParams(kernel=kernel)})


def main(argv=None) -> int:
    """``python -m noduleflow.trainer.data.cohort heldout tuning [--root DIR] [--kernel K]``: fill the cache."""
    import argparse

    from tqdm import tqdm

    from noduleflow.synthetic.phantom import RECON_KERNELS

    ap = argparse.ArgumentParser(prog="python -m noduleflow.trainer.data.cohort", description=main.__doc__)
    ap.add_argument("cohorts", nargs="+", help=f"names ({', '.join(COHORTS)}) or FIRST-LAST seed ranges")
    ap.add_argument("--root", help="cache root (default: $NODULEFLOW_COHORT_CACHE or ~/.cache/noduleflow/cohorts)")
    ap.add_argument("--kernel", default="standard", choices=RECON_KERNELS,
                    help="the phantoms' reconstruction kernel (default standard: the cohorts' own)")
    a = ap.parse_args(argv)
    cache = kernel_cache(a.kernel, a.root)
    for name in a.cohorts:
        seeds = cohort_seeds(name)
        n = 0
        for s in tqdm(seeds, desc=name, unit="scan"):
            n += len(cache.get(s).nodules)
        print(f"{name}: {len(seeds)} scans, {n} nodules, cache {cache.dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
