"""Walks: split-local, time-ordered, anchored, made of near neighbours; features and ablations."""
import math

import numpy as np
import pytest

from cardiac_jax.data import errors
from cardiac_jax.data import sequences

CLASSES = ("A", "B", "C")


def _cells(n_per_day=(60, 50, 2, 55, 70), seed=0):
  """A toy lineage: position drifts with the day; class = early / mid / late."""
  rng = np.random.default_rng(seed)
  t = np.repeat(np.arange(len(n_per_day)), n_per_day).astype(np.int32)
  pcs = np.concatenate([t[:, None] * 3.0, np.zeros((t.size, 3))], 1) + rng.normal(size=(t.size, 4))
  labels = np.minimum(t * len(CLASSES) // len(n_per_day), len(CLASSES) - 1).astype(np.int32)
  return pcs.astype(np.float32), t, labels


def _graph(k=5, rows=None):
  pcs, t, labels = _cells()
  if rows is None:
    rows = np.arange(0, t.size, 2)                # "this split": every other cell
  return sequences.temporal_graph(pcs, t, labels, rows, k), pcs, t, labels


def test_tables_stay_in_split_and_on_the_right_day():
  g, _, t, _ = _graph()
  n = g.size
  assert g.same.min() >= 0 and g.same.max() < n and g.prev.max() < n
  days = np.unique(g.time_index)
  prev_day = days[np.searchsorted(days, g.time_index) - 1]
  assert (g.has_prev == (g.time_index > days[0])).all()
  # Padding repeats valid entries, so every column obeys the day rule.
  assert (g.time_index[g.same] == g.time_index[:, None]).all()
  assert (g.time_index[g.prev[g.has_prev]] == prev_day[g.has_prev, None]).all()
  # The single cell of day 2 in this split has itself as its only same-day "neighbour".
  lone = np.flatnonzero(g.time_index == 2)
  assert lone.size == 1 and g.same_count[lone[0]] == 1
  # Same-day neighbours exclude the cell itself when it has company.
  assert (g.same[g.same_count > 1, 0] != np.flatnonzero(g.same_count > 1)).all()


def test_reference_points_cap_each_day_and_keep_small_days_whole():
  _, t, _ = _cells()
  pts = sequences.reference_points(t, 20, seed=3)
  assert (np.diff(pts) > 0).all()
  per_day = np.bincount(t[pts], minlength=t.max() + 1)
  np.testing.assert_array_equal(per_day, np.minimum(np.bincount(t), 20))
  np.testing.assert_array_equal(pts, sequences.reference_points(t, 20, seed=3))
  assert not np.array_equal(pts, sequences.reference_points(t, 20, seed=4))


def test_tables_point_only_into_the_reference_points_and_never_to_self():
  pcs, t, labels = _cells()
  rows = np.arange(t.size)
  pts = sequences.reference_points(t, 20, seed=0)
  g = sequences.temporal_graph(pcs, t, labels, rows, 5, points=pts)
  full = sequences.temporal_graph(pcs, t, labels, rows, 5)
  assert np.isin(g.same, pts).all() and np.isin(g.prev, pts).all()
  assert (g.time_index[g.same] == g.time_index[:, None]).all()
  assert (g.same_count == full.same_count).all() and (g.has_prev == full.has_prev).all()
  # A reference cell with company is not its own neighbour; the rest are its nearest.
  crowded = np.flatnonzero(g.same_count > 1)
  assert (g.same[crowded] != crowded[:, None]).all()
  cell = pts[t[pts] == 0][0]
  others = pts[(t[pts] == 0) & (pts != cell)]
  nearest = others[np.argsort(np.linalg.norm(pcs[others] - pcs[cell], axis=1))[:5]]
  assert set(g.same[cell]) == set(nearest)
  # Every point of every day: the same tables as without points.
  every = sequences.temporal_graph(pcs, t, labels, rows, 5, points=rows)
  np.testing.assert_array_equal(every.same, full.same)
  np.testing.assert_array_equal(every.prev, full.prev)


def test_walks_are_monotone_anchored_and_split_local():
  g, _, t, labels = _graph()
  rng = np.random.default_rng(0)
  src, y = sequences.temporal_walks(g, [30, 30, 30], 12, rng, CLASSES, "train")
  assert src.shape == (90, 12) and y.shape == (90,)
  assert np.isin(src, g.rows).all()
  days = t[src]
  assert (np.diff(days, axis=1) >= 0).all()
  np.testing.assert_array_equal(labels[src[:, -1]], y)
  np.testing.assert_array_equal(np.bincount(y, minlength=3), [30, 30, 30])
  # Walks ending late start on the first day: they cross the lineage.
  late = y == 2
  assert (days[late, 0] == 0).all()
  # Each step moves by at most one populated day.
  populated = np.unique(g.time_index)
  rank = np.searchsorted(populated, days)
  assert (np.diff(rank, axis=1) <= 1).all()


def test_steps_are_near_neighbours_not_random_cells():
  g, pcs, t, _ = _graph()
  rng = np.random.default_rng(1)
  src, _ = sequences.temporal_walks(g, [20, 20, 20], 16, rng, CLASSES)
  same_day = t[src[:, 1:]] == t[src[:, :-1]]
  step = np.linalg.norm(pcs[src[:, 1:]] - pcs[src[:, :-1]], axis=-1)[same_day]
  a, b = rng.choice(g.rows, 4000), rng.choice(g.rows, 4000)
  a, b = a[t[a] == t[b]], b[t[a] == t[b]]
  random_pairs = np.linalg.norm(pcs[a] - pcs[b], axis=-1)
  assert step.mean() < 0.7 * random_pairs.mean()


def test_missing_day_is_skipped_and_short_sequences_still_work():
  pcs, t, labels = _cells()
  rows = np.flatnonzero(t != 2)                   # this split has no day-2 cells
  g = sequences.temporal_graph(pcs, t, labels, rows, k=4)
  assert (g.time_index[g.prev[g.time_index == 3]] == 1).all()
  rng = np.random.default_rng(2)
  for length in (3, 20):                           # fewer steps than days, and more
    src, y = sequences.temporal_walks(g, [5, 5, 5], length, rng, CLASSES)
    assert (np.diff(t[src], axis=1) >= 0).all()
    assert (t[src] != 2).all()
    np.testing.assert_array_equal(labels[src[:, -1]], y)


def test_walks_are_deterministic_under_the_seed():
  g, _, _, _ = _graph()
  a = sequences.temporal_walks(g, [4, 4, 4], 10, np.random.default_rng(5), CLASSES)[0]
  b = sequences.temporal_walks(g, [4, 4, 4], 10, np.random.default_rng(5), CLASSES)[0]
  c = sequences.temporal_walks(g, [4, 4, 4], 10, np.random.default_rng(6), CLASSES)[0]
  np.testing.assert_array_equal(a, b)
  assert (a != c).any()


def test_anchors_without_replacement_when_possible_and_errors_when_too_few():
  g, _, _, _ = _graph()
  rng = np.random.default_rng(0)
  n_a = int(np.sum(g.labels == 0))
  anchors = sequences.choose_anchors(g, [n_a, 0, 0], rng, CLASSES)
  assert np.unique(anchors).size == n_a
  with pytest.raises(errors.DataError, match=r"split 'val' has \d+ item\(s\) of population 'A'"):
    sequences.choose_anchors(g, [n_a * 11, 0, 0], rng, CLASSES, "val")
  g_only_a = sequences.temporal_graph(*_cells()[:3], rows=np.arange(10), k=3)
  with pytest.raises(errors.DataError, match="per_population"):
    sequences.choose_anchors(g_only_a, [1, 1, 0], rng, CLASSES, "test")


def test_spatial_walks_follow_adjacent_spots():
  ix, iy = np.meshgrid(np.arange(20), np.arange(20))
  coords = np.stack([(ix + 0.5 * (iy % 2)).ravel(), (iy * np.sqrt(3) / 2).ravel()], 1) * 50.0
  labels = (coords[:, 0] > 500).astype(np.int32)
  rows = np.flatnonzero(coords[:, 1] < 600)
  g = sequences.spatial_graph(coords, labels, rows, spacing=50.0)
  assert (g.same_count == np.minimum(g.same_count, 6)).all() and g.same_count.max() == 6
  src, y = sequences.spatial_walks(g, [7, 9], 10, np.random.default_rng(0), ("L", "R"))
  assert np.isin(src, rows).all()
  np.testing.assert_array_equal(labels[src[:, -1]], y)
  hop = np.linalg.norm(np.diff(coords[src], axis=1), axis=-1)
  assert (hop <= 1.5 * 50.0 + 1e-6).all() and (hop > 0).all()


def test_assemble_features_layout():
  pcs = np.arange(12, dtype=np.float32).reshape(4, 3)
  src = np.array([[0, 1, 3], [2, 2, 0]])
  tval = sequences.time_feature(np.array([0, 1, 2, 3]), 4)
  x = sequences.assemble_features(pcs, src, tval, modality=0)
  assert x.shape == (2, 3, 5) and x.dtype == np.float32
  np.testing.assert_array_equal(x[..., :3], pcs[src])
  np.testing.assert_allclose(x[0, :, 3], [0, 1 / 3, 1])
  assert (x[..., 4] == 0).all()
  xs = sequences.assemble_features(pcs, src, sequences.SPATIAL_TIME, modality=1)
  assert (xs[..., 3] == 1.0).all() and (xs[..., 4] == 1).all()


@pytest.mark.parametrize("f", [0.1, 0.25, 0.5, 0.99, 1.0])
def test_apply_horizon_hides_the_tail(f):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(5, 16, 3)).astype(np.float32) + 5
  mask = np.ones((5, 16), np.float32)
  xh, mh = sequences.apply_horizon(x, mask, f)
  n = math.ceil(f * 16)
  assert (mh[:, :n] == 1).all() and (mh[:, n:] == 0).all()
  np.testing.assert_array_equal(xh[:, :n], x[:, :n])
  assert (xh[:, n:] == 0).all()
  assert (mask == 1).all()                         # inputs untouched


@pytest.mark.parametrize("f", [0.0, -0.5, 1.5])
def test_apply_horizon_rejects_bad_fractions(f):
  with pytest.raises(errors.DataError, match="observed_fraction"):
    sequences.apply_horizon(np.zeros((1, 4, 2), np.float32), np.ones((1, 4), np.float32), f)


def test_time_permutation_shuffles_visible_steps_only_and_moves_arrays_together():
  rng = np.random.default_rng(0)
  x = np.broadcast_to(np.arange(10, dtype=np.float32)[None, :, None], (50, 10, 2)).copy()
  src = np.broadcast_to(np.arange(100, 110)[None, :], (50, 10)).copy()
  mask = np.ones((50, 10), np.float32)
  mask[:, 6:] = 0
  mask[0, 2] = 0                                   # a hole: not a prefix
  perm = sequences.time_permutation(mask, rng)
  out, out_src = sequences.permute_steps(perm, x, src)
  for r in range(50):
    vis = mask[r] > 0
    np.testing.assert_array_equal(np.sort(out[r, vis, 0]), x[r, vis, 0])
    np.testing.assert_array_equal(out[r, ~vis], x[r, ~vis])
  assert np.mean(out[:, :6, 0] != x[:, :6, 0]) > 0.5
  np.testing.assert_array_equal(out_src - 100, out[..., 0])   # features moved with their rows
  np.testing.assert_array_equal(perm, sequences.time_permutation(mask, np.random.default_rng(0)))
  with pytest.raises(ValueError, match="permutation"):
    sequences.permute_steps(perm, x[:, :5])
