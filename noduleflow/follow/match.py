"""One-to-one matching of findings across two time points: the least total distance (Hungarian
algorithm) among the pairs closer than a per-pair threshold."""
from __future__ import annotations

import numpy as np

from noduleflow.engine.errors import ConfigError

MATCH_MIN_MM = 10.0       # a pair may be this far apart whatever the nodules' size ...
MATCH_RADIUS_FACTOR = 1.5  # ... or this many times the larger one's radius


def assignment(cost: np.ndarray) -> list[tuple[int, int]]:
    """The minimum-cost one-to-one assignment of a (n, m) cost matrix (float, finite) -> pairs
    (row, column), min(n, m) of them, rows ascending. The Hungarian algorithm with potentials
    (Kuhn-Munkres, O(n^2 m)): a few dozen findings per scan take microseconds."""
    c = np.asarray(cost, dtype=np.float64)
    if c.ndim != 2:
        raise ConfigError(f"cost must be a 2-D matrix, got shape {c.shape}")
    if not np.all(np.isfinite(c)):
        raise ConfigError("cost must be finite (use a large value for a forbidden pair)")
    flip = c.shape[0] > c.shape[1]
    if flip:
        c = c.T
    n, m = c.shape
    if n == 0:
        return []
    u, v = np.zeros(n + 1), np.zeros(m + 1)
    p = np.zeros(m + 1, dtype=np.int64)     # p[j]: the row (1-based) assigned to column j; 0: none
    way = np.zeros(m + 1, dtype=np.int64)
    for i in range(1, n + 1):
        p[0] = i
        j0 = 0
        minv = np.full(m + 1, np.inf)
        used = np.zeros(m + 1, dtype=bool)
        while True:
            used[j0] = True
            i0 = p[j0]
            cur = c[i0 - 1] - u[i0] - v[1:]
            free = ~used[1:]
            better = free & (cur < minv[1:])
            minv[1:][better] = cur[better]
            way[1:][better] = j0
            cand = np.where(free, minv[1:], np.inf)
            j1 = int(np.argmin(cand)) + 1
            delta = cand[j1 - 1]
            u[p[used]] += delta
            v[used] -= delta
            minv[1:][free] -= delta
            j0 = j1
            if p[j0] == 0:
                break
        while j0:
            j1 = way[j0]
            p[j0] = p[j1]
            j0 = j1
    pairs = [(int(p[j]) - 1, j - 1) for j in range(1, m + 1) if p[j]]
    if flip:
        pairs = [(b, a) for a, b in pairs]
    return sorted(pairs)


def match_findings(prior_xyz_mm, prior_radius_mm, current_xyz_mm, current_radius_mm, *,
                   min_mm: float = MATCH_MIN_MM, radius_factor: float = MATCH_RADIUS_FACTOR):
    """Match prior findings (their centres already mapped into the current scan) to current ones.

    ``prior_xyz_mm`` (n, 3) and ``current_xyz_mm`` (m, 3): world x, y, z mm; ``*_radius_mm``
    (n,), (m,): half the mean diameters. A pair is allowed when its distance is at most
    max(``min_mm``, ``radius_factor`` x the larger radius); among the allowed pairs the
    assignment minimises the total distance. -> (pairs [(prior index, current index, distance
    mm)], unmatched prior indices, unmatched current indices)."""
    a = np.asarray(prior_xyz_mm, dtype=np.float64).reshape(-1, 3)
    b = np.asarray(current_xyz_mm, dtype=np.float64).reshape(-1, 3)
    ra = np.asarray(prior_radius_mm, dtype=np.float64).reshape(-1)
    rb = np.asarray(current_radius_mm, dtype=np.float64).reshape(-1)
    if len(ra) != len(a) or len(rb) != len(b):
        raise ConfigError(f"need one radius per finding: {len(a)} prior and {len(b)} current findings, "
                          f"{len(ra)} and {len(rb)} radii")
    if not min_mm > 0 or not radius_factor > 0:
        raise ConfigError(f"min_mm and radius_factor must be > 0, got {min_mm} and {radius_factor}")
    if len(a) == 0 or len(b) == 0:
        return [], list(range(len(a))), list(range(len(b)))
    dist = np.linalg.norm(a[:, None, :] - b[None, :, :], axis=2)
    limit = np.maximum(min_mm, radius_factor * np.maximum(ra[:, None], rb[None, :]))
    allowed = dist <= limit
    # a forbidden pair costs more than any set of allowed ones: the assignment takes it only where
    # nothing else is left, and it is dropped below
    big = float(dist[allowed].sum() + 1.0) * (min(len(a), len(b)) + 1) if allowed.any() else 1.0
    cost = np.where(allowed, dist, big)
    pairs = [(i, j, float(dist[i, j])) for i, j in assignment(cost) if allowed[i, j]]
    got_a = {i for i, _, _ in pairs}
    got_b = {j for _, j, _ in pairs}
    return pairs, [i for i in range(len(a)) if i not in got_a], [j for j in range(len(b)) if j not in got_b]
