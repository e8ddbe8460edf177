"""The streaming paths that keep the full-size GSE175634 build within memory (issue 14).

A small file in the deposited layout (integer counts, genes x cells MatrixMarket)
goes through convert -> backed load -> prepare -> preprocessing fit with the
chunk sizes shrunk so every streaming loop takes many steps. The results must
equal the in-memory path, and the traced peak allocation must stay near one
copy of the counts where the in-memory path needs two.
"""
import gzip
import tracemalloc

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

from cardiac_jax import config_lib
from cardiac_jax.data import geo
from cardiac_jax.data import ingest
from cardiac_jax.data import preprocess
from cardiac_jax.data import simulator


@pytest.fixture(scope="module")
def geo_h5ad(tmp_path_factory):
  """(converted h5ad path, simulated AnnData) through a genes x cells integer .mtx.gz."""
  root = tmp_path_factory.mktemp("realsize")
  cells = simulator.simulate_cells(n_cells=700, n_genes=1_000, n_donors=3, seed=5,
                                   mean_library_size=6_000.0)
  files = geo.write_geo(cells, root / "geo", orientation="genes_x_cells")
  with gzip.open(files["counts_mtx"], "rt") as fh:
    banner, _, size = fh.readline(), fh.readline(), fh.readline()
  assert banner.split()[3] == "integer"
  assert [int(v) for v in size.split()] == [cells.n_vars, cells.n_obs, cells.X.nnz]
  path = geo.convert_geo(**files, out_h5ad=root / "cells.h5ad", chunk_entries=20_000)
  return path, cells


def _data_cfg():
  cfg = config_lib.base_config().data
  cfg.preprocess.n_hvg = 60
  cfg.preprocess.n_pcs = 5
  cfg.preprocess.pca_max_cells = 150
  return cfg


def _traced_peak(fn):
  """(result, peak bytes numpy and Python allocated while ``fn`` ran)."""
  tracemalloc.start()
  try:
    out = fn()
    return out, tracemalloc.get_traced_memory()[1]
  finally:
    tracemalloc.stop()


def _csr_bytes(m):
  return m.data.nbytes + m.indices.nbytes + m.indptr.nbytes


def test_converted_file_is_int32_cells_x_genes(geo_h5ad):
  path, cells = geo_h5ad
  backed = ingest.load_h5ad(path, backed=True)
  try:
    assert backed.isbacked and backed.shape == cells.shape
    assert backed.X.dtype == np.int32 and backed.X.group["indices"].dtype == np.int32
  finally:
    backed.file.close()


def test_backed_prepare_equals_in_memory(geo_h5ad, monkeypatch):
  path, cells = geo_h5ad
  cfg = _data_cfg()
  assert (cells.obs["type"] == "UNK").any()      # drop_labels: the row-subset path runs
  monkeypatch.setattr(ingest, "_SPARSE_CHUNK_VALUES", 997)
  want = ingest.prepare_cells(ingest.load_h5ad(path), cfg)
  backed = ingest.load_h5ad(path, backed=True)
  try:
    got = ingest.prepare_cells(backed, cfg)
  finally:
    backed.file.close()
  assert got.counts.dtype == np.float32 and got.counts.indices.dtype == np.int32
  assert got.counts.has_canonical_format and got.counts.shape == want.counts.shape
  for name in ("data", "indices", "indptr"):
    np.testing.assert_array_equal(getattr(got.counts, name), getattr(want.counts, name))
  np.testing.assert_array_equal(got.labels, want.labels)
  np.testing.assert_array_equal(got.obs_names, want.obs_names)


def test_backed_prepare_holds_one_copy(geo_h5ad, monkeypatch):
  path, _ = geo_h5ad
  cfg = _data_cfg()
  monkeypatch.setattr(ingest, "_SPARSE_CHUNK_VALUES", 997)

  def backed():
    adata = ingest.load_h5ad(path, backed=True)
    try:
      return ingest.prepare_cells(adata, cfg)
    finally:
      adata.file.close()

  prepared, peak_backed = _traced_peak(backed)
  _, peak_memory = _traced_peak(lambda: ingest.prepare_cells(ingest.load_h5ad(path), cfg))
  size = _csr_bytes(prepared.counts)
  # In memory: the file's int32 matrix and the float32 copy at once; backed: the copy.
  assert peak_memory > 1.8 * size
  assert peak_backed < 1.35 * size


def test_backed_csc_file_falls_back_to_memory(geo_h5ad, tmp_path):
  path, _ = geo_h5ad
  adata = ingest.load_h5ad(path)
  csc = adata.copy()
  csc.X = sp.csc_matrix(adata.X)
  csc.write_h5ad(tmp_path / "csc.h5ad")
  backed = ingest.load_h5ad(tmp_path / "csc.h5ad", backed=True)
  try:
    got = ingest.prepare_cells(backed, _data_cfg())
  finally:
    backed.file.close()
  want = ingest.prepare_cells(adata, _data_cfg())
  assert (got.counts != want.counts).nnz == 0


def test_blockwise_fit_matches_one_block_and_copies_nothing(geo_h5ad, monkeypatch):
  path, _ = geo_h5ad
  cfg = _data_cfg()
  counts = ingest.prepare_cells(ingest.load_h5ad(path), cfg)
  x, genes = counts.counts, counts.gene_names
  train = np.arange(0, x.shape[0], 3)        # a third of the cells: never the others
  one = preprocess.fit_preprocessor(x, genes, train, cfg.preprocess)
  monkeypatch.setattr(preprocess, "_STATS_CHUNK_VALUES", 2_000)
  assert len(preprocess._row_blocks(x, train)) > 20   # pylint: disable=protected-access
  many, peak = _traced_peak(lambda: preprocess.fit_preprocessor(x, genes, train,
                                                                cfg.preprocess))
  np.testing.assert_array_equal(many.gene_names, one.gene_names)
  np.testing.assert_allclose(many.mean, one.mean, rtol=1e-6)
  np.testing.assert_allclose(many.scale, one.scale, rtol=1e-6)
  np.testing.assert_allclose(np.abs(many.components), np.abs(one.components), atol=1e-4)
  # The training rows are a third of the matrix; the old whole-copy fit held them all.
  assert peak < 0.15 * _csr_bytes(x)
  # Only the training rows are read: other rows changed, the same fit.
  poisoned = x.copy()
  others = np.setdiff1d(np.arange(x.shape[0]), train)
  poisoned[others[:50]] = poisoned[others[:50]] * 7.0
  again = preprocess.fit_preprocessor(poisoned, genes, train, cfg.preprocess)
  np.testing.assert_array_equal(again.mean, many.mean)
  np.testing.assert_array_equal(again.components, many.components)
