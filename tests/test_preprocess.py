"""Tests for cardiac_jax.data.preprocess: fitted on training rows only, aligned by name."""
import dataclasses

import ml_collections
import numpy as np
import pytest
import scipy.sparse as sp

from cardiac_jax.data import preprocess
from cardiac_jax.data import simulator
from cardiac_jax.data.errors import DataError


@pytest.fixture(scope="module")
def data():
  adata = simulator.simulate_cells(n_cells=900, n_genes=150, n_donors=3, seed=3)
  counts = sp.csr_matrix(adata.X, dtype=np.float32)
  genes = adata.var_names.to_numpy().astype(str)
  train = np.flatnonzero(np.random.default_rng(0).random(adata.n_obs) < 0.6)
  return counts, genes, train


@pytest.fixture
def cfg():
  return ml_collections.ConfigDict(dict(target_sum=1e4, n_hvg=60, n_pcs=8, max_value=10.0))


@pytest.fixture(scope="module")
def fitted(data):
  counts, genes, train = data
  cfg = ml_collections.ConfigDict(dict(target_sum=1e4, n_hvg=60, n_pcs=8, max_value=10.0))
  return preprocess.fit_preprocessor(counts, genes, train, cfg)


def _assert_same(a, b):
  for field in dataclasses.fields(preprocess.Preprocessor):
    np.testing.assert_array_equal(getattr(a, field.name), getattr(b, field.name),
                                  err_msg=field.name)


def test_fit_shapes_and_selection(fitted, data):
  counts, genes, train = data
  assert fitted.gene_names.shape == (60,) and fitted.components.shape == (60, 8)
  assert fitted.components.dtype == np.float32
  # Selected genes keep the input order; orthonormal axes; variance ratios decreasing.
  position = {g: i for i, g in enumerate(genes)}
  assert np.all(np.diff([position[g] for g in fitted.gene_names]) > 0)
  np.testing.assert_allclose(fitted.components.T @ fitted.components, np.eye(8), atol=1e-5)
  assert np.all(np.diff(fitted.explained_variance_ratio) <= 1e-7)
  assert 0 < fitted.explained_variance_ratio.sum() < 1
  # Marker genes of the simulated lineage are the most variable ones.
  assert {"POU5F1", "TNNT2", "COL3A1"} <= set(fitted.gene_names)
  # Training features come out centred with the fitted scaling.
  z = fitted.transform(counts[train], genes)
  assert z.shape == (len(train), 8) and z.dtype == np.float32
  np.testing.assert_allclose(z.mean(0), 0, atol=1e-3 * np.abs(z).max())


def test_fit_depends_only_on_training_rows(fitted, data, cfg):
  counts, genes, train = data
  other = np.setdiff1d(np.arange(counts.shape[0]), train)
  changed = counts.tolil()
  rng = np.random.default_rng(1)
  changed[other] = rng.poisson(50.0, (len(other), counts.shape[1])).astype(np.float32)
  changed = changed.tocsr()
  assert (changed != counts).nnz > 0
  _assert_same(preprocess.fit_preprocessor(changed, genes, train, cfg), fitted)
  mask = np.zeros(counts.shape[0], bool)
  mask[train] = True
  _assert_same(preprocess.fit_preprocessor(counts.toarray(), genes, mask, cfg), fitted)


def test_transform_deterministic_chunked_and_dense(fitted, data):
  counts, genes, _ = data
  once = fitted.transform(counts, genes)
  np.testing.assert_array_equal(once, fitted.transform(counts, genes))
  np.testing.assert_allclose(fitted.transform(counts, genes, chunk_rows=97), once,
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(fitted.transform(counts.toarray(), genes), once, rtol=1e-5,
                             atol=1e-5)
  np.testing.assert_allclose(fitted.transform(counts.tocsc(), genes), once, rtol=1e-5,
                             atol=1e-5)


def test_transform_aligns_genes_by_name(fitted, data):
  counts, genes, _ = data
  perm = np.random.default_rng(2).permutation(len(genes))
  np.testing.assert_allclose(fitted.transform(counts[:, perm], genes[perm]),
                             fitted.transform(counts, genes), rtol=1e-5, atol=1e-5)


def test_missing_genes_are_set_to_training_mean(fitted, data):
  counts, genes, _ = data
  # Drop a non-HVG gene and two HVGs; library sizes change only through the columns
  # that remain, so compare against a reference built from the same columns.
  drop = np.isin(genes, fitted.gene_names[:2])
  sub, sub_genes = counts[:, ~drop], genes[~drop]
  got = fitted.transform(sub, sub_genes)
  logged = preprocess.log_normalise(sub, fitted.target_sum).toarray()
  z = np.zeros((sub.shape[0], len(fitted.gene_names)), np.float32)
  cols = [list(sub_genes).index(g) for g in fitted.gene_names[2:]]
  z[:, 2:] = (logged[:, cols] - fitted.mean[2:]) / fitted.scale[2:]
  want = (np.clip(z, -fitted.max_value, fitted.max_value) - fitted.pca_mean) @ fitted.components
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
  assert preprocess.shared_gene_count(fitted, sub_genes) == len(fitted.gene_names) - 2


def test_npz_round_trip(fitted, data, tmp_path):
  counts, genes, _ = data
  path = fitted.save(tmp_path / "pp" / "preprocessor.npz")
  assert path.exists() and not list(path.parent.glob("*.tmp"))
  loaded = preprocess.Preprocessor.load(path)
  _assert_same(loaded, fitted)
  np.testing.assert_array_equal(loaded.transform(counts[:50], genes),
                                fitted.transform(counts[:50], genes))
  with np.load(path, allow_pickle=False) as f:   # no object arrays inside
    assert all(f[k].dtype != object for k in f.files)


def test_too_few_shared_genes(fitted):
  names = np.asarray(["X1", "X2"] + list(fitted.gene_names[:5]))
  assert preprocess.shared_gene_count(fitted, names, min_shared_genes=5) == 5
  with pytest.raises(DataError, match="only 5 of the 60 model genes"):
    preprocess.shared_gene_count(fitted, names, min_shared_genes=6)


def test_pca_subsample_bounded(data, cfg):
  counts, genes, train = data
  cfg.pca_max_cells = 100
  pp = preprocess.fit_preprocessor(counts, genes, train, cfg)
  assert pp.components.shape == (60, 8)
  np.testing.assert_allclose(pp.components.T @ pp.components, np.eye(8), atol=1e-5)


def test_bad_inputs(data, cfg):
  counts, genes, train = data
  with pytest.raises(DataError, match="gene names"):
    preprocess.fit_preprocessor(counts, genes[:-1], train, cfg)
  cfg.n_pcs = 500
  with pytest.raises(DataError, match="lower config.data.preprocess.n_pcs"):
    preprocess.fit_preprocessor(counts, genes, train, cfg)
  with pytest.raises(DataError, match="no training rows"):
    preprocess.fit_preprocessor(counts, genes, np.zeros(0, int), cfg)
