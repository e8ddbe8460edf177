"""Leakage-free train / validation / test splits of cells and spatial spots.

Splits are decided on cells (or spots) *before* any sequence is built, so a
cell can only ever appear in sequences of one split. With donors, whole iPSC
lines are held out; with spatial data, whole square tiles of the section are,
because neighbouring spots share cells and signal, and held-out spots on a tile
edge next to another split's spots are left out (``buffer_spots``).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import spatial as sp_spatial

from cardiac_jax.data.errors import DataError

SPLITS = ("train", "val", "test")
SPLIT_IDS = {name: i for i, name in enumerate(SPLITS)}   # the values of a split array

# Random restarts of the greedy donor assignment; cheap (donors are few).
_GROUP_RESTARTS = 32
# Pairwise donor swaps are searched only below this many donors (G^2 work).
_MAX_GROUPS_FOR_SWAPS = 300


def _check_fractions(fractions: Sequence[float]) -> np.ndarray:
  f = np.asarray(fractions, dtype=np.float64)
  if f.shape != (len(SPLITS),):
    raise DataError(
        f"split fractions must have {len(SPLITS)} entries ({'/'.join(SPLITS)}), got "
        f"{tuple(fractions)}; set config.data.split.fractions to e.g. (0.65, 0.25, 0.10).")
  if np.any(f <= 0) or not np.isclose(f.sum(), 1.0, atol=1e-6):
    raise DataError(
        f"split fractions must be positive and sum to 1, got {tuple(fractions)}; "
        "fix config.data.split.fractions.")
  return f


def _check_labels(labels: np.ndarray, name: str = "labels") -> np.ndarray:
  labels = np.asarray(labels)
  if labels.ndim != 1:
    raise DataError(f"{name} must be 1-D (one per item), got shape {labels.shape}.")
  if labels.size == 0:
    raise DataError(f"{name} is empty: there is nothing to split; check the input data.")
  return labels


def allocate(n: int | np.ndarray, fractions: Sequence[float]) -> np.ndarray:
  """Splits integer totals by fractions (largest remainder), each split >= 1 when n >= 3.

  Args:
    n: a total or an array of totals (e.g. items per class).
    fractions: one fraction per split, summing to 1.

  Returns:
    int64 array of shape n.shape + (len(fractions),) whose last axis sums to n.
  """
  f = np.asarray(fractions, dtype=np.float64)
  n = np.asarray(n, dtype=np.int64)
  exact = n[..., None] * f
  counts = np.floor(exact).astype(np.int64)
  short = n - counts.sum(-1)
  # Hand the remaining units to the largest fractional parts (ties: earlier split).
  order = np.argsort(-(exact - counts), axis=-1, kind="stable")
  ranks = np.argsort(order, axis=-1, kind="stable")
  counts += ranks < short[..., None]
  # Every split gets at least one item when there are enough: take from the largest.
  flat = counts.reshape(-1, f.size)
  n_flat = n.reshape(-1)
  for _ in range(f.size):
    need = (flat == 0) & (n_flat >= f.size)[:, None]
    if not need.any():
      break
    rows, cols = np.nonzero(need)
    rows, first = np.unique(rows, return_index=True)
    cols = cols[first]
    donors = np.argmax(flat[rows], axis=1)
    flat[rows, donors] -= 1
    flat[rows, cols] += 1
  return flat.reshape(counts.shape)


def _stratified(labels: np.ndarray, fractions: np.ndarray,
                rng: np.random.Generator) -> np.ndarray:
  """Stratified assignment, vectorised: random rank within class vs cumulative quotas."""
  classes, inv = np.unique(labels, return_inverse=True)
  per_class = np.bincount(inv, minlength=classes.size)
  quota = np.cumsum(allocate(per_class, fractions), axis=1)           # (C, S)
  order = np.lexsort((rng.random(labels.size), inv))                   # by class, random within
  inv_sorted = inv[order]
  starts = np.concatenate([[0], np.cumsum(per_class)[:-1]])
  rank = np.arange(labels.size) - starts[inv_sorted]
  split_sorted = (rank[:, None] >= quota[inv_sorted, :-1]).sum(axis=1)
  out = np.empty(labels.size, dtype=np.int8)
  out[order] = split_sorted
  return out


def _group_cost(assigned: np.ndarray, target: np.ndarray, scale: np.ndarray,
                n_groups_per_split: np.ndarray, need_all: bool) -> np.ndarray:
  """Squared relative error per class, summed; a big penalty for an empty split.

  Broadcasts over leading axes: assigned (..., S, C), n_groups_per_split (..., S).
  """
  cost = (((assigned - target) / scale) ** 2).sum(axis=(-2, -1))
  if need_all:
    cost = cost + 1e6 * (n_groups_per_split == 0).sum(-1)
  return cost


def _grouped(labels: np.ndarray, groups: np.ndarray, fractions: np.ndarray,
             rng: np.random.Generator) -> np.ndarray:
  """Assigns whole groups (donors) to splits to match per-class fractions.

  Greedy assignment in several random orders (the first by descending size), each
  polished by single moves and pairwise swaps; the best result wins.
  """
  _, g_inv = np.unique(groups, return_inverse=True)
  _, c_inv = np.unique(labels, return_inverse=True)
  n_g, n_c, n_s = g_inv.max() + 1, c_inv.max() + 1, fractions.size
  counts = np.zeros((n_g, n_c), dtype=np.float64)
  np.add.at(counts, (g_inv, c_inv), 1.0)
  totals = counts.sum(0)
  target = fractions[:, None] * totals[None, :]                        # (S, C)
  scale = np.maximum(totals, 1.0)[None, :]
  need_all = n_g >= n_s
  eye = np.eye(n_s)

  def cost_of(assign: np.ndarray) -> float:
    onehot = eye[assign]                                               # (G, S)
    return float(_group_cost(onehot.T @ counts, target, scale, onehot.sum(0), need_all))

  def polish(assign: np.ndarray) -> np.ndarray:
    for _ in range(10 * n_g):
      onehot = eye[assign]
      agg = onehot.T @ counts                                          # (S, C)
      n_per = onehot.sum(0)
      current = _group_cost(agg, target, scale, n_per, need_all)
      # Single moves: group g from its split to split s.
      moved = (agg[None, None] - onehot[:, None, :, None] * counts[:, None, None, :]
               + eye[None, :, :, None] * counts[:, None, None, :])    # (G, S, S, C)
      n_moved = n_per[None, None] - onehot[:, None, :] + eye[None]
      move_cost = _group_cost(moved, target, scale, n_moved, need_all)  # (G, S)
      best_move = np.unravel_index(np.argmin(move_cost), move_cost.shape)
      best = move_cost[best_move]
      swap = None
      if n_g <= _MAX_GROUPS_FOR_SWAPS:
        # Swaps of groups i and j between their splits.
        diff = counts[:, None, :] - counts[None, :, :]                 # (G, G, C): i leaves, j enters
        delta = (eye[assign][None, :, :, None] - eye[assign][:, None, :, None]) * diff[:, :, None, :]
        swap_cost = _group_cost(agg[None, None] + delta, target, scale,
                                np.broadcast_to(n_per, (n_g, n_g, n_s)), need_all)
        idx = np.unravel_index(np.argmin(swap_cost), swap_cost.shape)
        if swap_cost[idx] < best:
          best, swap = swap_cost[idx], idx
      if best >= current - 1e-12:
        return assign
      assign = assign.copy()
      if swap is not None:
        i, j = swap
        assign[i], assign[j] = assign[j], assign[i]
      else:
        assign[best_move[0]] = best_move[1]
    return assign

  sizes = counts.sum(1)
  best_assign, best_cost = None, np.inf
  for restart in range(_GROUP_RESTARTS):
    if restart == 0:
      order = np.lexsort((rng.random(n_g), -sizes))
    else:
      order = rng.permutation(n_g)
    assign = np.zeros(n_g, dtype=np.int64)
    agg = np.zeros((n_s, n_c))
    n_per = np.zeros(n_s)
    for g in order:
      trial = agg[None] + eye[:, :, None] * counts[g][None, None, :]   # (S, S, C)
      # Per-class error only here: an empty-split penalty would push the first
      # (largest) donor into the smallest split. polish() then fills empty splits.
      c = _group_cost(trial, target, scale, n_per[None] + eye, False)
      s = int(np.argmin(c))
      assign[g] = s
      agg += eye[s][:, None] * counts[g][None, :]
      n_per[s] += 1
    assign = polish(assign)
    cost = cost_of(assign)
    if cost < best_cost - 1e-12:
      best_assign, best_cost = assign, cost
  return best_assign[g_inv].astype(np.int8)


def split_cells(labels: np.ndarray, fractions: Sequence[float] = (0.65, 0.25, 0.10),
                seed: int = 0, groups: np.ndarray | None = None) -> np.ndarray:
  """Assigns each cell to train (0), val (1) or test (2), stratified by label.

  Without groups every class is split by ``fractions`` exactly up to rounding, and
  every class with >= 3 cells gets at least one cell in each split. With groups
  (a donor per cell) whole donors go to one split, so a held-out iPSC line never
  reaches training; the per-class fractions are then matched as well as the donor
  sizes allow.

  Args:
    labels: (n,) class id (or any sortable label) per cell.
    fractions: train / val / test fractions, positive, summing to 1.
    seed: the assignment is a deterministic function of the inputs and this seed.
    groups: optional (n,) group (donor) per cell.

  Returns:
    (n,) int8 split index into ``SPLITS``.
  """
  labels = _check_labels(labels)
  f = _check_fractions(fractions)
  rng = np.random.default_rng(seed)
  if groups is None:
    return _stratified(labels, f, rng)
  groups = np.asarray(groups)
  if groups.shape != labels.shape:
    raise DataError(
        f"groups has shape {groups.shape} but labels has {labels.shape}; pass one donor per "
        "cell or set config.data.split.group_by_donor = False.")
  n_groups = np.unique(groups).size
  if n_groups < len(SPLITS):
    raise DataError(
        f"only {n_groups} donor(s) found but {len(SPLITS)} splits need at least one each; "
        "set config.data.split.group_by_donor = False or use data with more donors.")
  return _grouped(labels, groups, f, rng)


def spot_spacing(coords: np.ndarray) -> float:
  """Median nearest-neighbour distance: the spot pitch of the array."""
  coords = np.asarray(coords, dtype=np.float64)
  if coords.ndim != 2 or coords.shape[1] != 2 or coords.shape[0] < 2:
    raise DataError(
        f"spot coordinates must be (n >= 2, 2), got shape {coords.shape}; check "
        "obsm['spatial'] of the spatial data.")
  if not np.all(np.isfinite(coords)):
    raise DataError("spot coordinates contain NaN or Inf; drop those spots first.")
  dist, _ = sp_spatial.cKDTree(coords).query(coords, k=2)
  positive = dist[:, 1][dist[:, 1] > 0]
  if positive.size == 0:
    raise DataError("all spots share one coordinate; spatial coordinates look broken.")
  return float(np.median(positive))


def spatial_tiles(coords: np.ndarray, tile_size: float,
                  spacing: float | None = None) -> np.ndarray:
  """Groups spots into square tiles of ``tile_size`` spot spacings per side.

  Tiles are the unit of spatial splitting: neighbouring spots are correlated, so
  splitting spot by spot would leak the tissue context across splits.

  Returns:
    (n,) int64 tile id, compact (0 .. n_tiles - 1).
  """
  if not tile_size > 0:
    raise DataError(f"tile_size must be > 0, got {tile_size}; fix config.data.spatial.tile_size.")
  coords = np.asarray(coords, dtype=np.float64)
  side = float(tile_size) * (spot_spacing(coords) if spacing is None else float(spacing))
  cell = np.floor((coords - coords.min(axis=0)) / side).astype(np.int64)
  _, ids = np.unique(cell, axis=0, return_inverse=True)
  return ids.reshape(-1).astype(np.int64)


def split_spots(labels: np.ndarray, tiles: np.ndarray,
                fractions: Sequence[float] = (0.65, 0.25, 0.10), seed: int = 0) -> np.ndarray:
  """Assigns whole tiles to splits, stratified by each tile's dominant label.

  Tiles are stratified as units, so the fractions hold for tiles (and for spots
  up to the smaller edge tiles).

  Returns:
    (n,) int8 split index per spot.
  """
  labels = _check_labels(labels)
  tiles = np.asarray(tiles)
  if tiles.shape != labels.shape:
    raise DataError(f"tiles has shape {tiles.shape} but labels has {labels.shape}; "
                    "compute tiles with spatial_tiles(coords, tile_size) on the same spots.")
  _, t_inv = np.unique(tiles, return_inverse=True)
  classes, c_inv = np.unique(labels, return_inverse=True)
  table = np.zeros((t_inv.max() + 1, classes.size), dtype=np.int64)
  np.add.at(table, (t_inv, c_inv), 1)
  dominant = np.argmax(table, axis=1)
  tile_split = split_cells(dominant, fractions, seed)
  return tile_split[t_inv]


# Split id of spots left out of every split by ``buffer_spots``.
UNUSED = -1


def buffer_spots(coords: np.ndarray, spot_split: np.ndarray, buffer_spacings: float,
                 spacing: float | None = None) -> np.ndarray:
  """Leaves out the validation / test spots that touch another split's spots.

  Whole tiles keep most of a held-out region away from training, but spots on
  a tile's edge are still neighbours (correlated tissue, shared cells) of spots
  across the edge. Every validation spot within ``buffer_spacings`` spot
  spacings of a training spot, and every test spot within that distance of a
  training spot or of a validation spot that was kept, becomes ``UNUSED``
  (-1): no split's graph or anchors see it. Training spots are never removed,
  so training keeps all its data. Afterwards no two used spots of different
  splits are within the buffer.

  Args:
    coords: (n, 2) spot coordinates.
    spot_split: (n,) split id per spot (0/1/2, e.g. from ``split_spots``).
    buffer_spacings: buffer width in spot spacings; 0 turns the buffer off.
    spacing: the spot pitch (default ``spot_spacing(coords)``).

  Returns:
    (n,) int8 split id per spot, ``UNUSED`` for buffered spots.
  """
  if not buffer_spacings >= 0:
    raise DataError(f"buffer_spacings must be >= 0, got {buffer_spacings}; fix "
                    "config.data.spatial.buffer_spacings.")
  out = np.asarray(spot_split).astype(np.int8, copy=True)
  if out.ndim != 1 or out.shape[0] != np.shape(coords)[0]:
    raise DataError(f"spot_split has shape {out.shape} but there are {np.shape(coords)[0]} "
                    "spots; pass one split id per spot.")
  if buffer_spacings == 0:
    return out
  spacing = spot_spacing(coords) if spacing is None else float(spacing)
  # Slightly above the buffer, so spots at exactly the buffer distance on a lattice
  # (rounding either way) are buffered too.
  radius = float(buffer_spacings) * spacing * (1 + 1e-6)
  pairs = sp_spatial.cKDTree(np.asarray(coords, np.float64)).query_pairs(
      radius, output_type="ndarray")
  if pairs.size == 0:
    return out
  # Both directions of every close pair: (spot, its neighbour).
  a = np.concatenate([pairs[:, 0], pairs[:, 1]])
  b = np.concatenate([pairs[:, 1], pairs[:, 0]])
  train, val, test = range(len(SPLITS))

  def near(own: int, other: int) -> np.ndarray:
    """Spots of split ``own`` with a spot of split ``other`` (as it is now) in range."""
    return a[(out[a] == own) & (out[b] == other)]

  out[near(val, train)] = UNUSED          # before the test pass: dropped val spots don't count
  out[np.union1d(near(test, train), near(test, val))] = UNUSED
  return out


def counts_table(y: np.ndarray, split: np.ndarray, class_names: Sequence[str]) -> dict:
  """Sequences per split x class, the meta's "counts" (every builder's, fate's too)."""
  return {name: {c: int(np.sum((split == s) & (y == i))) for i, c in enumerate(class_names)}
          for s, name in enumerate(SPLITS)}


# Slices of the rotated split (``rotation_split``): fractions are taken in twentieths.
ROTATION_SLICES = 20


def rotations(fractions: Sequence[float]) -> int:
  """How many rotations of ``rotation_split`` test every unit exactly once."""
  f = _check_fractions(fractions)
  n_test = int(round(f[2] * ROTATION_SLICES))
  if n_test < 1 or ROTATION_SLICES % n_test:
    raise DataError(f"a rotated split needs a test fraction that divides 1 in twentieths "
                    f"(0.05, 0.1, 0.2, 0.25, 0.5), got {f[2]}; fix config.data.split.fractions.")
  return ROTATION_SLICES // n_test


def rotation_split(labels: np.ndarray, fractions: Sequence[float], seed: int,
                   rotation: int) -> np.ndarray:
  """Train / val / test per unit (a clone), stratified by label, as rotation ``rotation``.

  Units are dealt to ``ROTATION_SLICES`` stratified slices (a function of the
  labels and ``seed`` only); rotation r tests slices [r * t, (r + 1) * t), validates
  the next ``fractions[1]`` of them and trains on the rest, so over
  ``rotations(fractions)`` rotations every unit is tested exactly once: small
  test sets (150 clones) then add up to one test of every clone.

  Returns:
    (n,) int8 split index into ``SPLITS``.
  """
  labels = _check_labels(labels)
  f = _check_fractions(fractions)
  k = rotations(fractions)
  if not 0 <= int(rotation) < k:
    raise DataError(f"rotation {rotation} is out of range: split fractions {tuple(fractions)} "
                    f"give {k} rotations (0..{k - 1}); fix config.data.clonal.rotation.")
  n_test = ROTATION_SLICES // k
  n_val = max(1, int(round(f[1] * ROTATION_SLICES)))
  if n_test + n_val >= ROTATION_SLICES:
    raise DataError(f"split fractions {tuple(fractions)} leave no training slice; fix "
                    "config.data.split.fractions.")
  # Dealt round-robin within each class from a random start: every slice holds each
  # class's count / ROTATION_SLICES, up to one unit.
  rng = np.random.default_rng(seed)
  classes, inv = np.unique(labels, return_inverse=True)
  order = np.lexsort((rng.random(labels.size), inv))
  starts = np.concatenate([[0], np.cumsum(np.bincount(inv))[:-1]])
  rank = np.empty(labels.size, np.int64)
  rank[order] = np.arange(labels.size) - starts[inv[order]]
  slices = (rank + rng.integers(0, ROTATION_SLICES, classes.size)[inv]) % ROTATION_SLICES
  offset = (slices - int(rotation) * n_test) % ROTATION_SLICES
  return np.where(offset < n_test, 2, np.where(offset < n_test + n_val, 1, 0)).astype(np.int8)
