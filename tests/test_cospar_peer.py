"""cospar_peer: pins, held-out clone masking, clone scores, the venv build; CoSpar end to end."""
import os
import pathlib

import numpy as np
import pytest
import scipy.sparse as sp

from cardiac_jax.data.errors import DataError
from cardiac_jax.studies import cospar_peer

# Read at collection, before conftest points CARDIAC_JAX_CACHE at a temp folder: the
# end-to-end test uses the venv a user built (or CARDIAC_JAX_COSPAR_VENV), never builds one.
_VENV = pathlib.Path(os.environ.get("CARDIAC_JAX_COSPAR_VENV") or cospar_peer.venv_path())


def test_requirements_are_pinned_parsed_and_explained():
  from packaging.requirements import Requirement  # pylint: disable=g-import-not-at-top
  reqs = [Requirement(r) for r in cospar_peer.requirements()]
  names = [r.name.lower().replace("_", "-") for r in reqs]
  assert len(set(names)) == len(names)
  for req, (_, why) in zip(reqs, cospar_peer.REQUIREMENTS):
    (spec,) = req.specifier
    assert spec.operator == "==", req
    assert why.strip(), req
  pins = {n: next(iter(r.specifier)).version for n, r in zip(names, reqs)}
  assert pins["cospar"] == "0.5.0"
  assert pins["anndata"].startswith("0.10.")           # cospar 0.5.0: anndata < 0.11
  assert {"scanpy", "scikit-learn", "pynndescent", "scipy", "numpy"} <= set(pins)
  assert len(cospar_peer.requirements_hash()) == 16


def test_mask_clones_removes_exactly_the_held_out_clones():
  rng = np.random.default_rng(0)
  n_cells, n_clones = 60, 12
  column = rng.integers(0, n_clones, n_cells)
  x = sp.csr_matrix((np.ones(n_cells), (np.arange(n_cells), column)), shape=(n_cells, n_clones))
  x[5, 3] = 1.0                                         # a cell with two barcodes
  names = np.asarray([f"c{i:02d}" for i in range(n_clones)])
  held = ["c03", "c07", "c10"]
  kept, kept_names = cospar_peer.mask_clones(x, names, held)
  assert kept.shape == (n_cells, n_clones - 3)
  assert list(kept_names) == [n for n in names if n not in held]
  keep_cols = [i for i, n in enumerate(names) if n not in held]
  np.testing.assert_array_equal(kept.toarray(), x.toarray()[:, keep_cols])
  held_only = np.isin(column, [3, 7, 10]) & (np.arange(n_cells) != 5)
  assert kept[held_only].nnz == 0                       # their cells stay, unlabelled
  assert kept[~held_only].sum(axis=1).min() >= 1        # everyone else keeps a barcode
  assert kept[5].nnz == 1                               # cell 5 keeps its training barcode
  with pytest.raises(DataError, match="not columns"):
    cospar_peer.mask_clones(x, names, ["c03", "nope"])
  same, _ = cospar_peer.mask_clones(x, names, [])
  np.testing.assert_array_equal(same.toarray(), x.toarray())


def test_clone_of_cells_first_barcode_or_empty():
  x = sp.csr_matrix(np.array([[0, 1, 0], [0, 0, 0], [1, 0, 1], [0, 0, 1]], np.float32))
  assert list(cospar_peer.clone_of_cells(x, ["a", "b", "c"])) == ["b", "", "a", "c"]


def test_clone_scores_mean_over_each_clones_early_cells():
  probs = np.array([[0.9, 0.1], [0.5, 0.5], [0.2, 0.8], [0.4, 0.6], [0.0, 1.0], [1.0, 0.0]])
  clone = np.array(["a", "a", "b", "b", "", "b"])
  time = np.array([0, 1, 0, 2, 0, 1])
  names, scores, n = cospar_peer.clone_scores(probs, clone)
  assert list(names) == ["a", "b"] and list(n) == [2, 3]
  np.testing.assert_allclose(scores, [[0.7, 0.3], [1.6 / 3, 1.4 / 3]])
  names, scores, n = cospar_peer.clone_scores(probs, clone, cell_time=time, up_to=1,
                                              clones=["b", "z", "a"])
  assert list(names) == ["b", "z", "a"] and list(n) == [2, 0, 2]
  np.testing.assert_allclose(scores[0], [0.6, 0.4])
  assert np.isnan(scores[1]).all()
  np.testing.assert_allclose(scores[2], [0.7, 0.3])
  with pytest.raises(DataError, match="cell_time"):
    cospar_peer.clone_scores(probs, clone, up_to=1)


def test_normalise_fate_values_uniform_where_the_map_gives_nothing():
  probs, informative = cospar_peer.normalise_fate_values(
      np.array([[2.0, 6.0], [0.0, 0.0], [np.nan, 1.0]]))
  np.testing.assert_allclose(probs, [[0.25, 0.75], [0.5, 0.5], [0.0, 1.0]])
  assert list(informative) == [True, False, True]


def test_ensure_venv_failed_build_leaves_nothing(tmp_path, monkeypatch):
  calls = []

  def fake_run(cmd, log, what):
    calls.append(what)
    if "pip" in what:
      raise DataError("pip install of the CoSpar pins failed (simulated)")
    pathlib.Path(cmd[-1]).mkdir(parents=True)          # "python -m venv <tmp>"

  monkeypatch.setattr(cospar_peer, "_run", fake_run)
  with pytest.raises(DataError, match="simulated"):
    cospar_peer.ensure_venv(tmp_path)
  assert calls == ["creating the venv", "pip install of the CoSpar pins"]
  assert not cospar_peer.venv_path(tmp_path).exists()
  assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_ensure_venv_refuses_a_folder_it_did_not_build(tmp_path):
  cospar_peer.venv_path(tmp_path).mkdir(parents=True)
  with pytest.raises(DataError, match="rm -r"):
    cospar_peer.ensure_venv(tmp_path)


def _tiny_clonal_h5ad(path, n_clones=140, seed=0):
  """~1,500 cells: clones with a fate bias seen on d2/d4 (faintly) and d8 (as CM/CF)."""
  import anndata as ad  # pylint: disable=g-import-not-at-top
  import pandas as pd  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  n_genes = 300
  base = rng.gamma(2.0, 1.0, n_genes)
  direction = np.zeros(n_genes)
  direction[:40], direction[40:80] = 1.0, -1.0
  rows, day, state, clone = [], [], [], []
  for c in range(n_clones):
    bias = rng.uniform(-1, 1)
    for d, n, strength in (("d2", 3, 0.35), ("d4", 3, 0.6), ("d8", 5, 1.5)):
      for _ in range(rng.poisson(n)):
        fate_b = rng.random() < 1 / (1 + np.exp(-3 * bias))
        level = strength * (bias if d != "d8" else (1.0 if fate_b else -1.0))
        rows.append(rng.poisson(base * np.exp(level * direction / 2)))
        day.append(d)
        state.append(("CF" if fate_b else "CM") if d == "d8" else "PROG")
        clone.append(c)
  n = len(rows)
  x_clone = sp.csr_matrix((np.ones(n, np.float32), (np.arange(n), clone)),
                          shape=(n, n_clones))
  adata = ad.AnnData(X=sp.csr_matrix(np.asarray(rows, np.int32)),
                     obs=pd.DataFrame({"day": day, "cell_type": state},
                                      index=[f"cell{i}" for i in range(n)]),
                     var=pd.DataFrame(index=[f"g{i}" for i in range(n_genes)]))
  adata.obsm["X_clone"] = x_clone
  adata.uns["clone_names"] = np.asarray([f"c{i:03d}" for i in range(n_clones)])
  adata.write_h5ad(path)
  return adata


@pytest.mark.slow
@pytest.mark.skipif(not cospar_peer.venv_ready(_VENV),
                    reason=f"no CoSpar venv at {_VENV}: build it once with "
                    "`python -c 'from cardiac_jax.studies import cospar_peer; "
                    "cospar_peer.ensure_venv()'` (or set CARDIAC_JAX_COSPAR_VENV)")
def test_run_cospar_end_to_end_on_held_out_clones(tmp_path):
  from sklearn import metrics  # pylint: disable=g-import-not-at-top
  adata = _tiny_clonal_h5ad(tmp_path / "tiny.h5ad")
  names = np.asarray(adata.uns["clone_names"])
  held = list(names[::3])
  out = cospar_peer.run_cospar(
      tmp_path / "tiny.h5ad", time_key="day", state_key="cell_type", early_days=("d2", "d4"),
      fate_day="d8", fate_classes=("CM", "CF"), held_out_clones=held,
      workdir=tmp_path / "work", venv=_VENV, timeout_s=900)
  early = np.isin(adata.obs["day"].to_numpy(), ["d2", "d4"])
  assert len(out["cell_index"]) == early.sum()
  assert early[out["cell_index"]].all()
  np.testing.assert_allclose(out["probs"].sum(axis=1), 1.0, atol=1e-5)
  assert out["n_held_out_clones"] == len(held)
  assert out["n_train_clones"] == len(names) - len(held)
  assert out["wall_s"] > 0 and out["peak_rss_mb"] > 50
  # The barcodes CoSpar saw: none of the held-out clones.
  with np.load(tmp_path / "work" / "cospar_input.npz") as z:
    assert int(z["c_shape"][1]) == len(names) - len(held)
  held_cells = np.isin(out["clone"], held)
  assert out["informative"][held_cells].mean() > 0.9
  clones, scores, _ = cospar_peer.clone_scores(out["probs"][held_cells], out["clone"][held_cells])
  cell_clone = cospar_peer.clone_of_cells(adata.obsm["X_clone"], names)
  on_fate_day = adata.obs["day"].to_numpy() == "d8"
  is_cf = adata.obs["cell_type"].to_numpy() == "CF"
  frac = np.asarray([is_cf[on_fate_day & (cell_clone == c)].mean()
                     if (on_fate_day & (cell_clone == c)).any() else 0.5 for c in clones])
  scored = frac != 0.5
  label = frac[scored] > 0.5
  auc = metrics.roc_auc_score(label, scores[scored, 1])
  assert auc > 0.6, auc


def test_cells_for_cospar_keeps_every_early_cell():
  days = np.array(["d2", "d4", "d8", "d14"] * 250)
  every = cospar_peer.cells_for_cospar(days, ["d2", "d4"], "d14")
  assert every.all()
  mapped = cospar_peer.cells_for_cospar(days, ["d2", "d4"], "d14", map_days_only=True)
  assert not mapped[days == "d8"].any() and mapped[days != "d8"].all()
  thin = cospar_peer.cells_for_cospar(days, ["d2", "d4"], "d14", fate_day_fraction=0.3, seed=1)
  assert thin[days != "d14"].all()
  assert 0.2 < thin[days == "d14"].mean() < 0.4
  np.testing.assert_array_equal(
      thin, cospar_peer.cells_for_cospar(days, ["d2", "d4"], "d14", fate_day_fraction=0.3,
                                         seed=1))
  with pytest.raises(DataError, match="fate_day_fraction"):
    cospar_peer.cells_for_cospar(days, ["d2"], "d14", fate_day_fraction=0.0)
