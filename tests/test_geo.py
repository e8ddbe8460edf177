"""Tests for cardiac_jax.data.geo: GEO MatrixMarket round trip and corrupt-input errors."""
import gzip

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from cardiac_jax.data import geo
from cardiac_jax.data import simulator
from cardiac_jax.data.errors import DataError


@pytest.fixture(scope="module")
def cells():
  adata = simulator.simulate_cells(n_cells=300, n_genes=70, n_donors=3, seed=2)
  adata.obs["sample"] = np.arange(adata.n_obs) % 7
  return adata


@pytest.fixture(scope="module")
def geo_files(cells, tmp_path_factory):
  return geo.write_geo(cells, tmp_path_factory.mktemp("geo"))


def _read_lines(path):
  with gzip.open(path, "rt") as fh:
    return fh.read().splitlines()


def _write_lines(path, lines):
  with gzip.open(path, "wt") as fh:
    fh.write("\n".join(lines) + "\n")


def _check_same(converted, cells):
  assert converted.shape == cells.shape
  np.testing.assert_array_equal(converted.obs_names, cells.obs_names)
  np.testing.assert_array_equal(converted.var_names, cells.var_names)
  assert converted.X.format == "csr" and converted.X.has_canonical_format
  assert (converted.X != cells.X).nnz == 0
  for column in ("diffday", "type", "individual", "sample"):
    np.testing.assert_array_equal(converted.obs[column].astype(str).to_numpy(),
                                  cells.obs[column].astype(str).to_numpy())
  np.testing.assert_allclose(converted.obs["dpt_pseudotime"], cells.obs["dpt_pseudotime"],
                             rtol=1e-12)


@pytest.mark.parametrize("orientation", ["genes_x_cells", "cells_x_genes"])
def test_round_trip(cells, tmp_path, orientation):
  paths = geo.write_geo(cells, tmp_path / "geo", orientation=orientation)
  assert set(paths) == {"counts_mtx", "cell_indices", "gene_indices", "cell_metadata"}
  assert _read_lines(paths["cell_indices"])[0] == "cell_index\tcell_name"
  n_rows, n_cols, _ = map(int, _read_lines(paths["counts_mtx"])[2].split())
  assert (n_rows, n_cols) == ((cells.n_vars, cells.n_obs) if orientation == "genes_x_cells"
                              else (cells.n_obs, cells.n_vars))
  # Small chunks so entries of one cell span chunks and the scatter pass is exercised.
  out = geo.convert_geo(**paths, out_h5ad=tmp_path / "out" / "cells.h5ad", chunk_entries=997)
  assert out.exists() and not list(out.parent.glob("*.tmp"))
  _check_same(ad.read_h5ad(out), cells)


def test_shuffled_entries_and_shuffled_index_files(cells, geo_files, tmp_path):
  """Entry order and index-table row order must not matter; indices name the position."""
  lines = _read_lines(geo_files["counts_mtx"])
  rng = np.random.default_rng(0)
  body = np.asarray(lines[3:])
  paths = dict(geo_files, counts_mtx=tmp_path / "c.mtx.gz", cell_indices=tmp_path / "ci.tsv.gz")
  _write_lines(paths["counts_mtx"], lines[:3] + body[rng.permutation(len(body))].tolist())
  index_lines = _read_lines(geo_files["cell_indices"])
  rows = np.asarray(index_lines[1:])
  _write_lines(paths["cell_indices"], index_lines[:1] + rows[rng.permutation(len(rows))].tolist())
  out = geo.convert_geo(**paths, out_h5ad=tmp_path / "x.h5ad", chunk_entries=500)
  _check_same(ad.read_h5ad(out), cells)


def test_metadata_subset_drops_cells(cells, geo_files, tmp_path):
  meta = pd.read_csv(geo_files["cell_metadata"], sep="\t")
  paths = dict(geo_files, cell_metadata=tmp_path / "meta.tsv.gz")
  meta.iloc[::2].to_csv(paths["cell_metadata"], sep="\t", index=False)
  converted = ad.read_h5ad(geo.convert_geo(**paths, out_h5ad=tmp_path / "x.h5ad"))
  assert converted.n_obs == len(meta.iloc[::2])
  np.testing.assert_array_equal(converted.obs_names, cells.obs_names[::2])
  assert (converted.X != cells.X[::2]).nnz == 0


def _corrupt(geo_files, tmp_path, edit):
  lines = _read_lines(geo_files["counts_mtx"])
  path = tmp_path / "bad.mtx.gz"
  _write_lines(path, edit(lines))
  return dict(geo_files, counts_mtx=path)


@pytest.mark.parametrize("edit, message", [
    (lambda l: l[:-10], "truncated"),
    (lambda l: l + l[-1:], "more entries than"),
    (lambda l: ["%%MatrixMarket matrix array integer general"] + l[1:], "coordinate"),
    (lambda l: ["hello"] + l[1:], "MatrixMarket"),
    (lambda l: l[:2] + ["12 x"] + l[3:], "malformed size line"),
    (lambda l: l[:3] + ["100000 1 5"] + l[4:], "outside"),
    (lambda l: l[:3] + [l[3].rsplit(" ", 1)[0] + " 2.5"] + l[4:], "non-integer"),
    (lambda l: l[:2] + ["69 " + l[2].split(" ", 1)[1]] + l[3:], "do not belong together"),
])
def test_corrupt_counts(geo_files, tmp_path, edit, message):
  with pytest.raises(DataError, match=message):
    geo.convert_geo(**_corrupt(geo_files, tmp_path, edit), out_h5ad=tmp_path / "x.h5ad")
  assert not (tmp_path / "x.h5ad").exists()


def test_truncated_gzip_stream(geo_files, tmp_path):
  data = geo_files["counts_mtx"].read_bytes()
  path = tmp_path / "cut.mtx.gz"
  path.write_bytes(data[:len(data) // 2])
  with pytest.raises(DataError, match="truncated"):
    geo.convert_geo(**dict(geo_files, counts_mtx=path), out_h5ad=tmp_path / "x.h5ad")


def test_missing_file(geo_files, tmp_path):
  with pytest.raises(DataError, match="cell metadata .* not found"):
    geo.convert_geo(**dict(geo_files, cell_metadata=tmp_path / "nope.tsv.gz"),
                    out_h5ad=tmp_path / "x.h5ad")


def test_bad_index_file(geo_files, tmp_path):
  lines = _read_lines(geo_files["gene_indices"])
  path = tmp_path / "genes.tsv.gz"
  _write_lines(path, lines[:-1])   # one gene short: neither orientation fits
  with pytest.raises(DataError, match="do not belong together"):
    geo.convert_geo(**dict(geo_files, gene_indices=path), out_h5ad=tmp_path / "x.h5ad")
  _write_lines(path, lines[:1] + ["7\tGENEX"] + lines[2:])   # index 1 missing, 7 repeated
  with pytest.raises(DataError, match="not a permutation"):
    geo.convert_geo(**dict(geo_files, gene_indices=path), out_h5ad=tmp_path / "x.h5ad")


def test_square_matrix_needs_orientation(tmp_path):
  x = np.arange(16).reshape(4, 4) % 3
  square = ad.AnnData(X=sp.csr_matrix(x),
                      obs=pd.DataFrame({"type": list("abcd")}, index=[f"c{i}" for i in range(4)]),
                      var=pd.DataFrame(index=[f"g{i}" for i in range(4)]))
  paths = geo.write_geo(square, tmp_path, orientation="cells_x_genes")
  with pytest.raises(DataError, match="square"):
    geo.convert_geo(**paths, out_h5ad=tmp_path / "x.h5ad")
  out = geo.convert_geo(**paths, out_h5ad=tmp_path / "x.h5ad", orientation="cells_x_genes")
  np.testing.assert_array_equal(ad.read_h5ad(out).X.toarray(), x)
