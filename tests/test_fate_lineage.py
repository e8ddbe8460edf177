"""The fate benchmark on data it did not generate (configs/fate_lineage.py) and its ablations.

The scoring settings default to the embedded simulator's (truth = fate_bias > 0,
headline PROG), so configs/fate.py's results do not move; the exact solve on a
graph of chosen cells (``fate.graph_probabilities``) is the training labels on
the training split's cells. Tests that need lineage-simulator skip without it.
"""
import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from cardiac_jax import config_lib
from cardiac_jax.data import dataset
from cardiac_jax.data import fate
from cardiac_jax.data import sources
from cardiac_jax.studies import fate_benchmark as fb
from cardiac_jax.studies import lineage_testbed as lt


def test_scoring_defaults_are_the_simulators():
  config = config_lib.preset("fate")
  assert "fate_benchmark" not in config          # configs/fate.py states nothing new
  assert fb.scoring(config) == fb.SCORING
  assert fb.SCORING["truth_key"] == "fate_bias" and fb.SCORING["headline"] == fb.HEADLINE == "PROG"
  assert fb.positive_class(config) == "CM"
  obs = pd.DataFrame({"fate_bias": [0.3, 0.0, -0.2, np.nan]})
  # As before: > 0 leans CM; a zero (and a NaN) counts as not leaning.
  np.testing.assert_array_equal(fb.truth_of(obs, config), [1.0, 0.0, 0.0, 0.0])
  assert fb.truth_of(pd.DataFrame({"x": [1.0]}), config) is None
  assert fb._truth_text(fb.scoring(config)) == "sign of `fate_bias`"  # pylint: disable=protected-access


def test_lineage_config_scores_fate_b_and_leaves_ties_out():
  config = config_lib.preset("fate_lineage")
  assert tuple(config.data.fate.pre_branch) == (lt.PROGENITOR,)
  assert set(config.data.fate.terminal) == set(lt.FATES)
  assert fb.positive_class(config) == "fateB"
  assert fb.scoring(config)["headline"] == lt.PROGENITOR
  obs = pd.DataFrame({"fate_prob_B": [0.2, 0.5, 0.7, 1.0, 0.0]})
  np.testing.assert_array_equal(fb.truth_of(obs, config), [0.0, np.nan, 1.0, 1.0, 0.0])
  # score leaves the undecided cell out.
  p = np.array([0.1, 0.9, 0.8, 0.6, 0.3], np.float32)
  assert fb.score(p, fb.truth_of(obs, config)) == {"n": 4, "auc": 1.0, "acc": 1.0}
  # Each seed its own bed; the transfer sample is the file of seed + 100.
  config.data.path = "/d/bed_{seed}.h5ad"
  assert fb.seed_config(config, 2).data.path == "/d/bed_2.h5ad"
  assert fb.transfer_config(config, 2).data.path == "/d/bed_102.h5ad"
  config.data.path = "/d/one.h5ad"
  with pytest.raises(Exception, match="new sample"):
    fb.transfer_config(config, 2)


def test_paired_differences_are_per_seed():
  seeds = [{"methods": {"cardiac_jax": {"prog": {"auc": 0.8}}, "cellrank_pt": {"prog": {"auc": 0.7}}}},
           {"methods": {"cardiac_jax": {"prog": {"auc": 0.6}}, "cellrank_pt": {"prog": {"auc": 0.9}}}}]
  np.testing.assert_allclose(fb.paired_differences(seeds, "cardiac_jax", "cellrank_pt"),
                             [0.1, -0.3])
  assert fb.paired_differences(seeds, "cardiac_jax", "logreg") is None
  lines = fb._paired_lines(seeds, ["cardiac_jax", "cellrank_pt"], "PROG")  # pylint: disable=protected-access
  assert "| cardiac_jax − cellrank_pt | -0.100 ± 0.200 | +0.100, -0.300 |" in lines


@pytest.fixture(scope="module", name="quick")
def _quick():
  config = config_lib.preset("fate", "quick")
  cells, cell_split, _, pcs = sources.embedded_cells(config.data)
  return config, cells, cell_split, pcs


def test_graph_probabilities_on_the_training_split_are_the_training_labels(quick):
  """labels_train is exactly what the model learns: the build's soft targets."""
  config, cells, cell_split, pcs = quick
  probs = fate.graph_probabilities(config.data, cells, pcs, np.flatnonzero(cell_split == 0))
  ds = dataset.build_dataset(config.data, cache=False, progress=False)
  train = ds.split == 0
  np.testing.assert_allclose(probs[ds.source_index[train, -1]], ds.targets[train], atol=1e-6)
  assert np.isnan(probs[cell_split != 0]).all()       # nothing outside the graph's cells


def test_absorption_on_all_cells_sums_to_one_and_is_the_solve(quick):
  """absorption_all: the exact (backward-visit) solve, over every cell, on pre-branch
  cells only."""
  from cardiac_jax.data import absorption  # pylint: disable=g-import-not-at-top
  from cardiac_jax.data import sequences  # pylint: disable=g-import-not-at-top
  config, cells, _, pcs = quick
  rows = np.arange(pcs.shape[0])
  probs = fate.graph_probabilities(config.data, cells, pcs, rows, "exact")
  got = ~np.isnan(probs[:, 0])
  np.testing.assert_allclose(probs[got].sum(axis=1), 1.0)
  pre = fate.pre_branch_cells(np.asarray(cells.class_names)[cells.labels],
                              config.data.fate.pre_branch)
  assert got.sum() > 0.9 * pre.sum() and not got[~pre].any()
  names = list(cells.class_names)
  graph = sequences.temporal_graph(pcs, cells.time_index, cells.labels, rows,
                                   config.data.sequences.k_neighbors)
  visits = absorption.expected_visits(graph, [names.index(t) for t in config.data.fate.terminal],
                                      fate.label_length(config.data))
  direct, reached = absorption.fate_probabilities(visits)
  np.testing.assert_allclose(probs[pre & reached], direct[pre & reached])


def _bed_like(n_founders=4, per=5):
  n = n_founders * per
  founder = np.repeat(np.arange(n_founders), per)
  x_clone = sp.csr_matrix((np.ones(n, np.float32), (np.arange(n), founder * 2 + np.arange(n) % 2)),
                          shape=(n, 2 * n_founders))
  obs = pd.DataFrame({"founder": founder}, index=[f"c{i}" for i in range(n)])
  adata = ad.AnnData(np.zeros((n, 3), np.float32), obs=obs)
  adata.obsm[lt.CLONE_OBSM] = x_clone
  adata.uns["clone_names"] = np.asarray([f"k{j}" for j in range(2 * n_founders)])
  return adata


def test_split_founders_keeps_whole_trees_and_their_clones():
  first, held = lt.split_founders(_bed_like(), 1)
  assert set(first.obs["founder"]) == {0, 1, 2} and set(held.obs["founder"]) == {3}
  assert list(held.uns["clone_names"]) == ["k6", "k7"]
  assert held.obsm[lt.CLONE_OBSM].shape == (5, 2)
  assert np.asarray(held.obsm[lt.CLONE_OBSM].sum(axis=1)).ravel().tolist() == [1.0] * 5
  with pytest.raises(Exception, match="founders on both sides"):
    lt.split_founders(_bed_like(), 4)


def test_a_tiny_bed_builds_fate_labels(tmp_path):
  """configs/fate_lineage.py's keys read a real bed: progenitors labelled P(fate B)."""
  pytest.importorskip("lineagesim", reason="lineage-simulator is not installed: "
                      "pip install -e '.[lineage]'")
  settings = lt.BedSettings(n_founders=2, tree_nodes=4000, barcode_round=5,
                            sample_rounds=(7, 9, 11), sample_fractions=(0.3, 0.2, 0.2),
                            commit_depth=8, n_genes=60, seed=3)
  path = lt.write_h5ad(lt.simulate_bed(settings), tmp_path / "bed_0.h5ad")
  config = config_lib.preset("fate_lineage", "quick")
  config.data.path = str(tmp_path / "bed_{seed}.h5ad")
  config = fb.seed_config(config, 0)
  config.data.preprocess.n_hvg, config.data.preprocess.n_pcs = 60, 10
  cells, cell_split, _, pcs = sources.embedded_cells(config.data)
  probs = fate.graph_probabilities(config.data, cells, pcs, np.arange(pcs.shape[0]))
  prog = np.asarray(cells.class_names)[cells.labels] == lt.PROGENITOR
  got = ~np.isnan(probs[:, 0])
  assert got.any() and not got[~prog].any()
  truth = fb.truth_of(ad.read_h5ad(path).obs, config)
  assert set(np.unique(truth[~np.isnan(truth)])) == {0.0, 1.0}
  del cell_split


def test_within_day_auc_weights_days_by_cells():
  entry = {"per_day": {"d2": {"n": 30, "auc": 0.9, "acc": 0.8},
                       "d4": {"n": 10, "auc": 0.5, "acc": 0.5},
                       "d8": {"n": 5, "auc": None, "acc": 1.0}}}   # one class: left out
  assert fb.within_day_auc(entry) == pytest.approx((30 * 0.9 + 10 * 0.5) / 40)
  assert fb.within_day_auc({"per_day": {}}) is None
