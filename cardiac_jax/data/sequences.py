"""Lineage-consistent pseudo-trajectories of cells, spatial walks, and their features.

The earlier pipeline on this data drew one random cell of a type per day, so
consecutive steps were independent and a sequence model had nothing temporal to
learn. Here a sequence is a *walk*: it starts at an anchor cell of the target
population and steps backwards in time, each step to one of the k nearest
neighbours (in PCA space) of the current cell on the same day or the previous
one, then it is reversed to run forward in time. Consecutive steps are therefore
similar cells, and the path follows the differentiation towards the anchor.

All walks of one split advance together: one vectorised update per step over all
walks, using neighbour tables computed once per split. Everything here works on
the rows of one split only, so no cell is shared between splits.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Sequence

from absl import logging
import numpy as np
from scipy import spatial as sp_spatial
from sklearn import neighbors

from cardiac_jax.data.errors import DataError

# Walks may reuse an anchor cell, but no more than this many times on average:
# beyond that a split's sequences are mostly near-copies and its accuracy misleads.
MAX_ANCHOR_REUSE = 10.0
# Spatial neighbours: the 6 of a hex (Visium) grid, limited to this many spot
# spacings so that walks do not jump between distant tiles of the same split.
SPATIAL_NEIGHBOURS = 6
SPATIAL_RADIUS = 1.5
# The time feature of spatial steps: sections are of formed tissue, so they sit at
# the end of the time axis (1.0 = the last day). It is constant, so it carries no
# label information; the modality flag tells the two kinds apart.
SPATIAL_TIME = 1.0


@dataclasses.dataclass(frozen=True)
class WalkGraph:
  """Neighbour tables of one split, in local indices (0 .. len(rows) - 1).

  Attributes:
    rows: (n,) int64 global row (into the prepared Cells / Spots) of each local item.
    labels: (n,) int32 class per local item.
    time_index: (n,) int32 time point per local item (zeros for spatial graphs).
    same: (n, k) int64 neighbours on the same time point (spatial: nearby spots).
    same_count: (n,) int64 how many leading entries of ``same`` are valid (>= 1).
    prev: (n, k) int64 neighbours on the previous populated time point (self when none).
    prev_count: (n,) int64 valid entries of ``prev`` (>= 1).
    has_prev: (n,) bool whether an earlier populated time point exists.
  """
  rows: np.ndarray
  labels: np.ndarray
  time_index: np.ndarray
  same: np.ndarray
  same_count: np.ndarray
  prev: np.ndarray
  prev_count: np.ndarray
  has_prev: np.ndarray

  @property
  def size(self) -> int:
    return int(self.rows.size)


def _pad_table(idx: np.ndarray, k: int) -> np.ndarray:
  """Repeats the valid columns of a (n, k_eff) table up to k columns."""
  if idx.shape[1] == k:
    return idx
  return idx[:, np.arange(k) % idx.shape[1]]


def _knn(points: np.ndarray, queries: np.ndarray | None, k: int) -> np.ndarray:
  """k nearest neighbours among ``points``; queries=None excludes each point itself."""
  nn = neighbors.NearestNeighbors(n_neighbors=k).fit(points)
  return nn.kneighbors(queries, return_distance=False).astype(np.int64)


def _knn_excluding_self(points: np.ndarray, queries: np.ndarray, point_ids: np.ndarray,
                        query_ids: np.ndarray, k: int) -> np.ndarray:
  """k nearest ``points`` of each query (indices into points), never the query itself."""
  k_query = min(k + 1, points.shape[0])
  idx = _knn(points, queries, k_query)
  is_self = point_ids[idx] == query_ids[:, None]
  # A stable sort puts each row's self (if found) last; keep the first k.
  order = np.argsort(is_self, axis=1, kind="stable")[:, :k]
  return np.take_along_axis(idx, order, axis=1)


def reference_points(time_index: np.ndarray, per_day: int, seed: int) -> np.ndarray:
  """At most ``per_day`` random cells of each time point (sorted indices), for ``points``.

  Why: at prediction every cell is an anchor, but its walk needs only neighbours
  as dense as the training graph's; searching all cells costs cells squared.
  """
  rng = np.random.default_rng([seed, per_day])
  keep = []
  for d in np.unique(time_index):
    own = np.flatnonzero(time_index == d)
    keep.append(own if own.size <= per_day else rng.choice(own, per_day, replace=False))
  return np.sort(np.concatenate(keep))


def temporal_graph(pcs: np.ndarray, time_index: np.ndarray, labels: np.ndarray,
                   rows: np.ndarray, k: int, points: np.ndarray | None = None) -> WalkGraph:
  """Builds the same-day and previous-day neighbour tables of one split's cells.

  Args:
    pcs: (n_cells, n_pcs) PCA coordinates of all cells.
    time_index: (n_cells,) int time point of all cells.
    labels: (n_cells,) int class of all cells.
    rows: global rows of this split's cells.
    k: neighbours per table; days with fewer cells use what they have.
    points: local indices (into ``rows``) of the cells the tables may point to;
      None = all. Every cell still gets tables, so a walk from any cell steps
      into ``points`` and stays there: the search costs cells x points, not
      cells x cells (``reference_points``).

  Returns:
    The split's WalkGraph.
  """
  if k < 1:
    raise DataError(f"k_neighbors must be >= 1, got {k}; fix config.data.sequences.k_neighbors.")
  rows = np.asarray(rows, dtype=np.int64)
  if rows.size == 0:
    raise DataError("a split has no cells; check config.data.split.fractions and the data.")
  x = np.asarray(pcs, dtype=np.float32)[rows]
  t = np.asarray(time_index, dtype=np.int32)[rows]
  n = rows.size
  same = np.empty((n, k), dtype=np.int64)
  same_count = np.empty(n, dtype=np.int64)
  prev = np.empty((n, k), dtype=np.int64)
  prev_count = np.empty(n, dtype=np.int64)
  has_prev = np.zeros(n, dtype=bool)
  days = np.unique(t)
  members = {d: np.flatnonzero(t == d) for d in days}
  in_points = None
  if points is not None:
    in_points = np.zeros(n, dtype=bool)
    in_points[np.asarray(points, dtype=np.int64)] = True
  targets = {d: own if in_points is None or not in_points[own].any() else own[in_points[own]]
             for d, own in members.items()}
  # One pass per populated day (a handful), each a vectorised kNN query.
  for i, d in enumerate(days):
    own, pts = members[d], targets[d]
    if own.size == 1:
      same[own] = own[0]
      same_count[own] = 1
    elif pts.size == own.size:
      k_eff = min(k, own.size - 1)
      same[own] = own[_pad_table(_knn(x[own], None, k_eff), k)]
      same_count[own] = k_eff
    else:
      k_eff = min(k, max(pts.size - 1, 1))
      same[own] = pts[_pad_table(_knn_excluding_self(x[pts], x[own], pts, own, k_eff), k)]
      same_count[own] = k_eff
    if i == 0:
      prev[own] = same[own]
      prev_count[own] = same_count[own]
      continue
    before = targets[days[i - 1]]
    k_eff = min(k, before.size)
    prev[own] = before[_pad_table(_knn(x[before], x[own], k_eff), k)]
    prev_count[own] = k_eff
    has_prev[own] = True
  return WalkGraph(rows=rows, labels=np.asarray(labels, dtype=np.int32)[rows], time_index=t,
                   same=same, same_count=same_count, prev=prev, prev_count=prev_count,
                   has_prev=has_prev)


def spatial_graph(coords: np.ndarray, labels: np.ndarray, rows: np.ndarray,
                  spacing: float, k: int = SPATIAL_NEIGHBOURS,
                  radius: float = SPATIAL_RADIUS) -> WalkGraph:
  """Neighbour table of one split's spots: the k nearest within ``radius`` spacings.

  A spot with no neighbour in range (an isolated spot) steps to itself.
  """
  rows = np.asarray(rows, dtype=np.int64)
  if rows.size == 0:
    raise DataError("a split has no spatial spots; use more spots or a smaller "
                    "config.data.spatial.tile_size.")
  xy = np.asarray(coords, dtype=np.float64)[rows]
  k_eff = min(k, rows.size - 1)
  if k_eff == 0:
    table = np.zeros((1, k), dtype=np.int64)
    count = np.ones(1, dtype=np.int64)
  else:
    dist, idx = sp_spatial.cKDTree(xy).query(xy, k=k_eff + 1)
    dist, idx = dist[:, 1:], idx[:, 1:].astype(np.int64)             # drop self
    ok = dist <= radius * spacing                                      # sorted: valid first
    count = ok.sum(axis=1)
    isolated = count == 0
    idx[isolated, 0] = np.flatnonzero(isolated)
    count = np.maximum(count, 1)
    # Pad each row by repeating its valid entries.
    cols = np.arange(k)[None, :] % count[:, None]
    table = np.take_along_axis(idx, cols, axis=1)
  n = rows.size
  return WalkGraph(rows=rows, labels=np.asarray(labels, dtype=np.int32)[rows],
                   time_index=np.zeros(n, dtype=np.int32), same=table, same_count=count,
                   prev=table, prev_count=count, has_prev=np.zeros(n, dtype=bool))


def step_times(anchor_time: np.ndarray, length: int) -> np.ndarray:
  """Target time point per step: monotone from 0 to the anchor's time point.

  Step s of a walk ending on time point T gets floor(s * (T + 1) / L), clipped to
  T, so the steps are spread evenly over the days and the last ones sit on T.

  Returns:
    (n, length) int32.
  """
  s = np.arange(length, dtype=np.int64)[None, :]
  t = np.asarray(anchor_time, dtype=np.int64)[:, None]
  return np.minimum(s * (t + 1) // length, t).astype(np.int32)


def choose_anchors(graph: WalkGraph, n_per_class: Sequence[int] | np.ndarray,
                   rng: np.random.Generator, class_names: Sequence[str],
                   split_name: str = "", max_reuse: float = MAX_ANCHOR_REUSE) -> np.ndarray:
  """Picks anchors (local indices) per class; with replacement only when needed.

  Raises:
    DataError: when a class has no items in this split, or would need each one
      reused more than ``max_reuse`` times on average.
  """
  n_per_class = np.asarray(n_per_class, dtype=np.int64)
  if n_per_class.shape != (len(class_names),):
    raise DataError(f"n_per_class needs one count per class ({len(class_names)}), got "
                    f"shape {n_per_class.shape}.")
  order = np.argsort(graph.labels, kind="stable")
  bounds = np.searchsorted(graph.labels[order], np.arange(len(class_names) + 1))
  chosen = []
  for c, want in enumerate(n_per_class):   # one draw per class (a handful)
    if want == 0:
      continue
    pool = order[bounds[c]:bounds[c + 1]]
    if pool.size == 0 or want > max_reuse * pool.size:
      raise DataError(
          f"split {split_name!r} has {pool.size} item(s) of population {class_names[c]!r} "
          f"but {want} sequences of it are requested (at most {max_reuse:g} per item); "
          "lower config.data.sequences.per_population (or spatial_total), or use more cells "
          "(config.data.simulator.n_cells / a larger data set).")
    if want > pool.size:
      logging.warning("split %s: %d sequences of %s from %d anchors (anchors reused).",
                      split_name, want, class_names[c], pool.size)
    chosen.append(rng.choice(pool, size=int(want), replace=bool(want > pool.size)))
  if not chosen:
    return np.zeros(0, dtype=np.int64)
  return np.concatenate(chosen).astype(np.int64)


def _pick(table: np.ndarray, count: np.ndarray, cur: np.ndarray,
          rng: np.random.Generator) -> np.ndarray:
  """One uniform draw among the valid neighbours of each current item."""
  j = (rng.random(cur.size) * count[cur]).astype(np.int64)
  return table[cur, j]


def walk(graph: WalkGraph, anchors: np.ndarray, length: int,
         rng: np.random.Generator, temporal: bool = True, restart: float = 0.0) -> np.ndarray:
  """Walks backwards from the anchors and returns forward-ordered global rows.

  Temporal walks step to a previous-day neighbour whenever the current cell's day
  is later than the step's target day (see ``step_times``), otherwise to a
  same-day neighbour. If the target day has no cells in the split, the walk has
  already skipped to the nearest earlier populated day and stays there. Spatial
  walks always use the spot neighbour table; with ``restart`` > 0 a spatial step
  returns to the anchor with that probability instead (a random walk with
  restart: its visits concentrate within a few hops of the anchor, each hop's
  spots sampled again and again, rather than drifting away like a plain walk).

  Returns:
    (n, length) int64 global rows; column length - 1 is the anchor.
  """
  if length < 1:
    raise DataError(f"sequence length must be >= 1, got {length}; fix config.data.sequences.length.")
  anchors = np.asarray(anchors, dtype=np.int64)
  n = anchors.size
  path = np.empty((n, length), dtype=np.int64)
  cur = anchors.copy()
  path[:, -1] = cur
  target = step_times(graph.time_index[anchors], length) if temporal else None
  for s in range(length - 2, -1, -1):      # one vectorised update per step
    if not temporal:
      cur = _pick(graph.same, graph.same_count, cur, rng)
      if restart > 0:
        cur = np.where(rng.random(n) < restart, anchors, cur)
      path[:, s] = cur
      continue
    go_back = (graph.time_index[cur] > target[:, s]) & graph.has_prev[cur]
    nxt = np.where(go_back, _pick(graph.prev, graph.prev_count, cur, rng),
                   _pick(graph.same, graph.same_count, cur, rng))
    # A step that skips several days (length < number of days) keeps going back.
    while True:
      more = (graph.time_index[nxt] > target[:, s]) & graph.has_prev[nxt]
      if not more.any():
        break
      nxt[more] = _pick(graph.prev, graph.prev_count, nxt[more], rng)
    cur = nxt
    path[:, s] = cur
  return graph.rows[path]


def temporal_walks(graph: WalkGraph, n_per_class: Sequence[int] | np.ndarray, length: int,
                   rng: np.random.Generator, class_names: Sequence[str],
                   split_name: str = "") -> tuple[np.ndarray, np.ndarray]:
  """Lineage-consistent pseudo-trajectories of one split.

  Returns:
    source_index (n, length) int64 global cell rows, forward in time, ending at the
    anchor; y (n,) int32 the anchor's population.
  """
  anchors = choose_anchors(graph, n_per_class, rng, class_names, split_name)
  return walk(graph, anchors, length, rng, temporal=True), graph.labels[anchors]


def spatial_walks(graph: WalkGraph, n_per_class: Sequence[int] | np.ndarray, length: int,
                  rng: np.random.Generator, class_names: Sequence[str],
                  split_name: str = "") -> tuple[np.ndarray, np.ndarray]:
  """Random walks over one split's spot graph, ending at an anchor of the label.

  Returns:
    source_index (n, length) int64 global spot rows; y (n,) int32 the anchor's
    dominant population.
  """
  anchors = choose_anchors(graph, n_per_class, rng, class_names, split_name)
  return walk(graph, anchors, length, rng, temporal=False), graph.labels[anchors]


def time_feature(time_index: np.ndarray, n_times: int) -> np.ndarray:
  """Day scaled to [0, 1]: time index / (T - 1) (0 when there is a single day)."""
  return (np.asarray(time_index, dtype=np.float32) / max(n_times - 1, 1)).astype(np.float32)


def assemble_features(pcs: np.ndarray, source_index: np.ndarray, time_value: np.ndarray | float,
                      modality: int, out: np.ndarray | None = None) -> np.ndarray:
  """Per step: the PCA coordinates, then the day in [0, 1], then the modality flag.

  Args:
    pcs: (n_items, n_pcs) PCA coordinates of the cells (or spots).
    source_index: (N, L) rows into ``pcs``.
    time_value: (n_items,) per-item time feature (see ``time_feature``), a constant, or
      (N, L) per step (a spatial walk's distance to its end spot, ``data.regions``).
    modality: 0 single-cell temporal, 1 spatial.
    out: optional (N, L, n_pcs + 2) float32 array to fill (avoids a copy when
      several parts go into one dataset).

  Returns:
    (N, L, n_pcs + 2) float32.
  """
  pcs = np.asarray(pcs, dtype=np.float32)
  idx = np.asarray(source_index)
  n_pcs = pcs.shape[1]
  if out is None:
    out = np.empty(idx.shape + (n_pcs + 2,), dtype=np.float32)
  elif out.shape != idx.shape + (n_pcs + 2,):
    raise ValueError(f"out has shape {out.shape}, expected {idx.shape + (n_pcs + 2,)}.")
  # Gather in chunks of sequences so the temporary stays small at scale.
  chunk = max(1, (1 << 22) // max(1, idx[0].size * n_pcs)) if idx.shape[0] else 1
  for start in range(0, idx.shape[0], chunk):
    out[start:start + chunk, ..., :n_pcs] = pcs[idx[start:start + chunk]]
  if np.ndim(time_value) == 0:
    out[..., n_pcs] = float(time_value)
  elif np.ndim(time_value) == 2:
    out[..., n_pcs] = np.asarray(time_value, dtype=np.float32)
  else:
    out[..., n_pcs] = np.asarray(time_value, dtype=np.float32)[idx]
  out[..., n_pcs + 1] = float(modality)
  return out


def visible_steps(length: int, observed_fraction: float) -> int:
  """ceil(f * L) steps: the number the horizon leaves visible."""
  if not 0.0 < observed_fraction <= 1.0:
    raise DataError(
        f"observed_fraction must be in (0, 1], got {observed_fraction}; fix "
        "config.data.sequences.observed_fraction.")
  return max(1, math.ceil(observed_fraction * length - 1e-9))


def apply_horizon(x: np.ndarray, mask: np.ndarray,
                  observed_fraction: float) -> tuple[np.ndarray, np.ndarray]:
  """Keeps only the first ceil(f * L) steps visible, for early fate prediction.

  The hidden steps are zeroed in ``x`` (so no model can peek) and 0 in ``mask``.

  Returns:
    New (x, mask) arrays; the inputs are not modified.
  """
  length = x.shape[1]
  keep = np.arange(length) < visible_steps(length, observed_fraction)
  mask = np.asarray(mask, dtype=np.float32) * keep[None, :]
  x = np.where(mask[..., None] > 0, x, np.float32(0)).astype(np.float32)
  return x, mask


def time_permutation(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Per-row step permutations that shuffle each row's visible steps among themselves.

  Used as ``permute_steps(perm, ...)``: ``new[r, t] = old[r, perm[r, t]]``. Hidden
  positions map to themselves, and a visible position always receives a visible
  step (works for any mask, not only a prefix), so the mask is unchanged.

  Returns:
    (N, L) int64.
  """
  visible = np.asarray(mask) > 0
  n, length = visible.shape
  pos = np.broadcast_to(np.arange(length, dtype=np.float64), (n, length))
  # Visible positions first, in order / in random order; hidden ones after, in order.
  dst = np.argsort(np.where(visible, pos, length + pos), axis=1, kind="stable")
  src = np.argsort(np.where(visible, rng.random((n, length)), 2.0 + pos), axis=1, kind="stable")
  perm = np.empty((n, length), dtype=np.int64)
  np.put_along_axis(perm, dst, src, axis=1)
  return perm


def permute_steps(perm: np.ndarray, *arrays: np.ndarray) -> tuple[np.ndarray, ...]:
  """Reorders the steps (axis 1) of each array by ``perm``: ``out[r, t] = a[r, perm[r, t]]``.

  One function for every per-step array (features, source rows), so they can
  never be permuted differently. That is the time-shuffle ablation: if a model
  does as well on shuffled sequences, it was not using the temporal order.

  Returns:
    New arrays, one per input, of the same shapes.
  """
  perm = np.asarray(perm, dtype=np.int64)
  out = []
  for a in arrays:
    if a.shape[:2] != perm.shape:
      raise ValueError(f"array of shape {a.shape} does not match the permutation {perm.shape}.")
    idx = perm.reshape(perm.shape + (1,) * (a.ndim - 2))
    out.append(np.take_along_axis(a, idx, axis=1))
  return tuple(out)
