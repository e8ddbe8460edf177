"""Fate probabilities per pre-branch cell (cardiac_jax/fate.py, configs/fate.py, predict).

The quick variant of configs/fate.py trains in seconds; its model is poor (two
epochs on a few hundred sequences), so these tests check the invariants of the
fate output, not its quality (experiments/fate_benchmark.py measures that).
"""
import json
import pathlib
import shutil
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from cardiac_jax import config_lib
from cardiac_jax import export
from cardiac_jax.data import fate
from cardiac_jax import prediction
from cardiac_jax import train
from cardiac_jax import viz
from cardiac_jax.data import dataset
from cardiac_jax.data import simulator
from cardiac_jax.data import sources
from cardiac_jax.data.errors import DataError

REPO = pathlib.Path(__file__).resolve().parent.parent


def _config():
  config = config_lib.preset("fate", "quick")
  config.train.num_epochs = 2
  return config


@pytest.fixture(scope="module", name="built")
def _built():
  config = _config()
  return config, dataset.build_dataset(config.data, cache=False, progress=False)


@pytest.fixture(scope="module", name="run")
def _run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("fate_run")
  train.train_and_evaluate(_config(), str(workdir))
  new = simulator.simulate_cells(2_000, 400, 19, seed=1)
  return {"workdir": workdir, "model": export.load_model(workdir / "model"), "adata": new}


def test_sequences_end_at_pre_branch_cells_of_their_own_split(built):
  """No test (or val) cell in training sequences; every sequence ends at a pre-branch cell."""
  config, ds = built
  assert ds.class_names == ("CM", "CF")
  names, cell_split = fate.cell_split_of(config.data)
  assert len(names) == ds.meta["n_cells"]
  for s in range(3):
    rows = ds.source_index[ds.split == s]
    assert rows.size and np.all(cell_split[rows] == s)
  populations = np.asarray(ds.meta["populations"])
  from cardiac_jax.data import ingest  # pylint: disable=g-import-not-at-top
  cells = ingest.prepare_cells(sources.load_cells(config.data), config.data)
  last = ds.source_index[:, -1]
  assert set(populations[cells.labels[last]]) <= set(fate.PRE_BRANCH)
  # Paced by the end cell's own day, as a query walk: no step after it in time.
  days = cells.time_index[ds.source_index]
  assert np.all(days <= days[:, -1:]) and np.all(np.diff(days, axis=1) >= 0)
  # Labels of every split come from walks within that split; both fates occur (the
  # exact labels are soft: P(CM) spreads in every split; CF, twice as many cells, leads).
  assert set(np.unique(ds.y)) == {0, 1}
  for s in range(3):
    assert np.ptp(ds.targets[ds.split == s, 0]) > 0.05


def test_same_seed_same_dataset_other_seed_other(built):
  config, ds = built
  again = dataset.build_dataset(config.data, cache=False, progress=False)
  np.testing.assert_array_equal(again.source_index, ds.source_index)
  np.testing.assert_array_equal(again.y, ds.y)
  other = config.copy_and_resolve_references()
  other.data.sequences.seed = 1
  assert not np.array_equal(
      dataset.build_dataset(other.data, cache=False, progress=False).source_index,
      ds.source_index)
  assert dataset.cache_key(other.data) != dataset.cache_key(config.data)


def test_path_visits_count_each_walk_once_per_cell():
  """A chain graph: every walk from the terminal item passes all earlier items."""
  from cardiac_jax.data import sequences  # pylint: disable=g-import-not-at-top
  pcs = np.arange(4, dtype=np.float32)[:, None]
  graph = sequences.temporal_graph(pcs, np.arange(4), np.array([0, 1, 2, 3]),
                                   np.arange(4), k=1)
  visits = fate.path_visits(graph, np.array([0, 1, 2]), np.array([3]), 5, 8,
                            np.random.default_rng(0))
  np.testing.assert_array_equal(visits[:, 0], [5, 5, 5, 0])


def _branching_graph():
  """A small random time course: 5 days, pre-branch cells (0) early, CM (1) / CF (2) late."""
  from cardiac_jax.data import sequences  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  days = rng.integers(0, 5, 120)
  pcs = (rng.normal(size=(120, 3)) + days[:, None]).astype(np.float32)
  labels = np.where((days >= 3) & (rng.random(120) < 0.6), rng.integers(1, 3, 120), 0)
  return sequences.temporal_graph(pcs, days, labels, np.arange(120), k=4)


def test_exact_labels_are_the_limit_of_many_sampled_walks():
  """Expected visits (sparse solve) == visits counted over 10,000 walks per terminal cell."""
  from cardiac_jax.data import absorption  # pylint: disable=g-import-not-at-top
  from cardiac_jax.data import sequences  # pylint: disable=g-import-not-at-top
  graph, length, walks = _branching_graph(), 6, 10_000
  exact = absorption.expected_visits(graph, [1, 2], length)
  anchors = np.flatnonzero(graph.labels > 0)
  path = sequences.walk(graph, np.repeat(anchors, walks), length, np.random.default_rng(1))
  sampled = np.zeros_like(exact)
  np.add.at(sampled, (path.ravel(), np.repeat(graph.labels[anchors] - 1, walks * length)), 1)
  sampled /= walks                                   # visits with multiplicity, per anchor
  np.testing.assert_allclose(sampled, exact, atol=0.01 * exact.max())
  probs, reached = absorption.fate_probabilities(exact)
  np.testing.assert_allclose(probs[reached].sum(axis=1), 1.0)
  assert np.all(probs[~reached] == 0) and reached[graph.labels == 0].any()
  well = reached & (exact.sum(axis=1) > 5) & (graph.labels == 0)
  assert well.sum() >= 5
  np.testing.assert_allclose(absorption.fate_probabilities(sampled)[0][well], probs[well],
                             atol=0.01)


def test_forward_absorption_solves_the_forward_chain():
  """forward labels == absorption of the chain written out cell by cell and solved densely."""
  from cardiac_jax.data import absorption  # pylint: disable=g-import-not-at-top
  graph = _branching_graph()
  got = absorption.forward_absorption(graph, [1, 2], same_weight=0.5, tol=1e-12)
  n = graph.size
  ahead = [[] for _ in range(n)]          # next-day cells whose previous-day table holds i
  for j in np.flatnonzero(graph.has_prev):
    for i in set(graph.prev[j, :graph.prev_count[j]].tolist()):
      ahead[i].append(j)
  chain = np.zeros((n, n))
  for i in range(n):
    same = graph.same[i, :graph.same_count[i]]
    w = 0.5 if ahead[i] else 1.0
    np.add.at(chain[i], same, w / same.size)
    for j in ahead[i]:
      chain[i, j] += (1 - w) / len(ahead[i])
  terminal = graph.labels > 0
  hit = np.stack([graph.labels == 1, graph.labels == 2], axis=1).astype(float)
  q = chain[~terminal][:, ~terminal]
  r = chain[~terminal][:, terminal] @ hit[terminal]
  want = hit.copy()
  want[~terminal] = np.linalg.lstsq(np.eye(q.shape[0]) - q, r, rcond=None)[0]
  np.testing.assert_allclose(got, want, atol=1e-6)
  np.testing.assert_array_equal(got[terminal], hit[terminal])
  reached = got.sum(axis=1) > 0
  assert reached[~terminal].sum() > 50
  np.testing.assert_allclose(got[reached].sum(axis=1), 1.0, atol=1e-5)   # every path ends
  with pytest.raises(ValueError, match="same_weight"):
    absorption.forward_absorption(graph, [1, 2], same_weight=1.0)


def test_labels_option_forward_exact_soft_walks_hard(built, tmp_path):
  """forward (default) and exact: soft targets summing to one, y their argmax, saved and
  loaded, different from each other; walks: none."""
  config, ds = built
  assert ds.meta["fate"]["labels"] == "forward" and ds.length == 1
  np.testing.assert_allclose(ds.targets.sum(axis=1), 1.0, atol=1e-6)
  np.testing.assert_array_equal(ds.y, np.argmax(ds.targets, axis=1))
  again = dataset.SequenceDataset.load(ds.save(tmp_path / "ds.npz"))
  np.testing.assert_array_equal(again.targets, ds.targets)
  np.testing.assert_array_equal(ds.subset(ds.split == 0).targets, ds.targets[ds.split == 0])
  walks = config.copy_and_resolve_references()
  walks.data.fate.labels = "walks"
  assert dataset.cache_key(walks.data) != dataset.cache_key(config.data)
  assert dataset.build_dataset(walks.data, cache=False, progress=False).targets is None
  exact = config.copy_and_resolve_references()
  exact.data.fate.labels = "exact"
  backward = dataset.build_dataset(exact.data, cache=False, progress=False)
  assert dataset.cache_key(exact.data) != dataset.cache_key(config.data)
  np.testing.assert_allclose(backward.targets.sum(axis=1), 1.0, atol=1e-6)
  assert not np.allclose(backward.targets[:50], ds.targets[:50])
  walks.data.fate.labels = "nope"
  with pytest.raises(DataError, match="labels"):
    dataset.build_dataset(walks.data, cache=False, progress=False)


def test_soft_targets_loss_equals_the_hard_loss_for_one_hot_targets():
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from cardiac_jax import steps  # pylint: disable=g-import-not-at-top
  logits = jnp.asarray([[2.0, -1.0], [0.3, 0.1], [-0.5, 1.5]])
  labels = jnp.asarray([0, 1, 1])
  onehot = jnp.eye(2)[labels]
  for smoothing in (0.0, 0.1):
    np.testing.assert_array_equal(steps.cross_entropy(logits, labels, smoothing, onehot),
                                  steps.cross_entropy(logits, labels, smoothing))
  soft = jnp.asarray([[0.7, 0.3]] * 3)
  want = -(soft * jnp.log(jnp.exp(logits) / jnp.exp(logits).sum(1, keepdims=True))).sum(1)
  np.testing.assert_allclose(steps.cross_entropy(logits, labels, 0.0, soft), want, rtol=1e-6)


def test_per_population_counts_and_bad_config():
  config = _config()
  assert fate.per_population(config.data) == list(config.data.fate.per_population)
  for n, want in ((7, [7] * len(fate.PRE_BRANCH)), ((1, 2), None)):
    data = ml_collections.ConfigDict({"fate": {"pre_branch": fate.PRE_BRANCH,
                                               "per_population": n}})
    if want is None:
      with pytest.raises(DataError, match="per_population"):
        fate.per_population(data)
    else:
      assert fate.per_population(data) == want
  config = _config()
  config.data.fate.pre_branch = ("PROG", "NOPE")
  with pytest.raises(DataError, match="NOPE"):
    dataset.build_dataset(config.data, cache=False, progress=False)


def test_export_records_the_fate(run):
  info = json.loads((run["workdir"] / "model" / "model.json").read_text())
  assert info["class_names"] == ["CM", "CF"]
  assert info["fate"]["pre_branch"] == list(fate.PRE_BRANCH)
  assert info["fate"]["population_key"] == "type"


def test_predict_fate_invariants(run, tmp_path, monkeypatch):
  """Probabilities sum to one, only pre-branch cells get values; a length-1 model reads
  each cell alone: no kNN graph, one pass, the same output whatever the walk seed."""
  from cardiac_jax.data import sequences  # pylint: disable=g-import-not-at-top
  assert run["model"].length == 1

  def no_graph(*args, **kwargs):
    raise AssertionError("a length-1 model must not build the kNN graph")

  monkeypatch.setattr(sequences, "temporal_graph", no_graph)
  adata = prediction.predict(run["adata"], run["model"], n_walks=2, copy=True, seed=3,
                             progress=False)
  probs = np.asarray(adata.obsm["cardiac_jax_fate"])
  pre = np.isin(adata.obs["type"].astype(str), fate.PRE_BRANCH)
  assert probs.shape == (adata.n_obs, 2)
  assert not np.isnan(probs[pre]).any() and np.isnan(probs[~pre]).all()
  np.testing.assert_allclose(probs[pre].sum(axis=1), 1.0, atol=1e-5)
  np.testing.assert_array_equal(np.asarray(adata.obs["cardiac_jax_p_CM"]), probs[:, 0])
  assert adata.uns["cardiac_jax"]["fate_names"] == ["CM", "CF"]
  assert adata.uns["cardiac_jax"]["n_pre_branch"] == int(pre.sum())
  assert "cardiac_jax_label" not in adata.obs   # a fate model gives no six-class label
  again = prediction.predict(run["adata"], run["model"], n_walks=2, copy=True, seed=3,
                             progress=False)
  np.testing.assert_array_equal(np.asarray(again.obsm["cardiac_jax_fate"]), probs)
  other = prediction.predict(run["adata"], run["model"], n_walks=2, copy=True, seed=4,
                             progress=False)
  np.testing.assert_array_equal(np.asarray(other.obsm["cardiac_jax_fate"]), probs)
  assert np.all(np.asarray(adata.obs["cardiac_jax_n_walks"])[pre] == 1)

  table = prediction.predictions_table(adata)
  assert list(table.columns) == ["cell", "population", "p_CM", "p_CF"]
  assert len(table) == int(pre.sum())
  written = prediction.write_predictions(adata, tmp_path / "out.h5ad", tmp_path / "p.csv")
  assert all(p.exists() for p in written.values())
  plots = viz.plot_fate(adata, tmp_path / "plots", method="pca")
  assert all(p.exists() and p.stat().st_size > 0 for p in plots.values())
  summary = viz.fate_summary(adata)
  assert set(summary["population"]) <= set(fate.PRE_BRANCH)
  assert int(summary["n"].sum()) == int(pre.sum())


def test_predict_fate_needs_the_population_column(run):
  adata = run["adata"].copy()
  del adata.obs["type"]
  with pytest.raises(DataError, match="population_key"):
    prediction.predict(adata, run["model"], n_walks=1, progress=False)
  adata.obs["celltype"] = run["adata"].obs["type"].to_numpy()
  out = prediction.predict(adata, run["model"], n_walks=1, progress=False,
                           population_key="celltype")
  assert out.uns["cardiac_jax"]["params"]["population_key"] == "celltype"


def test_benchmark_scores_the_transfer_on_all_cells_of_the_new_sample(tmp_path):
  """The transfer rows: every PROG cell of the new sample scored, one table row per method."""
  import anndata as ad  # pylint: disable=g-import-not-at-top
  import pandas as pd  # pylint: disable=g-import-not-at-top
  from cardiac_jax.studies import fate_benchmark  # pylint: disable=g-import-not-at-top
  paths = fate_benchmark._paths(str(tmp_path), 0)  # pylint: disable=protected-access
  paths["probs"].mkdir(parents=True)
  bias = np.array([1.0, -1.0, 0.5, -0.5, 1.0, -1.0])
  obs = pd.DataFrame({"type": ["PROG", "PROG", "PROG", "PROG", "CMES", "CM"],
                      "fate_bias": bias}, index=[f"c{i}" for i in range(6)])
  ad.AnnData(np.zeros((6, 1), np.float32), obs=obs).write_h5ad(paths["transfer_cells"])
  np.save(paths["probs"] / "transfer_cardiac_jax.npy", (bias > 0).astype(np.float32))
  np.save(paths["probs"] / "transfer_cellrank_pt.npy", np.full(6, 0.5, np.float32))
  out = fate_benchmark.score_transfer(_config(), paths, fate_benchmark.TRANSFER)
  assert out["n_prog"] == 4 and out["n_pre_branch"] == 5
  assert out["transfer_cardiac_jax"]["prog"] == {"n": 4, "auc": 1.0, "acc": 1.0}
  assert out["transfer_cellrank_pt"]["prog"]["auc"] == 0.5
  cost = {"wall_s": 1.0, "peak_rss_mb": 2.0}
  lines = fate_benchmark._transfer_lines(  # pylint: disable=protected-access
      {"seeds": [{"transfer": out, "costs": {m: cost for m in fate_benchmark.TRANSFER}}]})
  assert sum(fate_benchmark.LABELS[m] in "\n".join(lines) for m in fate_benchmark.TRANSFER) == 2


@pytest.fixture(scope="module", name="bench")
def _bench(tmp_path_factory):
  """The benchmark's command end to end, quick mode, on an h5ad of simulated cells.

  A subprocess: the script defines absl flags (``--config``) that cardiac_jax.main,
  imported by other tests, defines too. One run serves the scoring with and without a
  true fate (the second rescored in-process from the same stages).
  """
  root = tmp_path_factory.mktemp("fate_bench")
  cfg = config_lib.preset("fate", "quick")
  sim = cfg.data.simulator
  path = root / "cells.h5ad"
  simulator.simulate_cells(sim.n_cells, sim.n_genes, sim.n_donors, seed=2).write_h5ad(path)
  out = root / "fate"
  subprocess.run(
      [sys.executable, "experiments/fate_benchmark.py", "--config=configs/fate.py:quick",
       "--config.train.num_epochs=1", "--seeds=0", "--methods=cardiac_jax,logreg,priming",
       "--config.data.source=h5ad", f"--config.data.path={path}",
       f"--workdir={root / 'bench'}", f"--out={out}", "--n_walks=2"],
      cwd=REPO, check=True, capture_output=True, text=True)
  return {"root": root, "out": out, "path": path}


@pytest.mark.slow
def test_benchmark_quick_mode_without_cellrank(bench):
  """Held-out cells only, all scored, every method's cost and the three result files."""
  out = bench["out"]
  results = json.loads(out.with_suffix(".json").read_text())
  seed = results["seeds"][0]
  split = np.load(bench["root"] / "bench" / "seed0" / "split.npz")["split"]
  assert 0 < seed["n_held_out_prog"] <= seed["n_held_out"] <= int(np.sum(split == 2))
  for m in ("cardiac_jax", "logreg", "priming"):
    assert 0.0 <= seed["methods"][m]["prog"]["auc"] <= 1.0
    assert seed["methods"][m]["prog"]["n"] == seed["n_held_out_prog"]
    assert seed["costs"][m]["wall_s"] > 0 and seed["costs"][m]["peak_rss_mb"] > 0
  for suffix in (".md", ".json", ".png"):
    assert out.with_suffix(suffix).exists()
  assert "held-out PROG" in out.with_suffix(".md").read_text()


def test_benchmark_on_data_without_a_true_fate_reports_agreement(bench, tmp_path):
  """Real data (GSE175634) has no ``fate_bias``: the benchmark then scores agreement
  between the methods on the held-out pre-branch cells instead of AUC against a truth.
  The same run's stages, its cells without the truth, scored again (``--reuse``)."""
  import anndata as ad  # pylint: disable=g-import-not-at-top
  from cardiac_jax.studies import fate_benchmark as fb  # pylint: disable=g-import-not-at-top
  workdir = tmp_path / "bench"
  shutil.copytree(bench["root"] / "bench", workdir)
  cells = workdir / "seed0" / "cells.h5ad"
  adata = ad.read_h5ad(cells)
  adata.obs = adata.obs.drop(columns=["fate_bias", "latent_time"])
  adata.write_h5ad(cells)
  config = config_lib.preset("fate", "quick")
  config.data.source, config.data.path = "h5ad", str(bench["path"])
  out = tmp_path / "fate"
  fb.run_benchmark(config, [0], ["cardiac_jax", "logreg"], str(workdir), str(out),
                   n_walks=2, reuse=str(bench["out"].with_suffix(".json")))
  seed = json.loads(out.with_suffix(".json").read_text())["seeds"][0]
  assert "prog" not in seed["methods"]["cardiac_jax"]          # no truth, no AUC
  agree = seed["methods"]["logreg"]["agreement_with_cardiac_jax"]
  assert agree["n"] == seed["n_held_out"] > 0
  assert -1.0 <= agree["spearman"] <= 1.0 and 0.0 <= agree["same_call"] <= 1.0
  assert "No `fate_bias` in the data: agreement" in out.with_suffix(".md").read_text()
  assert out.with_suffix(".png").exists()
