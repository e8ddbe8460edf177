"""Splits: stratified fractions, donor purity, tile purity, determinism."""
import numpy as np
import pytest

from cardiac_jax.data import errors
from cardiac_jax.data import splits

FRACTIONS = (0.65, 0.25, 0.10)


def _labels(n=6000, n_classes=6, seed=0):
  rng = np.random.default_rng(seed)
  # Unequal class sizes, as in the real data.
  p = np.arange(1, n_classes + 1, dtype=float)
  return rng.choice(n_classes, size=n, p=p / p.sum())


def test_allocate_sums_and_minimum_one():
  n = np.array([0, 1, 2, 3, 4, 10, 1000])
  counts = splits.allocate(n, FRACTIONS)
  np.testing.assert_array_equal(counts.sum(1), n)
  assert (counts[n >= 3] >= 1).all()
  np.testing.assert_array_equal(counts[-1], [650, 250, 100])


def test_split_cells_stratified_fractions():
  labels = _labels()
  split = splits.split_cells(labels, FRACTIONS, seed=3)
  assert split.dtype == np.int8 and split.shape == labels.shape
  assert set(np.unique(split)) == {0, 1, 2}
  for c in np.unique(labels):
    got = np.bincount(split[labels == c], minlength=3) / np.sum(labels == c)
    np.testing.assert_allclose(got, FRACTIONS, atol=0.01)


def test_small_classes_reach_every_split():
  labels = np.array([0, 0, 0, 1, 1, 1, 1, 2] + [3] * 50)
  split = splits.split_cells(labels, FRACTIONS, seed=0)
  for c in (0, 1, 3):
    assert set(split[labels == c]) == {0, 1, 2}


def test_split_cells_deterministic_under_seed():
  labels = _labels()
  a = splits.split_cells(labels, FRACTIONS, seed=1)
  np.testing.assert_array_equal(a, splits.split_cells(labels, FRACTIONS, seed=1))
  assert (a != splits.split_cells(labels, FRACTIONS, seed=2)).any()


def test_donor_groups_are_pure_and_fractions_close():
  rng = np.random.default_rng(0)
  labels = _labels(12000)
  # 19 donors of unequal size, as in GSE175634.
  sizes = rng.dirichlet(np.full(19, 3.0))
  donors = rng.choice(19, size=labels.size, p=sizes)
  split = splits.split_cells(labels, FRACTIONS, seed=0, groups=donors)
  for d in np.unique(donors):
    assert np.unique(split[donors == d]).size == 1, f"donor {d} spans splits"
  assert set(np.unique(split)) == {0, 1, 2}
  for c in np.unique(labels):
    got = np.bincount(split[labels == c], minlength=3) / np.sum(labels == c)
    np.testing.assert_allclose(got, FRACTIONS, atol=0.06)
  again = splits.split_cells(labels, FRACTIONS, seed=0, groups=donors)
  np.testing.assert_array_equal(split, again)


def test_too_few_donors_and_bad_fractions_raise():
  labels = _labels(100)
  with pytest.raises(errors.DataError, match="donor"):
    splits.split_cells(labels, FRACTIONS, groups=np.zeros(100))
  with pytest.raises(errors.DataError, match="sum to 1"):
    splits.split_cells(labels, (0.5, 0.3, 0.3))
  with pytest.raises(errors.DataError, match="3 entries"):
    splits.split_cells(labels, (0.5, 0.5))


def _hex(nx=40, ny=30, pitch=100.0):
  ix, iy = np.meshgrid(np.arange(nx), np.arange(ny))
  x = (ix + 0.5 * (iy % 2)) * pitch
  y = iy * pitch * np.sqrt(3) / 2
  return np.stack([x.ravel(), y.ravel()], 1).astype(np.float32)


def test_spatial_tiles_are_square_blocks_of_spacings():
  coords = _hex()
  tiles = splits.spatial_tiles(coords, tile_size=8)
  assert tiles.dtype == np.int64 and tiles.min() == 0
  assert splits.spot_spacing(coords) == pytest.approx(100.0, rel=1e-4)
  for t in np.unique(tiles):
    span = np.ptp(coords[tiles == t], axis=0)
    assert (span < 8 * 100.0).all()
  # Interior tiles hold about 8 x 8 / (sqrt(3)/2) spots.
  assert np.median(np.bincount(tiles)) == pytest.approx(8 * 8 / (np.sqrt(3) / 2), rel=0.15)


def test_split_spots_keeps_tiles_whole_and_stratifies():
  coords = _hex(60, 60)
  tiles = splits.spatial_tiles(coords, tile_size=4)
  # Regions of dominant labels: two halves.
  labels = (coords[:, 0] > np.median(coords[:, 0])).astype(np.int32)
  split = splits.split_spots(labels, tiles, FRACTIONS, seed=0)
  for t in np.unique(tiles):
    assert np.unique(split[tiles == t]).size == 1, f"tile {t} spans splits"
  for c in (0, 1):
    got = np.bincount(split[labels == c], minlength=3) / np.sum(labels == c)
    np.testing.assert_allclose(got, FRACTIONS, atol=0.07)
  np.testing.assert_array_equal(split, splits.split_spots(labels, tiles, FRACTIONS, seed=0))


def test_buffer_spots_drops_held_out_spots_next_to_other_splits():
  # A row of spots one spacing apart: 4 train, 4 val, 4 test.
  coords = np.stack([np.arange(12.0), np.zeros(12)], axis=1)
  split = np.repeat([0, 1, 2], 4).astype(np.int8)
  u = splits.UNUSED
  np.testing.assert_array_equal(splits.buffer_spots(coords, split, 1.0),
                                [0, 0, 0, 0, u, 1, 1, 1, u, 2, 2, 2])
  np.testing.assert_array_equal(splits.buffer_spots(coords, split, 2.0),
                                [0, 0, 0, 0, u, u, 1, 1, u, u, 2, 2])
  np.testing.assert_array_equal(splits.buffer_spots(coords, split, 0.0), split)
  # Test spots are kept clear of the val spots that remain, not of dropped ones.
  split2 = np.array([0, 0, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2], np.int8)
  np.testing.assert_array_equal(splits.buffer_spots(coords, split2, 1.0),
                                [0, 0, u, 2, 2, 2, 2, 2, 2, 2, 2, 2])
  with pytest.raises(errors.DataError, match="buffer_spacings"):
    splits.buffer_spots(coords, split, -1.0)
