"""Clones as sequences: input checks, leakage-free splits, sequences, and a run end to end."""
import json

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import cardiac_jax
from cardiac_jax import config_lib
from cardiac_jax import prediction
from cardiac_jax import train
from cardiac_jax.data import clonal
from cardiac_jax.data import clonal_simulator
from cardiac_jax.data import dataset
from cardiac_jax.data import splits
from cardiac_jax.data.errors import DataError

N_GENES = 300


@pytest.fixture(scope="module", name="adata")
def _adata():
  return clonal_simulator.simulate_clones(n_cells=3_000, n_genes=N_GENES, seed=0)


def _config(path="", **clonal_fields):
  config = config_lib.preset("clonal", "quick")
  config.data.preprocess.n_hvg = 200
  if path:
    config.data.source, config.data.path = "h5ad", str(path)
  for key, value in clonal_fields.items():
    config.data.clonal[key] = value
  return config


def _write(adata, tmp_path, name="clones.h5ad"):
  path = tmp_path / name
  adata.write_h5ad(path)
  return path


def test_sequences_hold_one_clone_before_the_fate_day_in_its_own_split():
  config = _config()
  ds = dataset.build_dataset(config.data, cache=False, progress=False)
  t = ds.tables
  fate_day = ds.meta["time_labels"].index(ds.meta["task_info"]["fate_day"])
  assert (t["cell_time"] < fate_day).all()          # fate-day cells are never in the table
  visible = ds.mask > 0
  clone = t["cell_clone"][ds.source_index]
  first = clone[:, :1]
  assert (np.where(visible, clone, first) == first).all()       # one clone per sequence
  assert (t["clone_split"][first[:, 0]] == ds.split).all()      # the clone's own split
  assert (t["clone_label"][first[:, 0]] == ds.y).all()
  days = t["cell_time"][ds.source_index]
  assert (np.diff(np.where(visible, days, 99), axis=1) >= 0).all()   # ordered by day
  assert ds.length == config.data.sequences.length and visible.sum(1).min() >= 1
  # Every labelled clone seen early is in exactly one split; the others in none.
  labelled = (t["clone_label"] >= 0) & np.isin(np.arange(t["clone_label"].size),
                                               t["cell_clone"])
  assert set(np.unique(t["clone_split"][labelled])) == {0, 1, 2}
  assert (t["clone_split"][~labelled] == clonal.UNLABELLED).all()


def test_same_seed_same_sequences_and_rotations_test_every_clone_once():
  a = dataset.build_dataset(_config().data, cache=False, progress=False)
  b = dataset.build_dataset(_config().data, cache=False, progress=False)
  np.testing.assert_array_equal(a.source_index, b.source_index)
  other = _config()
  other.data.sequences.seed = 1
  c = dataset.build_dataset(other.data, cache=False, progress=False)
  assert not np.array_equal(a.source_index[:200], c.source_index[:200])
  labels = a.tables["clone_label"][a.tables["clone_label"] >= 0]
  fractions = tuple(_config().data.split.fractions)
  tested = np.stack([splits.rotation_split(labels, fractions, 0, r) == 2
                     for r in range(splits.rotations(fractions))])
  assert (tested.sum(axis=0) == 1).all()


def test_clone_sequences_subsample_large_clones_and_redraw():
  cell_clone = np.r_[np.zeros(50, np.int64), np.ones(3, np.int64)]
  cell_time = np.r_[np.repeat([0, 1, 2], [20, 20, 10]), [0, 1, 1]]
  src, mask = clonal.clone_sequences(cell_clone, cell_time, np.array([0, 1, 0]),
                                     np.array([2, 2, 1]), 8, np.random.default_rng(0))
  assert mask.sum(1).tolist() == [8, 3, 8]
  assert set(src[1, :3]) == {50, 51, 52}
  assert (cell_time[src[2][mask[2] > 0]] <= 1).all()
  again, _ = clonal.clone_sequences(cell_clone, cell_time, np.array([0]), np.array([2]), 8,
                                    np.random.default_rng(1))
  assert set(again[0]) != set(src[0])


def _obsm_only(adata):
  out = adata.copy()
  del out.obs["clone"]
  return out


@pytest.mark.parametrize("edit, fields, message", [
    (lambda a: a.obs.drop(columns="clone", inplace=True), {}, "no clone column 'clone'"),
    (lambda a: a.obs.__setitem__("clone", np.where(
        a.obs["diffday"].astype(str) == "day15", "", a.obs["clone"])), {},
     "no clone has cells both before and on the fate day"),
    (None, {"fate_classes": ("CM", "XX")}, "fate classes ['XX'] have no cell on the fate day"),
    (lambda a: a.obs.__setitem__("clone", np.where(a.obs["clone"] != "", "c1", "")), {},
     "only 1 clone(s)"),
])
def test_bad_clonal_input_is_a_clear_error(adata, tmp_path, edit, fields, message):
  bad = adata.copy()
  if edit is not None:
    edit(bad)
  config = _config(_write(bad, tmp_path), **fields)
  with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")
                     .replace("[", r"\[").replace("]", r"\]")):
    dataset.build_dataset(config.data, cache=False, progress=False)


def test_a_cell_in_two_clones_is_refused(adata, tmp_path):
  bad = _obsm_only(adata)
  m = sp.csr_matrix(bad.obsm["X_clone"]).tolil()
  row = int(np.flatnonzero(np.diff(sp.csr_matrix(m).indptr))[0])
  m[row, (m.rows[row][0] + 1) % m.shape[1]] = 1
  bad.obsm["X_clone"] = sp.csr_matrix(m)
  config = _config(_write(bad, tmp_path))
  config.data.clone_obsm = "X_clone"
  with pytest.raises(DataError, match="belong to two or more clones"):
    dataset.build_dataset(config.data, cache=False, progress=False)


@pytest.fixture(scope="module", name="run")
def _run(adata, tmp_path_factory):
  """The quick clonal run on an h5ad whose clones are only in obsm["X_clone"]."""
  root = tmp_path_factory.mktemp("clonal_run")
  config = _config(_write(_obsm_only(adata), root))
  config.data.clone_obsm = "X_clone"
  config.train.num_epochs = 6
  results = train.train_and_evaluate(config, str(root / "run"))
  return {"root": root, "workdir": root / "run", "results": results}


def test_the_run_reports_clones_and_baselines_and_writes_their_table(run):
  report = json.loads((run["workdir"] / "report.json").read_text())
  for key in ("test_auc", "test_acc", "n_test_clones", "baselines", "best_baseline"):
    assert key in report, key
  assert report["n_test_clones"] >= 10
  for name, b in report["baselines"].items():
    assert set(b) == {"val_auc", "test_auc", "val_acc", "test_acc"}, name
  table = pd.read_csv(run["workdir"] / "clone_predictions.csv")
  assert {"clone", "split", "true", "p_CM", "p_CF"} <= set(table.columns)
  assert set(table["split"]) == {"train", "val", "test"}
  assert table["clone"].is_unique
  np.testing.assert_allclose(table["p_CM"] + table["p_CF"], 1.0, atol=1e-5)
  assert (table["split"] == "test").sum() == report["n_test_clones"]
  assert "Clones: fate from the early cells" in (run["workdir"] / "report.md").read_text()


def test_the_model_beats_one_early_cell(run):
  """Pooling a clone's cells is where a sequence knows more than one cell."""
  per_day = run["results"]["clonal"]["per_day"]
  last = list(per_day)[-1]
  model = per_day[last]["model"]
  one_cell = per_day[last]["logreg_one_cell"]
  assert model["val"]["auc"] > one_cell["val"]["auc"]
  assert model["test"]["auc"] > one_cell["test"]["auc"]


def test_predict_writes_each_clones_fate_on_new_data(run, tmp_path):
  new = clonal_simulator.simulate_clones(n_cells=1_500, n_genes=N_GENES, seed=7)
  path = _write(new, tmp_path, "new.h5ad")
  written = prediction.predict_file(run["workdir"] / "model", path, tmp_path / "out.h5ad",
                                    plots_dir=tmp_path / "plots", time_key="diffday")
  table = pd.read_csv(written["csv"])
  assert written["csv"].name == "clone_predictions.csv"
  assert {"clone", "n_early_cells", "days_seen", "p_CM", "p_CF", "label"} <= set(table.columns)
  out = cardiac_jax.predict(new, str(run["workdir"] / "model"), copy=True)
  fate = out.obsm["cardiac_jax_clone_fate"]
  has = np.isin(out.obs["clone"], table["clone"])
  assert np.isfinite(fate[has]).all() and np.isnan(fate[~has]).all()
  for p in ("clone_fate_by_day", "embedding_clone_fate"):
    assert written[p].endswith(".png") if isinstance(written[p], str) else True
  # Cells of one clone carry the same probabilities; the fate day is never read.
  row = table.iloc[0]
  cells = out.obs["clone"] == row["clone"]
  np.testing.assert_allclose(fate[cells.to_numpy()][:, 0], row["p_CM"], atol=1e-6)
  assert "day15" not in row["days_seen"]
