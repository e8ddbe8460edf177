"""Fate probabilities of held-out pre-branch cells: cardiac_jax against its peers.

  python experiments/fate_benchmark.py --seeds=0,1,2 --workdir=runs/fate_bench \
      --out=docs/results/fate                          # simulator, 3 seeds, CellRank if installed
  python experiments/fate_benchmark.py --config=configs/fate.py:quick --seeds=0 \
      --methods=cardiac_jax,logreg,priming             # the tests' quick mode (seconds)
  python experiments/fate_benchmark.py --config=configs/fate_lineage.py --seeds=0,1,2 \
      --config.data.path=/data/bed_seed{seed}.h5ad     # lineage-simulator beds (one per seed)

Per seed (simulator seed, split, walks and training all take it), on the
simulation's cells without UNK, every method gives P(CM) to the pre-branch
cells, and they are scored on the TEST-split cells only, against the truth
(``obs["fate_bias"] > 0``): ROC AUC and accuracy (P(CM) > 0.5), for PROG (the
headline), for all pre-branch cells, and per day (PROG). Methods:

- ``cardiac_jax``: ``python -m cardiac_jax.main --config=configs/fate.py``'s
  model (trained on training-split cells only; forward labels, the cell alone),
  then ``cardiac_jax.predict`` over all the cells (the exported preprocessor).
  ``cardiac_jax_exact`` / ``cardiac_jax_walks`` / ``cardiac_jax_exact32``: the
  same with exact backward-visit labels (the previous default) / walk labels and
  32-step walks / exact labels and 32-step walks (``VARIANTS``).
- ``logreg``: the honest per-cell baseline: logistic regression on the same
  training sequences' last cell (PCA + day, the model's own features) and
  labels (soft labels: their cross-entropy), C chosen on the validation
  sequences (``baselines.LOGREG_C``).
- ``priming``: the simulator's priming genes (``simulator.PRIMING``; CM genes'
  mean log1p expression minus CF genes'), made a probability by a 1-D logistic
  regression on the same training labels. Oracle-ish: it knows which genes carry
  the fate. Simulator only.
- ``cellrank_pt`` / ``cellrank_ck``: CellRank 2 (``pip install -e ".[peers]"``)
  on all the cells: scanpy ``normalize_total(1e4)``, ``log1p``,
  ``highly_variable_genes(n_top_genes=2000)``, ``pca(50)``,
  ``neighbors(n_neighbors=30, n_pcs=50)``; ``PseudotimeKernel(adata,
  time_key="dpt_pseudotime").compute_transition_matrix()`` (defaults: hard
  threshold, frac_to_keep 0.3) or ``ConnectivityKernel(adata)
  .compute_transition_matrix()``; ``GPCCA(kernel)``, ``set_terminal_states({"CM":
  CM cells, "CF": CF cells})``, ``compute_fate_probabilities()``, P(CM) =
  ``fate_probabilities["CM"]`` (``obsm["lineages_fwd"]``). Unsupervised: it
  uses no training labels, only which cells are CM and CF.
- ``transfer_cardiac_jax`` / ``transfer_cellrank_pt``: the transfer test: the
  seed's exported model predicts ANOTHER simulation (seed + 100, no refit), and
  CellRank's PseudotimeKernel is recomputed on that sample alone; scored on all
  its PROG cells (``score_transfer``). On an h5ad, ``config.data.path`` holds
  ``{seed}`` and the new sample is the file of seed + 100.
- Ablations, never defaults (``ABSORPTION``): ``absorption_all`` is the exact
  labels' solve (``fate.graph_probabilities``: the same kNN tables, pacing and
  label length) on ALL the sample's cells, used as the prediction: transductive
  like CellRank, it reads the held-out cells' expression (not their labels);
  ``absorption_test`` the same on the test split's cells alone (the test
  labels), ``cellrank_pt_test`` CellRank's PseudotimeKernel on them alone (as
  small a graph); ``labels_train`` the training labels themselves, scored on the
  TRAINING split's cells: how good the labels the model learns are;
  ``forward_all`` / ``labels_train_forward`` the same with the forward chain's
  absorption (``data.fate.labels = "forward"``, CellRank's direction).

Other data (``configs/fate_lineage.py``): the populations come from
``config.data.fate`` (P of ``terminal[0]`` is what every method gives), the
truth, the headline population and CellRank's pseudotime from the optional
``config.fate_benchmark`` section (``SCORING`` when absent: the simulator's
``fate_bias > 0``, PROG, ``dpt_pseudotime``).

Each method runs in its own process (``python -m cardiac_jax.studies.fate_benchmark
--stage=...``), so its wall time and peak RSS (``resources.run_measured``) are its
own. On an h5ad without ``fate_bias`` (real data, e.g. GSE175634 with
``--config.data.source=h5ad --config.data.path=...``) the report gives the methods'
agreement instead (Spearman correlation of P(CM), and
the fraction of cells called the same way), on the same held-out cells.
Writes <out>.md, <out>.json and <out>.png.
"""
from __future__ import annotations

import json
import os
import pathlib
import sys
import time
from typing import Any, Sequence

from absl import app
from absl import flags
from absl import logging
import ml_collections
from ml_collections import config_flags
import numpy as np

from cardiac_jax import fileio
from cardiac_jax import resources
from cardiac_jax.studies import common

FLAGS = flags.FLAGS
# At 230,786 cells the PseudotimeKernel's gmres solve at CellRank's default
# tolerance returned 3 negative probabilities and CellRank refused them.
CELLRANK_RETRY_TOL = 1e-9
# cardiac_jax variants: the config's model with these overrides (the comparisons).
VARIANTS = {"cardiac_jax": {},
            "cardiac_jax_walks": {"data.fate.labels": "walks", "data.sequences.length": 32},
            "cardiac_jax_exact32": {"data.fate.labels": "exact", "data.sequences.length": 32},
            "cardiac_jax_exact": {"data.fate.labels": "exact"}}
# The transfer test: the seed's model (no refit) and CellRank recomputed, on a new sample.
TRANSFER = ("transfer_cardiac_jax", "transfer_cellrank_pt")
TRANSFER_SEED_OFFSET = 100      # the new sample of seed s is the simulation of seed s + 100
# Ablations of the exact solve, never defaults: ``absorption_all`` / ``absorption_test``
# solve on all the sample's cells / the test split's alone (transductive, as CellRank: they
# read the held-out cells' expression, not their labels); ``labels_train`` is the training
# labels themselves, scored on the TRAINING split's cells (how good the labels are).
# ``cellrank_pt_test``: the other side of that ablation, CellRank's PseudotimeKernel on the
# test split's cells alone (a graph as small as ``absorption_test``'s).
# ``forward_all`` / ``labels_train_forward``: the same two with the forward chain's
# absorption (``data.fate.labels = "forward"``) in place of the backward walks' visits.
# Each: (the labels' rule, the split whose cells make the graph; None = all the cells).
ABSORPTION = {"absorption_all": ("exact", None), "absorption_test": ("exact", 2),
              "labels_train": ("exact", 0), "forward_all": ("forward", None),
              "labels_train_forward": ("forward", 0)}
TRAIN_SCORED = ("labels_train", "labels_train_forward")
METHODS = (*VARIANTS, "logreg", "priming", "cellrank_pt", "cellrank_ck", *TRANSFER,
           *ABSORPTION, "cellrank_pt_test")
CELLRANK = ("cellrank_pt", "cellrank_ck", "transfer_cellrank_pt", "cellrank_pt_test")
LABELS = {"cardiac_jax": "cardiac_jax fate model (config's labels and length)",
          "cardiac_jax_walks": "cardiac_jax fate model, walk labels, 32-step walks (previous)",
          "cardiac_jax_exact32": "cardiac_jax fate model, exact labels, 32-step walks",
          "cardiac_jax_exact": "cardiac_jax fate model, exact backward-visit labels (previous)",
          "logreg": "per-cell logistic regression, same training labels",
          "priming": "priming-gene score (oracle-ish: knows the fate genes)",
          "cellrank_pt": "CellRank 2 PseudotimeKernel (dpt_pseudotime)",
          "cellrank_ck": "CellRank 2 ConnectivityKernel",
          "transfer_cardiac_jax": "cardiac_jax fate model of the seed, new sample, no refit",
          "transfer_cellrank_pt": "CellRank 2 PseudotimeKernel recomputed on the new sample",
          "absorption_all": "ABLATION (transductive, reads the test cells' expression): "
                            "exact solve on all the sample's cells",
          "absorption_test": "ABLATION (transductive, reads the test cells' expression): "
                             "exact solve on the test split's cells alone",
          "labels_train": "the training labels themselves, on TRAINING-split cells",
          "forward_all": "ABLATION (transductive, reads the test cells' expression): "
                         "forward absorption on all the sample's cells",
          "labels_train_forward": "forward-absorption training labels, on TRAINING-split "
                                  "cells",
          "cellrank_pt_test": "ABLATION (transductive): CellRank 2 PseudotimeKernel on the "
                              "test split's cells alone"}
# What is scored: the config's optional ``fate_benchmark`` section, else these (the
# embedded simulator's): truth = obs["fate_bias"] > 0 (leans to the first terminal
# population, CM), ties at the threshold counted as not leaning ("negative"; "drop" leaves
# them out), the headline population PROG, CellRank's pseudotime obs["dpt_pseudotime"]
# (computed with scanpy's DPT when the data lack it).
SCORING = {"truth_key": "fate_bias", "truth_threshold": 0.0, "truth_ties": "negative",
           "headline": "PROG", "pseudotime_key": "dpt_pseudotime"}
TIES = ("negative", "drop")
HEADLINE = SCORING["headline"]


def scoring(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """``config.fate_benchmark``'s scoring settings over the defaults (``SCORING``)."""
  section = config.get("fate_benchmark", None)
  out = dict(SCORING)
  if section is not None:
    out.update({k: section.get(k, v) for k, v in SCORING.items()})
  out["truth_threshold"] = float(out["truth_threshold"])
  if out["truth_ties"] not in TIES:
    raise app.UsageError(f"config.fate_benchmark.truth_ties={out['truth_ties']!r}; choose one "
                         f"of {list(TIES)}")
  return out


def positive_class(config: ml_collections.ConfigDict) -> str:
  """The population whose probability every method gives: the first terminal one (CM)."""
  return str(config.data.fate.terminal[0])


def truth_of(obs: Any, config: ml_collections.ConfigDict) -> np.ndarray | None:
  """Per cell 1.0 (leans to ``positive_class``), 0.0, or NaN (left out); None: no truth column.

  1.0 where ``obs[truth_key] > truth_threshold``; a value exactly at the threshold
  (and a NaN) is 0.0 with ``truth_ties = "negative"``, NaN (not scored) with "drop".
  """
  s = scoring(config)
  if s["truth_key"] not in obs.columns:
    return None
  value = obs[s["truth_key"]].to_numpy(np.float64)
  truth = (value > s["truth_threshold"]).astype(np.float64)
  if s["truth_ties"] == "drop":
    truth[(value == s["truth_threshold"]) | np.isnan(value)] = np.nan
  return truth


# ---------------------------------------------------------------- per-seed config


def seed_config(config: ml_collections.ConfigDict, seed: int) -> ml_collections.ConfigDict:
  """The config of one seed: simulator, split, walks and training all take it."""
  from cardiac_jax import config_lib  # pylint: disable=g-import-not-at-top
  config = _with_sample(config, seed)
  config.seed = seed
  config.name = f"{config.name}_seed{seed}"
  return config


def _with_sample(config: ml_collections.ConfigDict, seed: int) -> ml_collections.ConfigDict:
  """``config_lib.with_data_seed``, and an h5ad path's ``{seed}`` filled with ``seed``."""
  from cardiac_jax import config_lib  # pylint: disable=g-import-not-at-top
  config = config_lib.with_data_seed(config, seed)
  if config.data.source == "h5ad" and "{seed}" in config.data.path:
    config.data.path = config.data.path.replace("{seed}", str(seed))
  return config


def _paths(workdir: str, seed: int) -> dict[str, pathlib.Path]:
  root = pathlib.Path(workdir) / f"seed{seed}"
  return {"root": root, "cells": root / "cells.h5ad", "split": root / "split.npz",
          "run": root / "run", "probs": root / "p_cm",
          "transfer_cells": root / "transfer_cells.h5ad"}


def variant_config(config: ml_collections.ConfigDict, method: str) -> ml_collections.ConfigDict:
  """The config of a cardiac_jax variant (``VARIANTS``)."""
  config = config.copy_and_resolve_references()
  for dotted, value in VARIANTS[method].items():
    *parents, leaf = dotted.split(".")
    node = config
    for part in parents:
      node = node[part]
    node[leaf] = value
  return config


def _run_dir(paths: dict[str, pathlib.Path], method: str) -> pathlib.Path:
  return paths["run"] if method == "cardiac_jax" else paths["root"] / f"run_{method}"


def transfer_config(config: ml_collections.ConfigDict, seed: int) -> ml_collections.ConfigDict:
  """The new sample of seed ``seed``: another simulation, nothing of it seen in training.

  ``config`` is the unseeded one: on an h5ad the new sample is the file of
  ``config.data.path`` with ``{seed}`` = seed + ``TRANSFER_SEED_OFFSET``.
  """
  if config.data.source == "h5ad" and "{seed}" not in config.data.path:
    raise app.UsageError(f"the transfer test needs a new sample, but config.data.path="
                         f"{config.data.path!r} names one file; put {{seed}} in it (the new "
                         f"sample of seed s is the file of s + {TRANSFER_SEED_OFFSET})")
  return _with_sample(config, seed + TRANSFER_SEED_OFFSET)


# ---------------------------------------------------------------- stages (one process each)


def _prepare(config: ml_collections.ConfigDict, paths: dict[str, pathlib.Path],
             transfer: bool = False) -> None:
  """The query cells (the prepared cells' rows, UNK dropped) and their split.

  ``transfer``: the seed's new sample instead (``transfer_config``), all its cells.
  """
  from cardiac_jax.data import fate  # pylint: disable=g-import-not-at-top
  from cardiac_jax.data import sources  # pylint: disable=g-import-not-at-top
  paths["root"].mkdir(parents=True, exist_ok=True)
  names, split = fate.cell_split_of(config.data)
  adata = sources.load_cells(config.data)
  adata = adata[names].copy()
  adata.write_h5ad(paths["transfer_cells" if transfer else "cells"])
  if not transfer:
    np.savez(paths["split"], obs_names=names, split=split)


def _training_cells(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The fate dataset's last cells and labels per split (the labels every method learns)."""
  from cardiac_jax.data import dataset  # pylint: disable=g-import-not-at-top
  ds = dataset.build_dataset(config.data, progress=False)
  n_pcs = int(ds.meta["n_pcs"])
  return {"x": ds.x[:, -1, :n_pcs + 1], "y": ds.y, "split": ds.split,
          "rows": ds.source_index[:, -1], "class_names": ds.class_names,
          "targets": ds.targets}


def _soft_rows(x: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, ...]:
  """Every row once per class, weighted by its target: the weighted log-loss of these
  rows is the cross-entropy against the soft targets (sklearn takes no soft labels)."""
  c = targets.shape[1]
  return (np.repeat(x, c, axis=0), np.tile(np.arange(c), len(x)), targets.ravel())


def _fit_logreg(x: np.ndarray, y: np.ndarray, split: np.ndarray, seed: int,
                targets: np.ndarray | None = None) -> Any:
  """Standardised logistic regression; C by validation accuracy (the baselines' grid).

  With soft ``targets`` (exact fate labels) it fits their cross-entropy and
  chooses C by the validation cross-entropy instead.
  """
  import threadpoolctl  # pylint: disable=g-import-not-at-top
  from sklearn import linear_model  # pylint: disable=g-import-not-at-top
  from sklearn import pipeline  # pylint: disable=g-import-not-at-top
  from sklearn import preprocessing  # pylint: disable=g-import-not-at-top
  from cardiac_jax import baselines  # pylint: disable=g-import-not-at-top
  best, best_acc = None, -np.inf
  with threadpoolctl.threadpool_limits(baselines.MAX_THREADS):
    for c in baselines.LOGREG_C:
      clf = pipeline.make_pipeline(
          preprocessing.StandardScaler(),
          linear_model.LogisticRegression(C=c, max_iter=2000, random_state=seed))
      if targets is None:
        clf.fit(x[split == 0], y[split == 0])
        acc = float(np.mean(clf.predict(x[split == 1]) == y[split == 1]))
      else:
        xs, ys, ws = _soft_rows(x[split == 0], targets[split == 0])
        clf.fit(xs, ys, logisticregression__sample_weight=ws)
        proba = np.clip(clf.predict_proba(x[split == 1]), 1e-12, 1.0)
        acc = float(np.sum(targets[split == 1] * np.log(proba)))   # minus the cross-entropy
      if acc > best_acc:
        best, best_acc = clf, acc
  return best


def _first_column(clf: Any, x: np.ndarray) -> np.ndarray:
  """P of class 0, the first terminal population (``positive_class``)."""
  proba = clf.predict_proba(x)
  return proba[:, list(clf.classes_).index(0)]


def _priming_score(adata: Any) -> np.ndarray | None:
  """Mean log1p(CP10k) of the CM-priming genes minus the CF-priming genes' (None: absent)."""
  import scipy.sparse as sp  # pylint: disable=g-import-not-at-top
  from cardiac_jax.data import simulator  # pylint: disable=g-import-not-at-top
  genes = [g for g in simulator.PRIMING if g in set(adata.var_names)]
  if len(genes) < len(simulator.PRIMING):
    return None
  x = adata.X
  lib = np.asarray(x.sum(axis=1)).ravel()
  sub = x[:, [adata.var_names.get_loc(g) for g in genes]]
  sub = sub.toarray() if sp.issparse(sub) else np.asarray(sub)
  expr = np.log1p(sub / np.maximum(lib, 1)[:, None] * 1e4)
  sign = np.asarray([simulator.PRIMING[g] for g in genes])
  return expr[:, sign > 0].mean(axis=1) - expr[:, sign < 0].mean(axis=1)


def _neighbors(adata: Any, n_neighbors: int, n_pcs: int) -> None:
  """``sc.pp.neighbors`` as by default, with pynndescent's graph handed over as csr_matrix.

  From 8,192 cells scanpy 1.11.5 uses pynndescent, whose csr_array lacks the
  ``getnnz`` scanpy calls under scipy 1.16 (AttributeError); the same
  transformer, with scanpy's default trees and iterations, returning csr_matrix.
  """
  import pynndescent  # pylint: disable=g-import-not-at-top
  import scanpy as sc  # pylint: disable=g-import-not-at-top
  import scipy.sparse as sp  # pylint: disable=g-import-not-at-top

  class CsrTransformer(pynndescent.PyNNDescentTransformer):

    def fit_transform(self, X, y=None, **kwargs):  # pylint: disable=invalid-name
      return sp.csr_matrix(super().fit_transform(X, y, **kwargs))

    def transform(self, X, y=None):  # pylint: disable=invalid-name
      return sp.csr_matrix(super().transform(X, y))

  n = adata.n_obs
  if n < 8192:        # scanpy's exact (sklearn) path, which works as it is
    sc.pp.neighbors(adata, n_neighbors=n_neighbors, n_pcs=n_pcs)
    return
  transformer = CsrTransformer(n_neighbors=n_neighbors, metric="euclidean",
                               n_trees=min(64, 5 + round(n ** 0.5 / 20.0)),
                               n_iters=max(5, round(np.log2(n))))
  sc.pp.neighbors(adata, n_pcs=n_pcs, transformer=transformer)


def _dpt(adata: Any, time_key: str, pseudotime_key: str) -> dict[str, Any]:
  """scanpy's diffusion pseudotime into ``obs[pseudotime_key]``, for data without one.

  Root: among the cells of the earliest day (``obs[time_key]``), the most extreme
  on the first diffusion component in the direction that day lies (a usual DPT
  root); on the neighbour graph already in ``adata``.
  """
  import scanpy as sc  # pylint: disable=g-import-not-at-top
  sc.tl.diffmap(adata)
  dc1 = np.asarray(adata.obsm["X_diffmap"])[:, 1]
  days = adata.obs[time_key].astype(str).to_numpy()
  first = min(set(days), key=_day_key)
  early = np.flatnonzero(days == first)
  direction = 1.0 if np.median(dc1[early]) >= np.median(dc1) else -1.0
  adata.uns["iroot"] = int(early[np.argmax(direction * dc1[early])])
  sc.tl.dpt(adata)
  adata.obs[pseudotime_key] = adata.obs["dpt_pseudotime"].to_numpy()
  return {"pseudotime": f"scanpy dpt, root {adata.obs_names[adata.uns['iroot']]} (day {first})"}


def _cellrank(adata: Any, kernel_name: str, population_key: str,
              terminal: Sequence[str] = ("CM", "CF"), pseudotime_key: str = "dpt_pseudotime",
              time_key: str = "diffday") -> tuple[np.ndarray, dict[str, Any]]:
  """P(terminal[0]) of every cell from CellRank 2 (the calls of the module docstring).

  Without ``obs[pseudotime_key]`` the PseudotimeKernel gets scanpy's DPT (``_dpt``);
  the second value says which pseudotime was used.
  """
  import cellrank as cr  # pylint: disable=g-import-not-at-top
  import scanpy as sc  # pylint: disable=g-import-not-at-top
  sc.pp.normalize_total(adata, target_sum=1e4)
  sc.pp.log1p(adata)
  sc.pp.highly_variable_genes(adata, n_top_genes=min(2000, adata.n_vars))
  sc.pp.pca(adata, n_comps=50, mask_var="highly_variable")
  _neighbors(adata, n_neighbors=30, n_pcs=50)
  info: dict[str, Any] = {}
  if kernel_name == "cellrank_pt":
    if pseudotime_key not in adata.obs.columns:
      info = _dpt(adata, time_key, pseudotime_key)
    kernel = cr.kernels.PseudotimeKernel(adata, time_key=pseudotime_key)
  else:
    kernel = cr.kernels.ConnectivityKernel(adata)
  kernel.compute_transition_matrix(show_progress_bar=False) if kernel_name == "cellrank_pt" \
      else kernel.compute_transition_matrix()
  estimator = cr.estimators.GPCCA(kernel)
  pops = adata.obs[population_key].astype(str).to_numpy()
  names = np.asarray(adata.obs_names)
  estimator.set_terminal_states({str(t): list(names[pops == str(t)]) for t in terminal})
  try:
    estimator.compute_fate_probabilities(show_progress_bar=False)
  except ValueError as e:   # gmres at its default tol (1e-6) can leave tiny negatives
    if "negative" not in str(e):
      raise
    logging.warning("CellRank: %s; retrying with tol=%g", e, CELLRANK_RETRY_TOL)
    estimator.compute_fate_probabilities(show_progress_bar=False, tol=CELLRANK_RETRY_TOL)
  lineage = estimator.fate_probabilities
  return np.asarray(lineage[[str(terminal[0])]].X).ravel().astype(np.float32), info


def run_stage(config: ml_collections.ConfigDict, stage: str, seed: int, workdir: str,
              n_walks: int) -> None:
  """One method (or ``prepare``) of one seed; P(CM) per query cell into ``p_cm/<stage>.npy``."""
  import anndata as ad  # pylint: disable=g-import-not-at-top
  from cardiac_jax import export  # pylint: disable=g-import-not-at-top
  from cardiac_jax import prediction  # pylint: disable=g-import-not-at-top
  from cardiac_jax import train  # pylint: disable=g-import-not-at-top
  unseeded, config = config, seed_config(config, seed)
  paths = _paths(workdir, seed)
  if stage in ("prepare", "prepare_transfer"):
    _prepare(transfer_config(unseeded, seed) if stage == "prepare_transfer" else config, paths,
             transfer=stage == "prepare_transfer")
    return
  p_key = f"cardiac_jax_p_{positive_class(config)}"
  adata = ad.read_h5ad(paths["transfer_cells" if stage in TRANSFER else "cells"])
  pop_key = config.data.population_key
  timings = {}
  if stage in VARIANTS:
    t0 = time.perf_counter()
    train.train_and_evaluate(variant_config(config, stage), str(_run_dir(paths, stage)))
    timings["train_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    model = export.load_model(_run_dir(paths, stage) / "model")
    prediction.predict(adata, model, time_key=config.data.time_key, n_walks=n_walks,
                       seed=seed, progress=False)
    timings["predict_s"] = time.perf_counter() - t0
    p = np.asarray(adata.obs[p_key], np.float32)
  elif stage == "transfer_cardiac_jax":   # the seed's trained model, no refit
    t0 = time.perf_counter()
    model = export.load_model(paths["run"] / "model")
    prediction.predict(adata, model, time_key=config.data.time_key, n_walks=n_walks,
                       seed=seed, progress=False)
    timings["predict_s"] = time.perf_counter() - t0
    p = np.asarray(adata.obs[p_key], np.float32)
  elif stage in ("logreg", "priming"):
    t0 = time.perf_counter()
    cells = _training_cells(config)
    timings["labels_s"] = time.perf_counter() - t0
    if stage == "logreg":
      from cardiac_jax.data import sequences  # pylint: disable=g-import-not-at-top
      from cardiac_jax.data import sources  # pylint: disable=g-import-not-at-top
      # The build's own embedding of the query cells (same rows, train-fitted PCA).
      prepared, _, _, pcs = sources.embedded_cells(config.data)
      x = np.c_[pcs, sequences.time_feature(prepared.time_index, len(prepared.time_labels))]
      clf = _fit_logreg(cells["x"], cells["y"], cells["split"], seed, cells["targets"])
      p = _first_column(clf, x).astype(np.float32)
    else:
      score = _priming_score(adata)
      if score is None:
        logging.warning("priming genes absent (not the simulator): no priming score")
        return
      clf = _fit_logreg(score[cells["rows"], None], cells["y"], cells["split"], seed,
                        cells["targets"])
      p = _first_column(clf, score[:, None]).astype(np.float32)
  elif stage == "cellrank_pt_test":    # the test split's cells alone, a graph of 10 %
    test = np.load(paths["split"])["split"] == 2
    p = np.full(adata.n_obs, np.nan, np.float32)
    p[test], info = _cellrank(adata[test].copy(), "cellrank_pt", pop_key,
                              tuple(config.data.fate.terminal),
                              scoring(config)["pseudotime_key"], config.data.time_key)
    timings.update(info)
  elif stage in CELLRANK:
    p, info = _cellrank(adata, "cellrank_pt" if stage == "transfer_cellrank_pt" else stage,
                        pop_key, tuple(config.data.fate.terminal),
                        scoring(config)["pseudotime_key"], config.data.time_key)
    timings.update(info)
  elif stage in ABSORPTION:
    from cardiac_jax.data import fate  # pylint: disable=g-import-not-at-top
    from cardiac_jax.data import sources  # pylint: disable=g-import-not-at-top
    cells, cell_split, _, pcs = sources.embedded_cells(config.data)
    rule, split_id = ABSORPTION[stage]
    rows = (np.arange(cell_split.size) if split_id is None
            else np.flatnonzero(cell_split == split_id))
    t0 = time.perf_counter()
    p = fate.graph_probabilities(config.data, cells, pcs, rows, rule)[:, 0].astype(np.float32)
    timings["solve_s"] = time.perf_counter() - t0   # kNN tables + exact solve
  else:
    raise app.UsageError(f"unknown stage {stage!r}; choose prepare or one of {METHODS}")
  paths["probs"].mkdir(parents=True, exist_ok=True)
  np.save(paths["probs"] / f"{stage}.npy", p)
  (paths["probs"] / f"{stage}.json").write_text(json.dumps(timings))


# ---------------------------------------------------------------- scoring


def score(p: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
  """ROC AUC and accuracy (P > 0.5) of P(CM) against the true fate (leans CM: True / 1.0).

  Cells with a NaN P or a NaN truth (a tie left out, ``truth_of``) are not scored.
  """
  from sklearn import metrics  # pylint: disable=g-import-not-at-top
  truth = np.asarray(truth, np.float64)
  ok = ~np.isnan(p) & ~np.isnan(truth)
  p, truth = p[ok], truth[ok] > 0.5
  both = truth.any() and (~truth).any()
  return {"n": int(p.size), "auc": float(metrics.roc_auc_score(truth, p)) if both else None,
          "acc": float(np.mean((p > 0.5) == truth)) if p.size else None}


def agreement(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
  """Spearman correlation of two P(CM) and the fraction of cells called alike (> 0.5)."""
  from scipy import stats  # pylint: disable=g-import-not-at-top
  ok = ~(np.isnan(a) | np.isnan(b))
  if ok.sum() < 3:
    return {"n": int(ok.sum()), "spearman": None, "same_call": None}
  return {"n": int(ok.sum()), "spearman": float(stats.spearmanr(a[ok], b[ok]).statistic),
          "same_call": float(np.mean((a[ok] > 0.5) == (b[ok] > 0.5)))}


def score_seed(config: ml_collections.ConfigDict, workdir: str, seed: int,
               methods: Sequence[str]) -> dict[str, Any]:
  """Scores of every method's P(CM) on the seed's TEST-split pre-branch cells."""
  import anndata as ad  # pylint: disable=g-import-not-at-top
  from cardiac_jax.data import fate  # pylint: disable=g-import-not-at-top
  paths = _paths(workdir, seed)
  obs = ad.read_h5ad(paths["cells"], backed="r").obs
  split = np.load(paths["split"])["split"]
  pre_branch = tuple(config.data.fate.pre_branch)
  pops = obs[config.data.population_key].astype(str).to_numpy()
  days = obs[config.data.time_key].astype(str).to_numpy()
  pre = fate.pre_branch_cells(pops, pre_branch)
  held_out = (split == 2) & pre
  truth = truth_of(obs, config)
  headline = pops == scoring(config)["headline"]
  probs = {m: np.load(paths["probs"] / f"{m}.npy") for m in methods
           if m not in TRANSFER and (paths["probs"] / f"{m}.npy").exists()}
  out: dict[str, Any] = {"seed": seed, "n_held_out": int(held_out.sum()),
                         "n_held_out_prog": int(np.sum(held_out & headline)),
                         "methods": {}}
  if truth is not None and np.isnan(truth).any():
    out["n_held_out_prog_undecided"] = int(np.sum(held_out & headline & np.isnan(truth)))
  for m, p in probs.items():
    entry: dict[str, Any] = {}
    if truth is not None:
      # labels_train: the training labels, scored on the training split's cells
      scored = ((split == 0) & pre) if m in TRAIN_SCORED else held_out
      prog = scored & headline
      entry["prog"] = score(p[prog], truth[prog])
      entry["pre_branch"] = score(p[scored], truth[scored])
      entry["per_day"] = {d: score(p[prog & (days == d)], truth[prog & (days == d)])
                          for d in sorted(set(days[prog]), key=_day_key)}
    out["methods"][m] = entry
  out["transfer"] = score_transfer(config, paths, methods)
  if truth is None:       # real data: agreement with cardiac_jax on the held-out cells
    ref = probs.get("cardiac_jax")
    for m, p in probs.items():
      if ref is not None and m != "cardiac_jax":
        out["methods"][m]["agreement_with_cardiac_jax"] = agreement(ref[held_out], p[held_out])
  return out


def score_transfer(config: ml_collections.ConfigDict, paths: dict[str, pathlib.Path],
                   methods: Sequence[str]) -> dict[str, Any]:
  """Scores on the seed's new sample: ALL its PROG (and pre-branch) cells, none trained on."""
  import anndata as ad  # pylint: disable=g-import-not-at-top
  from cardiac_jax.data import fate  # pylint: disable=g-import-not-at-top
  done = [m for m in methods if m in TRANSFER and (paths["probs"] / f"{m}.npy").exists()]
  if not done:
    return {}
  obs = ad.read_h5ad(paths["transfer_cells"], backed="r").obs
  truth = truth_of(obs, config)
  if truth is None:
    return {}
  pops = obs[config.data.population_key].astype(str).to_numpy()
  pre = fate.pre_branch_cells(pops, tuple(config.data.fate.pre_branch))
  prog = pops == scoring(config)["headline"]
  out: dict[str, Any] = {"n_prog": int(prog.sum()), "n_pre_branch": int(pre.sum())}
  for m in done:
    p = np.load(paths["probs"] / f"{m}.npy")
    out[m] = {"prog": score(p[prog], truth[prog]), "pre_branch": score(p[pre], truth[pre])}
  return out


def _day_key(label: str) -> tuple[float, str]:
  digits = "".join(ch for ch in label if ch.isdigit() or ch == ".")
  try:
    return float(digits), label
  except ValueError:
    return float("inf"), label


# ---------------------------------------------------------------- orchestration


def _run_child(args: list[str]) -> dict[str, float]:
  """Runs this study's one stage in a child (``python -m``); its wall seconds and peak RSS (MB)."""
  cost = resources.run_measured([sys.executable, "-m", "cardiac_jax.studies.fate_benchmark"]
                                + args)
  if cost["returncode"] != 0:
    raise RuntimeError(f"stage {args} failed with exit code {cost['returncode']}")
  return {"wall_s": cost["wall_s"], "peak_rss_mb": cost["peak_rss_mb"]}


def _cellrank_available() -> str:
  try:
    import cellrank  # pylint: disable=g-import-not-at-top
    return str(cellrank.__version__)
  except ImportError:
    return ""


def _previous_costs(path: str) -> dict[int, dict[str, Any]]:
  if not path:
    return {}
  previous = json.loads(pathlib.Path(path).read_text())
  return {int(s["seed"]): s.get("costs", {}) for s in previous["seeds"]}


def run_benchmark(config: ml_collections.ConfigDict, seeds: Sequence[int],
                  methods: Sequence[str], workdir: str, out_prefix: str,
                  n_walks: int = 8, overrides: Sequence[str] = (),
                  reuse: str = "") -> dict[str, Any]:
  """Every seed's stages in child processes, then the scores, the table and the figure.

  ``reuse``: a previous results JSON; its measured stages are kept (see --reuse).
  """
  previous = _previous_costs(reuse)
  unknown = [m for m in methods if m not in METHODS]
  if unknown:
    raise app.UsageError(f"unknown methods {unknown}; choose from {METHODS}")
  cr_version = _cellrank_available()
  notes = []
  if not cr_version and any(m in CELLRANK for m in methods):
    notes.append("cellrank not installed (pip install -e \".[peers]\"): CellRank rows skipped")
    methods = [m for m in methods if m not in CELLRANK]
  common = [f"--workdir={workdir}", f"--n_walks={n_walks}", *overrides]
  results = {"seeds": [], "methods": list(methods), "cellrank_version": cr_version,
             "notes": notes, "config": config.name, "scoring": scoring(config),
             "positive_class": positive_class(config),
             "command": " ".join(["python experiments/fate_benchmark.py"] + sys.argv[1:])}
  for seed in seeds:
    base = common + [f"--seed={seed}"]
    kept = {m: c for m, c in previous.get(seed, {}).items()
            if (_paths(workdir, seed)["probs"] / f"{m}.npy").exists()}
    if not (kept and _paths(workdir, seed)["split"].exists()):
      _run_child(base + ["--stage=prepare"])
    if any(m in TRANSFER and m not in kept for m in methods):
      _run_child(base + ["--stage=prepare_transfer"])
    costs = {}
    for m in methods:
      if m in kept:
        costs[m] = kept[m]
        logging.info("seed %d %s: kept from %s", seed, m, reuse)
        continue
      try:
        costs[m] = _run_child(base + [f"--stage={m}"])
      except RuntimeError as e:
        if m not in CELLRANK:
          raise
        # E.g. a pseudotime with NaN (GSE175634's dpt_pseudotime per lineage): say so.
        notes.append(f"seed {seed}: {m} failed ({e}); see its log above")
        continue
      extra = _paths(workdir, seed)["probs"] / f"{m}.json"
      if extra.exists():
        costs[m].update(json.loads(extra.read_text()))
      logging.info("seed %d %s: %.1f s, %.0f MB", seed, m, costs[m]["wall_s"],
                   costs[m]["peak_rss_mb"])
    scored = score_seed(config, workdir, seed, methods)
    scored["costs"] = costs
    results["seeds"].append(scored)
  results["machine"] = _machine()
  out_prefix = out_prefix or str(pathlib.Path(workdir) / "fate")
  write_results(results, out_prefix)
  return results


def _machine() -> dict[str, Any]:
  return {"cpu": common.cpu_model(), "cores": os.cpu_count(),
          "load_avg": list(os.getloadavg()), "date": time.strftime("%Y-%m-%d %H:%M UTC",
                                                                   time.gmtime())}


def _mean_se(values: list[float | None]) -> str:
  """Mean ± standard error (sample sd / sqrt(n)) of the values that are not None, 3 decimals."""
  mean, sd = common.mean_std(values, ddof=1)
  n = sum(v is not None for v in values)
  return common.fmt((mean, None if sd is None else sd / np.sqrt(max(n, 1))), 3)


def _walls(costs: list[dict[str, float]]) -> str:
  return ", ".join(f"{c['wall_s']:.0f}" for c in costs)


def write_results(results: dict[str, Any], out_prefix: str) -> dict[str, pathlib.Path]:
  """<prefix>.json, .md (tables) and .png (AUC per method and seed; per day)."""
  out = pathlib.Path(out_prefix)
  out.parent.mkdir(parents=True, exist_ok=True)
  paths = {"json": out.with_suffix(".json"), "md": out.with_suffix(".md"),
           "png": out.with_suffix(".png")}
  common.write_json(paths["json"], results)
  seeds = results["seeds"]
  methods = [m for m in results["methods"] if m not in TRANSFER]   # scored per seed
  has_truth = any("prog" in s["methods"].get(m, {}) for s in seeds for m in methods)
  sc = dict(SCORING, **results.get("scoring", {}))
  head = sc["headline"]
  on_train = [m for m in methods if m in TRAIN_SCORED]
  methods = [m for m in methods if m not in TRAIN_SCORED]
  lines = [f"# Fate probabilities of held-out pre-branch cells ({results['config']})", "",
           f"Machine: {results['machine']['cpu']}, {results['machine']['cores']} cores "
           f"(shared), {results['machine']['date']}. CellRank "
           f"{results['cellrank_version'] or 'not installed'}.", "",
           f"`{results.get('command', '')}`", ""]
  lines += [f"- {n}" for n in results["notes"]]
  if has_truth:
    lines += ["", f"Held-out = test-split cells; truth = {_truth_text(sc)}. Seeds "
              f"{[s['seed'] for s in seeds]}; held-out {head} cells per seed "
              f"{[s['n_held_out_prog'] for s in seeds]}, all pre-branch "
              f"{[s['n_held_out'] for s in seeds]}.", ""]
    if any("n_held_out_prog_undecided" in s for s in seeds):
      lines += [f"Held-out {head} cells left out as ties (truth exactly at the threshold) per "
                f"seed: {[s.get('n_held_out_prog_undecided', 0) for s in seeds]}.", ""]
    header = (f"| method | {head} AUC (mean ± se) | {head} AUC per seed | {head} accuracy | "
              "pre-branch AUC | pre-branch accuracy | wall s (per seed) | peak RSS MB |")
    lines += [header, "|---|---|---|---|---|---|---|---|"]
    lines += _score_rows(seeds, methods)
    lines += _paired_lines(seeds, methods, head)
    lines += _within_day_lines(seeds, methods, head)
    if _score_rows(seeds, on_train):
      lines += ["", f"Label quality: the training labels themselves against the truth, on the "
                f"TRAINING split's {head} cells (not held out; cells no walk reached are left "
                "out, n per seed: "
                f"{[s['methods'][on_train[0]]['prog']['n'] for s in seeds]}).", "",
                header, "|---|---|---|---|---|---|---|---|"]
      lines += _score_rows(seeds, on_train)
    lines += _transfer_lines(results)
    days = sorted({d for s in seeds for m in methods for d in s["methods"].get(m, {})
                   .get("per_day", {})}, key=_day_key)
    lines += ["", f"{head} per day: AUC / accuracy, mean over seeds (n = cells summed over "
              "seeds)", "", "| method | " + " | ".join(days) + " |",
              "|---|" + "---|" * len(days)]
    for m in methods:
      cells = []
      for d in days:
        per = [s["methods"].get(m, {}).get("per_day", {}).get(d) for s in seeds]
        per = [p for p in per if p]
        n = sum(p["n"] for p in per)
        cells.append(f"{_mean_se([p['auc'] for p in per]).split(' ±')[0]} / "
                     f"{_mean_se([p['acc'] for p in per]).split(' ±')[0]} (n={n})")
      lines.append(f"| {m} | " + " | ".join(cells) + " |")
  else:
    lines += ["", f"No `{sc['truth_key']}` in the data: agreement with cardiac_jax on the held-out "
              "pre-branch cells (Spearman of P(CM); fraction called alike).", "",
              "| method | Spearman per seed | same call per seed | wall s | peak RSS MB |",
              "|---|---|---|---|---|"]
    for m in methods:
      if m == "cardiac_jax":
        continue
      ag = [s["methods"].get(m, {}).get("agreement_with_cardiac_jax") for s in seeds]
      if not all(ag) or not all(m in s["costs"] for s in seeds):
        continue
      costs = [s["costs"][m] for s in seeds]
      lines.append(f"| {LABELS[m]} | {', '.join(common.fmt(a['spearman'], 3) for a in ag)} | "
                   f"{', '.join(common.fmt(a['same_call'], 3) for a in ag)} | "
                   f"{_walls(costs)} | "
                   f"{max(c['peak_rss_mb'] for c in costs):.0f} |")
  lines += ["", "Wall time and peak RSS are each method's own process (cardiac_jax: "
            "training + predict; logreg / priming: loading the labelled sequences, "
            "embedding, fitting; CellRank: scanpy preprocessing, kNN graph, kernel, fate "
            "probabilities)."]
  fileio.atomic_write_text(paths["md"], "\n".join(lines) + "\n")
  _plot(results, paths["png"], has_truth)
  return paths


def _truth_text(sc: dict[str, Any]) -> str:
  """How the truth is defined, as the table's header says it."""
  if (sc["truth_key"], sc["truth_threshold"], sc["truth_ties"]) == ("fate_bias", 0.0,
                                                                     "negative"):
    return "sign of `fate_bias`"
  ties = ("left out, not scored" if sc["truth_ties"] == "drop"
          else "counted as not leaning")
  return (f"`{sc['truth_key']}` > {sc['truth_threshold']:g} (ties at exactly "
          f"{sc['truth_threshold']:g} {ties})")


def _score_rows(seeds: list[dict[str, Any]], methods: Sequence[str]) -> list[str]:
  """One table row per method scored on every seed: AUC / accuracy, wall and peak."""
  lines = []
  for m in methods:
    rows = [s["methods"].get(m) for s in seeds]
    if not all(rows) or not all(m in s["costs"] for s in seeds):
      continue
    costs = [s["costs"][m] for s in seeds]
    lines.append(
        f"| {LABELS[m]} | {_mean_se([r['prog']['auc'] for r in rows])} | "
        f"{', '.join(common.fmt(r['prog']['auc'], 3) for r in rows)} | "
        f"{_mean_se([r['prog']['acc'] for r in rows])} | "
        f"{_mean_se([r['pre_branch']['auc'] for r in rows])} | "
        f"{_mean_se([r['pre_branch']['acc'] for r in rows])} | "
        f"{_walls(costs)} | "
        f"{max(c['peak_rss_mb'] for c in costs):.0f} |")
  return lines


def paired_differences(seeds: list[dict[str, Any]], a: str, b: str) -> list[float] | None:
  """Per seed, headline AUC of ``a`` minus ``b`` (same held-out cells); None if one is missing."""
  diffs = []
  for s in seeds:
    pa = s["methods"].get(a, {}).get("prog", {}).get("auc")
    pb = s["methods"].get(b, {}).get("prog", {}).get("auc")
    if pa is None or pb is None:
      return None
    diffs.append(pa - pb)
  return diffs


def within_day_auc(entry: dict[str, Any]) -> float | None:
  """The per-day headline AUCs of one method and seed, weighted by their cells.

  Pooled over days, an AUC also asks that P be comparable ACROSS days; this
  one asks only for the order within each day (days with one class are left
  out). From ``entry["per_day"]`` (``score_seed``).
  """
  days = [d for d in entry.get("per_day", {}).values() if d["auc"] is not None]
  n = sum(d["n"] for d in days)
  return sum(d["n"] * d["auc"] for d in days) / n if n else None


def _within_day_lines(seeds: list[dict[str, Any]], methods: Sequence[str],
                      head: str) -> list[str]:
  """Within-day AUC per method (mean ± se, per seed) and the fate model minus each."""
  rows = []
  for m in methods:
    vals = [within_day_auc(s["methods"].get(m, {})) for s in seeds]
    if any(v is None for v in vals):
      continue
    ref = [within_day_auc(s["methods"].get("cardiac_jax", {})) for s in seeds]
    diff = ("" if m == "cardiac_jax" or any(r is None for r in ref)
            else _mean_se([r - v for r, v in zip(ref, vals)]))
    rows.append(f"| {m} | {_mean_se(vals)} | {', '.join(f'{v:.3f}' for v in vals)} | {diff} |")
  if not rows:
    return []
  return ["", f"Within-day {head} AUC: each day's AUC weighted by its cells (the order of P "
          "within a day only; the pooled AUC above also needs P comparable across days):", "",
          "| method | within-day AUC (mean ± se) | per seed | cardiac_jax − method |",
          "|---|---|---|---|", *rows]


def _paired_lines(seeds: list[dict[str, Any]], methods: Sequence[str], head: str) -> list[str]:
  """The fate model minus each other method, paired by seed: mean ± se and per seed."""
  rows = []
  for m in methods:
    diffs = None if m == "cardiac_jax" else paired_differences(seeds, "cardiac_jax", m)
    if diffs:
      rows.append(f"| cardiac_jax − {m} | {_mean_se(diffs)} | "
                  f"{', '.join(f'{d:+.3f}' for d in diffs)} |")
  if not rows:
    return []
  return ["", f"Paired by seed, {head} AUC of the fate model minus each method (mean ± se):", "",
          "| difference | mean ± se | per seed |", "|---|---|---|", *rows]


def _transfer_lines(results: dict[str, Any]) -> list[str]:
  """The transfer table: each seed's model on a new sample vs CellRank recomputed there."""
  seeds = results["seeds"]
  done = [m for m in TRANSFER if all(m in s.get("transfer", {}) for s in seeds)]
  if not done:
    return []
  head = dict(SCORING, **results.get("scoring", {}))["headline"]
  lines = ["", f"Transfer: each seed's model predicts a NEW sample (simulator seed + "
           f"{TRANSFER_SEED_OFFSET}, no refit); CellRank recomputed on that sample alone. All "
           f"its {head} cells per seed {[s['transfer']['n_prog'] for s in seeds]}.", "",
           f"| method | {head} AUC (mean ± se) | {head} AUC per seed | {head} accuracy | "
           "pre-branch AUC | wall s (per seed) | peak RSS MB |", "|---|---|---|---|---|---|---|"]
  for m in done:
    rows = [s["transfer"][m] for s in seeds]
    costs = [s["costs"][m] for s in seeds if m in s["costs"]]
    lines.append(
        f"| {LABELS[m]} | {_mean_se([r['prog']['auc'] for r in rows])} | "
        f"{', '.join(common.fmt(r['prog']['auc'], 3) for r in rows)} | "
        f"{_mean_se([r['prog']['acc'] for r in rows])} | "
        f"{_mean_se([r['pre_branch']['auc'] for r in rows])} | {_walls(costs)} | "
        f"{max((c['peak_rss_mb'] for c in costs), default=0):.0f} |")
  if len(done) == 2:
    pairs = [(s["transfer"][done[0]]["prog"]["auc"], s["transfer"][done[1]]["prog"]["auc"])
             for s in seeds]
    if all(a is not None and b is not None for a, b in pairs):
      diffs = [a - b for a, b in pairs]
      lines += ["", f"Paired by seed, {done[0]} − {done[1]}: {_mean_se(diffs)} "
                f"({', '.join(f'{d:+.3f}' for d in diffs)})."]
  return lines


def _plot(results: dict[str, Any], path: pathlib.Path, has_truth: bool) -> None:
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  seeds = results["seeds"]
  methods = [m for m in results["methods"] if m not in TRANSFER and m not in TRAIN_SCORED]
  head = dict(SCORING, **results.get("scoring", {}))["headline"]
  fig = Figure(figsize=(11, 4))
  FigureCanvasAgg(fig)
  ax1, ax2 = fig.subplots(1, 2)
  if has_truth:
    for i, m in enumerate(methods):
      vals = [s["methods"].get(m, {}).get("prog", {}).get("auc") for s in seeds]
      vals = [v for v in vals if v is not None]
      ax1.scatter([i] * len(vals), vals, color=f"C{i}")
      if vals:
        ax1.hlines(np.mean(vals), i - 0.3, i + 0.3, color=f"C{i}")
      days = sorted({d for s in seeds for d in s["methods"].get(m, {}).get("per_day", {})},
                    key=_day_key)
      mean = [np.mean([s["methods"][m]["per_day"][d]["auc"] for s in seeds
                       if d in s["methods"].get(m, {}).get("per_day", {})
                       and s["methods"][m]["per_day"][d]["auc"] is not None] or [np.nan])
              for d in days]
      ax2.plot(days, mean, marker="o", color=f"C{i}", label=m)
    positive = results.get("positive_class", "CM")
    ax1.set(ylabel=f"ROC AUC, held-out {head} cells", title=f"P({positive}) vs true fate, per seed")
    ax2.set(ylabel="ROC AUC (mean over seeds)", title=f"held-out {head} cells per day")
    ax2.legend(fontsize=8)
  else:
    for i, m in enumerate(methods):
      vals = [s["methods"].get(m, {}).get("agreement_with_cardiac_jax", {}).get("spearman")
              for s in seeds]
      vals = [v for v in vals if v is not None]
      ax1.scatter([i] * len(vals), vals, color=f"C{i}")
    ax1.set(ylabel="Spearman with cardiac_jax", title="agreement on held-out cells")
    ax2.axis("off")
  ax1.set_xticks(range(len(methods)), methods, rotation=20, fontsize=8)
  fig.tight_layout()
  fileio.save_figure(fig, path)


def define_flags() -> None:
  """The script's flags (defined here, not at import: cardiac_jax.main defines --config too)."""
  config_flags.DEFINE_config_file(
      "config", "configs/fate.py", "Fate config; :quick for the tiny variant.",
      lock_config=False)
  flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds (simulator, split, walks, training).")
  flags.DEFINE_list(
      "methods", ["cardiac_jax", "cardiac_jax_walks", "logreg", "priming", "cellrank_pt",
                  "cellrank_ck", "transfer_cardiac_jax", "transfer_cellrank_pt"],
      f"Methods to run, of {list(METHODS)} (CellRank ones are skipped with a note when "
      "cellrank is not installed; transfer_cardiac_jax needs cardiac_jax first; "
      "absorption_all, absorption_test, forward_all, cellrank_pt_test, labels_train and "
      "labels_train_forward are ablations, never defaults).")
  flags.DEFINE_string("workdir", "runs/fate_bench", "Root of the per-seed runs.")
  flags.DEFINE_string("out", "", "Prefix of the .md/.json/.png results ('' = <workdir>/fate).")
  flags.DEFINE_integer("n_walks", 8, "cardiac_jax.predict walks per cell.")
  flags.DEFINE_string(
      "reuse", "", "A previous results .json of the same --workdir: the stages it measured "
      "whose P(CM) files are still there are kept with their costs, the rest are run.")
  flags.DEFINE_string("stage", "", "internal: run one method of one seed in this process.")
  flags.DEFINE_integer("seed", 0, "internal: the seed of --stage.")


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  config = FLAGS.config
  if FLAGS.stage:
    run_stage(config, FLAGS.stage, FLAGS.seed, FLAGS.workdir, FLAGS.n_walks)
    return
  # Children get the same config file and overrides.
  overrides = [a for a in sys.argv[1:] if a.startswith("--config")]
  results = run_benchmark(config, [int(s) for s in FLAGS.seeds], list(FLAGS.methods),
                          FLAGS.workdir, FLAGS.out, FLAGS.n_walks, overrides,
                          reuse=FLAGS.reuse)
  out = FLAGS.out or str(pathlib.Path(FLAGS.workdir) / "fate")
  print(pathlib.Path(out).with_suffix(".md").read_text())
  del results


if __name__ == "__main__":
  define_flags()
  app.run(main)
