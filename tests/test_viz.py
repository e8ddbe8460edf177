"""Tests of the exploration plots: the right artists, real PNGs, data that matches the dataset."""
import os
import sys
import types

import anndata as ad
from matplotlib import collections as mcoll
from matplotlib import lines as mlines
from matplotlib.figure import Figure
import numpy as np
import pytest

from cardiac_jax import config_lib
from cardiac_jax import viz
from cardiac_jax.data.errors import DataError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CLASSES = ("IPSC", "MES", "CM")
DAYS = ("day0", "day1", "day3", "day5")


def _assert_png(path):
  assert path.is_file()
  assert path.read_bytes()[:8] == PNG_MAGIC
  assert not [p for p in os.listdir(path.parent) if p.endswith(".tmp")], "temp file left"


def _scatters(ax):
  return [c for c in ax.collections if isinstance(c, mcoll.PathCollection)]


@pytest.fixture(name="cells")
def _cells():
  rng = np.random.default_rng(0)
  n = 300
  labels = rng.integers(0, 2, n)          # class 2 ("CM") deliberately absent
  days = rng.integers(0, len(DAYS), n)
  coords = rng.normal(size=(n, 5)).astype(np.float32)
  return coords, labels, days


def test_embedding_2d_is_the_first_two_components(cells):
  coords, _, _ = cells
  emb = viz.embedding_2d(coords)
  assert emb.shape == (coords.shape[0], 2) and emb.dtype == np.float32
  np.testing.assert_array_equal(emb, coords[:, :2])
  with pytest.raises(DataError, match="n_pcs"):
    viz.embedding_2d(coords[:, :1])


def test_plot_embedding_one_scatter_per_present_category(cells, tmp_path):
  coords, labels, days = cells
  emb = viz.embedding_2d(coords)
  fig = viz.plot_embedding(emb, labels, CLASSES, "by population", path=tmp_path / "a.png")
  assert isinstance(fig, Figure)
  ax = fig.axes[0]
  assert len(_scatters(ax)) == 2     # CM has no cells: no empty legend entry
  legend = [t.get_text() for t in ax.get_legend().get_texts()]
  assert legend == [f"IPSC ({np.sum(labels == 0)})", f"MES ({np.sum(labels == 1)})"]
  assert sum(len(c.get_offsets()) for c in _scatters(ax)) == len(labels)
  _assert_png(tmp_path / "a.png")
  by_day = viz.plot_embedding(emb, days, DAYS, "by day", cmap="viridis")
  assert len(_scatters(by_day.axes[0])) == len(DAYS)
  # A continuous map still gives distinct colours per day.
  colours = {tuple(c.get_facecolor()[0]) for c in _scatters(by_day.axes[0])}
  assert len(colours) == len(DAYS)


def test_plot_embedding_subsamples_large_inputs(cells):
  coords, labels, _ = cells
  fig = viz.plot_embedding(coords[:, :2], labels, CLASSES, max_points=50)
  assert sum(len(c.get_offsets()) for c in _scatters(fig.axes[0])) == 50


def test_plot_embedding_rejects_mismatched_rows(cells):
  coords, labels, _ = cells
  with pytest.raises(DataError, match="rows"):
    viz.plot_embedding(coords[:, :2], labels[:-1], CLASSES)


def test_composition_fractions():
  time_index = np.array([0, 0, 0, 1, 1, 3])
  labels = np.array([0, 0, 1, 2, 2, 1])
  frac = viz.composition(time_index, labels, 4, 3)
  np.testing.assert_allclose(frac, [[2 / 3, 1 / 3, 0], [0, 0, 1], [0, 0, 0], [0, 1, 0]])


def test_plot_composition_stacks_to_one(cells, tmp_path):
  _, labels, days = cells
  fig = viz.plot_composition(days, labels, DAYS, CLASSES, path=tmp_path / "c.png")
  ax = fig.axes[0]
  assert len(ax.containers) == len(CLASSES)          # one stacked layer per class
  heights = np.array([[p.get_height() for p in bars] for bars in ax.containers])
  assert heights.shape == (len(CLASSES), len(DAYS))
  np.testing.assert_allclose(heights.sum(axis=0), 1.0)
  np.testing.assert_allclose(heights[2], 0.0)        # the absent class
  tops = np.array([[p.get_y() + p.get_height() for p in bars] for bars in ax.containers])
  np.testing.assert_allclose(tops[-1], 1.0)          # really stacked, not overlaid
  _assert_png(tmp_path / "c.png")


def test_plot_trajectories_draws_each_walk_to_its_anchor(cells, tmp_path):
  coords, labels, _ = cells
  emb = coords[:, :2]
  rng = np.random.default_rng(1)
  walks = rng.integers(0, len(emb), size=(3, 7))
  walk_labels = np.array([0, 1, 1])
  fig = viz.plot_trajectories(emb, walks, walk_labels, CLASSES, background_labels=labels,
                              path=tmp_path / "t.png")
  ax = fig.axes[0]
  lines = [ln for ln in ax.get_lines() if isinstance(ln, mlines.Line2D)]
  assert len(lines) == len(walks)
  for ln, rows in zip(lines, walks):
    np.testing.assert_allclose(np.c_[ln.get_xdata(), ln.get_ydata()], emb[rows])
  background, starts, anchors = _scatters(ax)
  assert len(background.get_offsets()) == len(emb)
  np.testing.assert_allclose(starts.get_offsets(), emb[walks[:, 0]])
  np.testing.assert_allclose(anchors.get_offsets(), emb[walks[:, -1]])
  assert [t.get_text() for t in ax.get_legend().get_texts()] == ["IPSC", "MES"]
  _assert_png(tmp_path / "t.png")


def test_plot_trajectories_rejects_rows_outside_the_coordinates(cells):
  coords, _, _ = cells
  walks = np.array([[0, 1, len(coords)]])
  with pytest.raises(DataError, match="outside"):
    viz.plot_trajectories(coords[:, :2], walks, np.array([0]), CLASSES)


def test_plot_spatial(tmp_path):
  xy = np.stack(np.meshgrid(np.arange(10.0), np.arange(8.0)), -1).reshape(-1, 2)
  labels = (xy[:, 0] > 4).astype(np.int32) * 2   # IPSC left, CM right, no MES
  walk = np.array([[0, 1, 2, 12]])
  fig = viz.plot_spatial(xy, labels, CLASSES, walk_rows=walk, path=tmp_path / "s.png")
  ax = fig.axes[0]
  scat = _scatters(ax)
  assert len(scat) == 2
  assert sorted(len(c.get_offsets()) for c in scat) == sorted(np.bincount(labels)[[0, 2]])
  assert len(ax.get_lines()) == 1
  assert ax.get_aspect() == 1.0
  _assert_png(tmp_path / "s.png")


def test_example_rows_per_class_and_candidates():
  labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
  only = np.array([1, 1, 1, 1, 1, 0, 0, 0, 1], bool)
  rows = viz.example_rows(labels, per_class=2, seed=3, candidates=only)
  assert np.bincount(labels[rows]).tolist() == [2, 2, 1]
  assert only[rows].all()
  assert len(set(rows.tolist())) == len(rows)
  np.testing.assert_array_equal(rows, viz.example_rows(labels, 2, 3, only))
  assert (np.diff(labels[rows]) >= 0).all()          # grouped by class


def test_plots_leave_pyplot_alone(cells):
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  before = plt.get_fignums()
  coords, labels, days = cells
  viz.plot_embedding(coords[:, :2], labels, CLASSES)
  viz.plot_composition(days, labels, DAYS, CLASSES)
  assert plt.get_fignums() == before


def test_load_cells_and_features_reproduces_the_sequence_features():
  config = config_lib.preset("debug")
  data = viz.load_cells_and_features(config)
  ds, n_pcs = data.dataset, data.pcs.shape[1]
  assert n_pcs == config.data.preprocess.n_pcs
  assert data.pcs.shape[0] == data.cells.n_cells == ds.meta["n_cells"]
  cell_steps = ds.modality == 0
  np.testing.assert_allclose(data.pcs[ds.source_index[cell_steps]],
                             ds.x[cell_steps][..., :n_pcs], atol=1e-5)
  # Each temporal walk ends on a cell of its label.
  np.testing.assert_array_equal(data.cells.labels[ds.source_index[cell_steps][:, -1]],
                                ds.y[cell_steps])
  assert data.spots is not None and data.spots.n_spots == ds.meta["n_spots"]
  spot_steps = ds.modality == 1
  spot_pcs = data.preprocessor.transform(data.spots.counts, data.spots.gene_names)
  np.testing.assert_allclose(spot_pcs[ds.source_index[spot_steps]],
                             ds.x[spot_steps][..., :n_pcs], atol=1e-5)


def test_most_confused_orders_off_diagonal_errors():
  cm = [[5, 3, 0],
        [1, 9, 4],
        [0, 0, 7]]
  pairs = viz.most_confused(cm, CLASSES, top=5)
  assert pairs == [("MES", "CM", 4, 4 / 14), ("IPSC", "MES", 3, 3 / 8), ("MES", "IPSC", 1, 1 / 14)]
  assert viz.most_confused(cm, CLASSES, top=1) == pairs[:1]
  assert viz.most_confused(np.diag([3, 4, 5]), CLASSES) == []
  with pytest.raises(DataError, match="shape"):
    viz.most_confused(cm, CLASSES[:2])


class _FakeUMAP:
  """Stands in for umap.UMAP: records its inputs, returns a known embedding."""
  fits = []

  def __init__(self, random_state=None):
    self.random_state = random_state

  def fit_transform(self, x):
    _FakeUMAP.fits.append((self.random_state, np.array(x)))
    return np.arange(2 * len(x), dtype=np.float64).reshape(-1, 2) / 7.0


def _predicted(coords):
  return ad.AnnData(X=np.zeros((coords.shape[0], 3), np.float32),
                    obs={"confidence": np.linspace(0, 1, coords.shape[0])},
                    obsm={"X_pca_cardiac_jax": coords})


def test_embedding_2d_for_uses_umap_when_installed(cells, monkeypatch):
  coords, _, _ = cells
  fake = types.ModuleType("umap")
  fake.UMAP = _FakeUMAP
  monkeypatch.setitem(sys.modules, "umap", fake)
  monkeypatch.setattr(_FakeUMAP, "fits", [])
  adata = _predicted(coords)
  want = np.arange(2 * len(coords), dtype=np.float64).reshape(-1, 2) / 7.0
  emb, name = viz.embedding_2d_for(adata, seed=7)
  assert name == "UMAP"
  np.testing.assert_allclose(emb, want, rtol=1e-6)
  (state, fitted), = _FakeUMAP.fits
  assert state == 7
  np.testing.assert_array_equal(fitted, coords)     # all PCs, not just two
  stored = adata.obsm["X_umap_cardiac_jax"]
  assert stored.dtype == np.float32 and stored.shape == (len(coords), 2)
  again, name = viz.embedding_2d_for(adata, method="umap")
  assert name == "UMAP" and len(_FakeUMAP.fits) == 1, "the stored UMAP is reused"
  np.testing.assert_array_equal(again, stored)
  pcs, name = viz.embedding_2d_for(adata, method="pca")
  assert name == "PC"
  np.testing.assert_array_equal(pcs, coords[:, :2])
  fig = viz.plot_obs_embedding(adata, "confidence")
  assert fig.axes[0].get_xlabel() == "UMAP 1"


def test_embedding_2d_for_without_umap_learn(cells, monkeypatch):
  coords, _, _ = cells
  monkeypatch.setitem(sys.modules, "umap", None)     # import umap -> ImportError
  adata = _predicted(coords)
  with pytest.raises(DataError, match=r"method='umap' needs umap-learn"):
    viz.embedding_2d_for(adata, method="umap")
  emb, name = viz.embedding_2d_for(adata)            # auto falls back to PCA
  assert name == "PC" and "X_umap_cardiac_jax" not in adata.obsm
  np.testing.assert_array_equal(emb, coords[:, :2])
  with pytest.raises(DataError, match="obsm has no 'X_pca_other'"):
    viz.embedding_2d_for(adata, basis="X_pca_other")
