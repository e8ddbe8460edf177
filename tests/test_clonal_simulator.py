"""Tests of the clonal simulator: inheritance, heavy-tailed clones, destructive sampling,
fate partly readable from early cells, the GSE175634 + CoSpar schema, and bad arguments."""
import json

import anndata
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from cardiac_jax import config_lib
from cardiac_jax.config_lib import DAYS
from cardiac_jax.data import clonal_simulator
from cardiac_jax.data import ingest
from cardiac_jax.data import simulator
from cardiac_jax.data.errors import DataError

SMALL = dict(n_cells=3_000, n_genes=120, seed=0)


@pytest.fixture(scope="module")
def clones():
  return clonal_simulator.simulate_clones(**SMALL)


def _clone_fate(adata) -> pd.Series:
  """Per clone: True if most of its fate-day CM/CF cells are CM (ties dropped)."""
  obs = adata.obs
  fate_day = adata.uns["simulator"]["sample_days"].split(",")[-1]
  late = obs[(obs["diffday"] == fate_day) & obs["type"].isin(["CM", "CF"])
             & (obs["clone"] != "")]
  cm = (late["type"] == "CM").groupby(late["clone"], observed=True).mean()
  return cm[cm != 0.5] > 0.5


def _lineage_keys(obs: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  return (obs["founder"].to_numpy(np.int64), obs["generation"].to_numpy(np.int64),
          obs["lineage_path"].to_numpy(np.int64))


# --------------------------------------------------------------------------- schema


def test_schema_is_gse175634_plus_clones(clones):
  obs = clones.obs
  assert clones.X.format == "csr" and clones.X.dtype == np.int32
  assert list(obs["diffday"].cat.categories) == list(DAYS)
  assert set(obs["diffday"].astype(str)) == {"day3", "day5", "day7", "day11", "day15"}
  assert set(obs["type"].cat.categories) == set(simulator.PROGRAMME_NAMES)
  assert obs["individual"].cat.categories.size == 19
  assert clones.obs_names.is_unique
  x_clone = clones.obsm["X_clone"]
  assert sp.isspmatrix_csr(x_clone) and x_clone.shape == (clones.n_obs,
                                                           len(clones.uns["clone_names"]))
  assert set(np.unique(x_clone.data)) == {1.0}
  assert abs(clones.n_obs - SMALL["n_cells"]) < 0.15 * SMALL["n_cells"]
  json.dumps(clones.uns["simulator"])      # JSON-able scalars only
  for key in ("fate_bias", "clone_fate_bias", "latent_time", "generation"):
    assert key in obs


def test_ingest_reads_it_and_h5ad_round_trips(clones, tmp_path):
  cells = ingest.prepare_cells(clones, config_lib.base_config().data)
  assert len(cells.labels) == int((clones.obs["type"] != "UNK").sum())
  path = tmp_path / "clones.h5ad"
  clones.copy().write_h5ad(path)     # writing turns str columns categorical in place
  back = anndata.read_h5ad(path)
  assert (back.obsm["X_clone"] != clones.obsm["X_clone"]).nnz == 0
  assert list(back.uns["clone_names"]) == list(clones.uns["clone_names"])
  assert (back.obs["clone"].astype(str) == clones.obs["clone"]).all()


def test_unbarcoded_cells_have_no_clone(clones):
  x_clone = clones.obsm["X_clone"]
  clone = clones.obs["clone"].to_numpy()
  per_row = np.asarray(x_clone.sum(axis=1)).ravel()
  none = clone == ""
  assert 0.1 < none.mean() < 0.4                     # ~25% of founders unlabelled
  assert np.all(per_row[none] == 0) and np.all(per_row[~none] == 1)
  names = np.asarray(clones.uns["clone_names"])
  np.testing.assert_array_equal(names[x_clone[~none].indices], clone[~none])
  assert np.all(np.asarray(x_clone.sum(axis=0)).ravel() >= 1)   # only observed clones
  labelled = clonal_simulator.simulate_clones(n_cells=500, n_genes=80, seed=1,
                                              unlabelled_fraction=0.0)
  assert (labelled.obs["clone"] != "").all()


# --------------------------------------------------------------------------- process


def test_same_seed_same_output_and_seeds_differ():
  kwargs = dict(n_cells=800, n_genes=80, n_donors=5, seed=3)
  a = clonal_simulator.simulate_clones(**kwargs)
  b = clonal_simulator.simulate_clones(**kwargs)
  assert (a.X != b.X).nnz == 0 and (a.obsm["X_clone"] != b.obsm["X_clone"]).nnz == 0
  pd.testing.assert_frame_equal(a.obs, b.obs)
  assert a.uns["simulator"] == b.uns["simulator"]
  c = clonal_simulator.simulate_clones(**{**kwargs, "seed": 4})
  assert a.shape != c.shape or (a.X != c.X).nnz > 0
  assert not np.array_equal(a.obs["fate_bias"].to_numpy()[:100],
                            c.obs["fate_bias"].to_numpy()[:100])


def test_daughters_inherit_donor_and_fate(clones):
  obs = clones.obs[clones.obs["clone"] != ""]
  assert (obs.groupby("clone", observed=True)["individual"].nunique() == 1).all()
  assert (obs.groupby("clone", observed=True)["clone_fate_bias"].nunique() == 1).all()
  # Two cells of one clone vs two random cells: fate latents far more alike.
  pairs = obs.groupby("clone", observed=True)["fate_bias"].apply(lambda s: s.to_numpy()[:2])
  pairs = np.stack([p for p in pairs if len(p) == 2])
  assert len(pairs) > 200
  within = np.corrcoef(pairs[:, 0], pairs[:, 1])[0, 1]
  shuffled = np.random.default_rng(0).permutation(pairs[:, 1])
  between = np.corrcoef(pairs[:, 0], shuffled)[0, 1]
  assert within > 0.8 and abs(between) < 0.3, (within, between)
  # Drift per division: a clone's cells are not copies of its bias.
  assert 0.1 < np.std(obs["fate_bias"] - obs["clone_fate_bias"]) < 1.5
  # Later samples are later generations of the same clones.
  gen = obs.groupby("diffday", observed=True)["generation"].mean()
  assert np.all(np.diff(gen.loc[["day3", "day5", "day7", "day11", "day15"]].to_numpy()) > 0)


def test_clone_sizes_are_heavy_tailed(clones):
  sizes = clones.obs.loc[clones.obs["clone"] != "", "clone"].value_counts()
  cv = sizes.std() / sizes.mean()
  assert cv > 0.85, cv                             # Poisson at this mean: ~0.6
  assert sizes.max() / sizes.median() > 8, sizes.describe()
  barcoded = clones.obs[clones.obs["clone"] != ""]
  days_seen = barcoded.groupby("clone", observed=True)["diffday"].nunique()
  assert (days_seen <= 2).mean() > 0.6             # most clones: few cells on few days


def test_sampling_is_destructive(clones):
  founder, generation, path = _lineage_keys(clones.obs)
  keys = set(zip(founder.tolist(), generation.tolist(), path.tolist()))
  assert len(keys) == clones.n_obs                  # no cell sampled twice
  # No sampled cell has a sampled ancestor: sampled cells were removed, not left to divide.
  for k in range(1, int(generation.max()) + 1):
    has = generation >= k
    ancestors = zip(founder[has].tolist(), (generation[has] - k).tolist(),
                    (path[has] >> k).tolist())
    assert not keys.intersection(ancestors), k
  # Not vacuous: clones are seen on several days, their cells related through ancestors.
  per_founder = clones.obs.groupby("founder", observed=True)["diffday"].nunique()
  assert (per_founder >= 3).sum() > 50


def test_days_follow_the_differentiation(clones):
  table = pd.crosstab(clones.obs["diffday"], clones.obs["type"], normalize="index")
  share = lambda day, pops: table.loc[day, [p for p in pops if p in table]].sum()
  assert share("day3", ["MES", "CMES"]) > 0.8 and share("day3", ["CM", "CF"]) == 0.0
  assert share("day5", ["CMES", "PROG"]) > 0.8
  assert share("day7", ["PROG", "CM", "CF"]) > 0.8
  assert share("day11", ["CM", "CF"]) > 0.7 and share("day15", ["CM", "CF"]) > 0.8
  late = clones.obs[clones.obs["type"].isin(["CM", "CF"])]
  assert 0.15 < (late["type"] == "CM").mean() < 0.5
  # Committed cells follow their own fate latent's sign (it stops drifting at commitment).
  fate = late["fate_bias"].to_numpy()
  assert np.all(fate[(late["type"] == "CM").to_numpy()] > 0)
  assert np.all(fate[(late["type"] == "CF").to_numpy()] <= 0)


def test_fate_day_composition_follows_the_clone_bias(clones):
  cm_major = _clone_fate(clones)
  bias = clones.obs.groupby("clone", observed=True)["clone_fate_bias"].first()[cm_major.index]
  assert len(cm_major) > 300 and 0.1 < cm_major.mean() < 0.9
  assert roc_auc_score(cm_major, bias) > 0.9


def test_one_early_cell_predicts_clone_fate_worse_than_the_pooled_clone():
  """Priming-gene log-expression of CMES/PROG cells up to day7, 2-fold over clones."""
  adata = clonal_simulator.simulate_clones(n_cells=10_000, n_genes=100, seed=2)
  obs = adata.obs
  clone = obs["clone"].to_numpy()
  cm_major = _clone_fate(adata)
  counts = adata.X.astype(np.float64)
  total = np.asarray(counts.sum(axis=1)).ravel()
  cols = [int(np.flatnonzero(adata.var_names == g)[0]) for g in simulator.PRIMING]
  priming = np.log1p(counts[:, cols].toarray() * (1e4 / total[:, None]))
  early = (obs["diffday"].isin(["day3", "day5", "day7"]) & obs["type"].isin(["CMES", "PROG"])
           ).to_numpy() & np.isin(clone, cm_major.index)
  per_clone = pd.Series(clone[early]).value_counts()
  ids = np.sort(per_clone.index[per_clone >= 2].to_numpy())
  early &= np.isin(clone, ids)
  rng = np.random.default_rng(0)
  fold = pd.Series(rng.permutation(len(ids)) % 2, index=ids)
  in_fold = np.where(early, fold.reindex(clone).fillna(-1).to_numpy(), -1)
  logit = np.zeros(len(clone))
  for k in (0, 1):
    train, test = early & (in_fold != k) & (in_fold >= 0), in_fold == k
    clf = LogisticRegression().fit(priming[train], cm_major[clone[train]].to_numpy())
    logit[test] = clf.decision_function(priming[test])
  by_clone = pd.Series(logit[early], index=clone[early]).groupby(level=0)
  y = cm_major[ids].to_numpy()
  assert len(ids) > 150
  pooled = roc_auc_score(y, by_clone.mean()[ids])
  one = np.mean([roc_auc_score(y, by_clone.apply(lambda s: s.iloc[rng.integers(len(s))])[ids])
                 for _ in range(10)])
  latent = roc_auc_score(y, obs.groupby("clone", observed=True)["clone_fate_bias"].first()[ids])
  assert 0.55 < one and pooled > one + 0.04 and latent > pooled + 0.05, (one, pooled, latent)


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("kwargs, match", [
    (dict(barcode_day="day2"), "barcode_day"),
    (dict(sample_days=("day5", "day3")), "increasing order"),
    (dict(barcode_day="day5", sample_days=("day3", "day15")), "after barcode_day"),
    (dict(sample_days=("day15",)), "at least two"),
    (dict(sample_fraction=1.5), "sample_fraction"),
    (dict(sample_fraction=(0.1, 0.1)), "one per sampling day"),
    (dict(fate_fraction=0.0), "fate_fraction"),
    (dict(unlabelled_fraction=1.0), "unlabelled_fraction"),
    (dict(n_cells=5), "n_cells"),
    (dict(fate_drift=-0.1), "fate_drift"),
    (dict(dt=1.0), "dt"),
    (dict(n_genes=20), "n_genes"),
])
def test_bad_arguments_raise_data_error_naming_the_fix(kwargs, match):
  with pytest.raises(DataError, match=match):
    clonal_simulator.simulate_clones(**{"n_cells": 300, "n_genes": 80, **kwargs})
