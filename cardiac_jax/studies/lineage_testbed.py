"""A clonal test bed we did not write: barcoded, destructively sampled lineage-simulator trees.

  pip install -e ".[lineage]"        # lineage-simulator==0.1.2 (brings numba and scanpy)
  python -m cardiac_jax.studies.lineage_testbed --out=/work/data/lineage_bed.h5ad \
      --n_founders=2 --seed=0        # ~3K cells; --n_founders=12 for ~20K
  python -m cardiac_jax.studies.lineage_testbed --out=bed_seed0.h5ad --n_founders=18 \
      --holdout_founders=6 --holdout_out=bed_seed100.h5ad --nocheck   # + a second sample
                                     # (the fate benchmark's transfer test, configs/fate_lineage.py)

Why: the clonal path's embedded simulator shares its authors' assumptions with
the model, so a clone-fate score on it proves little. lineage-simulator
(``lineagesim``, Lai; MIT; 0.1.2 pinned in the ``lineage`` extra, where it
installs beside the project's own pins) grows *division trees* whose clades
commit to one of two fates, and gives every node of the tree a transcriptome, so
a clone's early cells carry a noisy, heritable trace of its descendants' fate.
What it does (read from its 0.1.2 source, ``lineagesim/simulator.py``):

1. Tree: from one root, up to 25 rounds; in each round every active cell divides
   with a probability tuned to reach the requested node count (0.3-0.9, less in
   later rounds), quiescent leaves are woken when fewer than 10 cells are
   active. So a cell's time (round of birth) and its generation (depth) differ.
2. Fate: the tree is cut into clades at ``commit_depth`` (or at shallower
   leaves); each clade's fate is a fair coin, inherited by all its descendants.
   An uncommitted ancestor's ``fate_prob`` is the fraction of its committed
   descendants with fate 1.
3. State: 32 cell identity factors do Brownian motion down the tree (``sigma``
   per division) plus a drift ``beta * M(depth) * (2 fate_prob - 1)`` toward the
   node's fate, M = 0.4 / 0.8 / 1.2 for shallow / pre-commitment /
   post-commitment depths.
4. Expression (SymSim-like): each gene's kinetic rates (kon, koff, s) are
   logistic functions of sparse random combinations of the factors; true counts
   are beta-Poisson; technical noise is binomial capture (10 %), PCR and UMI
   counting, downsampled to ~5,000 UMIs per cell.

It has no barcodes, no sampling and no calendar: the simulator returns one
snapshot of every node ever born. This driver adds them:

- ``n_founders`` trees from one simulator instance (so all share the gene
  programmes, drawn once): each tree is one founding cell of the culture.
- Day = division round - ``barcode_round``. At the barcoding round each living
  cell gets its own barcode with probability ``barcode_efficiency``; its
  descendants form a clone (the rest carry ``clone == ""``).
- On each sampling round every living cell not yet removed is taken with
  probability ``fraction``; a taken cell and its whole future subtree leave the
  culture (destructive sampling). The last sampling round is the simulator's
  final round, whose living cells are leaves and all carry a fate: the fate day.
- Expression is drawn only for the sampled cells: a node's counts depend only
  on its own factors and the shared gene programmes, so this is the simulator's
  distribution at the cost of the sampled cells, not of the whole tree. This
  calls two private methods (``_assign_fate``, ``_compute_fate_bias``) of the
  exactly pinned 0.1.2.

The h5ad: raw counts in X (CSR int32); ``obs["day"]`` ordered strings ("d2",
"d4", ...); ``obs["cell_type"]`` "progenitor" before commitment, else the fate
("fateA" = simulator fate 0, "fateB" = fate 1); ``obs["clone"]`` ("" without a
barcode); ``obsm["X_clone"]`` (CSR float32 0/1, cells x clones, names in
``uns["clone_names"]``); latents for tests only: ``fate_prob_B`` (the node's
true fraction of fate-1 descendants), ``depth``, ``round``, ``founder``,
``node``; the settings in ``uns["lineage_testbed"]`` (JSON).

Headroom (``--check``, `headroom`): clones labelled by the majority of their
fate-day cells; a logistic regression on 30 PCs of log-normalised counts,
trained per early cell on its clone's label, 5-fold over clones; AUC of one
random early cell per clone vs the mean log-odds over the clone's early cells.
Defaults, 12 founders, seed 0 (20,628 cells, 3,505 clones, days d2 / d4 / d8 /
d16; 2,072 labelled clones with early cells):

  early cells         | one cell | pooled | clones >= 2 early: one / pooled | latent clone
  d2, d4, d8          | 0.693    | 0.728  | 0.703 / 0.748                   | 0.832
  d2 only             | 0.664    | 0.668  | 0.624 / 0.640                   | 0.822

"latent clone" is the AUC of the barcoded cell's true fraction of fate-B
descendants: what remains above it is fate-day sampling noise; the gap from
the pooled readout to it (~0.10) is what a model of the counts could still
gain. With 2 founders (3,295 cells) the same reads 0.699 / 0.726 (latent 0.84);
``commit_depth=9`` makes it easier (0.752 / 0.780, latent 0.90),
``commit_depth=12`` nearly unreadable (0.535 / 0.549). Pooling gains little
here because a clone's cells share only their barcoded ancestor's state: the
factors diverge by a Brownian step per division after it.

Costs (2 shared cores): growth and factors ~0.4 s per founder of 20K nodes;
expression ~4 ms per sampled cell at 1,000 genes (the technical noise is a
Python loop per cell): 2 founders (3.3K cells) 19 s, 12 founders (20.6K
cells) 120-230 s by the machine's load, peak RSS 1.4 GB (/usr/bin/time).
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import pathlib
import time
from typing import Any, Sequence

from absl import logging
import numpy as np
import pandas as pd
import scipy.sparse as sp

from cardiac_jax.data.errors import DataError

SIMULATOR = "lineage-simulator"
SIMULATOR_VERSION = "0.1.2"
FATES = ("fateA", "fateB")      # simulator fate 0, fate 1
PROGENITOR = "progenitor"
TIME_KEY, STATE_KEY, CLONE_KEY, CLONE_OBSM = "day", "cell_type", "clone", "X_clone"
NEVER = np.iinfo(np.int32).max  # death round of a cell that never divides


@dataclasses.dataclass(frozen=True)
class BedSettings:
  """What the bed is made of; the defaults give ~1,600 sampled cells per founder.

  Rounds are the simulator's division rounds; the defaults barcode ~300 cells
  per founder (round 8), sample 30 % / 20 % / 10 % of the living cells two, four
  and eight rounds later, and 20 % on the final round (the fate day). With
  ``commit_depth`` 10 most early cells (depth ~8-10) are uncommitted, so a clone
  mixes several committed clades and its fate is a composition, not a given.
  """
  n_founders: int = 2
  tree_nodes: int = 20_000
  barcode_round: int = 8
  sample_rounds: tuple[int, ...] = (10, 12, 16)
  sample_fractions: tuple[float, ...] = (0.3, 0.2, 0.1)
  fate_fraction: float = 0.2
  barcode_efficiency: float = 0.9
  n_genes: int = 1_000
  n_cif: int = 32
  sigma: float = 0.2
  beta: float = 0.2
  commit_depth: int = 10
  gene_effect_prob: float = 0.3
  scale_s: float = 1.0
  protocol: str = "UMI"
  technical_noise: bool = True
  seed: int = 0


@dataclasses.dataclass(frozen=True)
class Forest:
  """Every node of the founders' trees, indexed globally (a parent precedes its children)."""
  founder: np.ndarray     # (n,) int32
  parent: np.ndarray      # (n,) int64, -1 at a founder
  birth: np.ndarray       # (n,) int32 round of birth
  death: np.ndarray       # (n,) int32 round it divided; NEVER for a leaf
  depth: np.ndarray       # (n,) int32 generations below its founder
  fate: np.ndarray        # (n,) int8 committed fate 0/1, -1 before commitment
  fate_prob: np.ndarray   # (n,) float32 fraction of its committed descendants with fate 1
  cif: np.ndarray         # (n, n_cif) float64 cell identity factors


def _import_simulator() -> Any:
  try:
    from lineagesim import simulator   # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise DataError(f"{SIMULATOR} is not installed ({e}); install the optional extra: "
                    f"pip install -e '.[lineage]' (pins {SIMULATOR}=={SIMULATOR_VERSION})") from e
  return simulator


def _check(settings: BedSettings) -> None:
  rounds = tuple(settings.sample_rounds)
  if len(rounds) != len(settings.sample_fractions):
    raise DataError(f"sample_rounds {rounds} and sample_fractions "
                    f"{tuple(settings.sample_fractions)} differ in length; give one fraction "
                    "per round")
  if any(r <= settings.barcode_round for r in rounds) or list(rounds) != sorted(set(rounds)):
    raise DataError(f"sample_rounds {rounds} must increase and come after barcode_round "
                    f"{settings.barcode_round} (a cell taken on the barcoding round is its "
                    "whole clone); move them later")
  fractions = tuple(settings.sample_fractions) + (settings.fate_fraction,)
  if not all(0.0 < f <= 1.0 for f in fractions) or not 0 < settings.barcode_efficiency <= 1:
    raise DataError(f"sampling fractions {fractions} and barcode_efficiency "
                    f"{settings.barcode_efficiency} must lie in (0, 1]")
  if settings.n_founders < 1 or settings.tree_nodes < 2:
    raise DataError(f"n_founders={settings.n_founders}, tree_nodes={settings.tree_nodes}: "
                    "need at least one founder and a tree of two nodes")


@contextlib.contextmanager
def _quiet_simulator():
  """The simulator prints its progress; keep it in the debug log, not on stdout."""
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    yield
  for line in out.getvalue().splitlines():
    if line.strip():
      logging.debug("lineagesim: %s", line)


def grow_forest(sim: Any, settings: BedSettings) -> Forest:
  """Grows ``n_founders`` trees with fates and factors from one simulator instance."""
  parts = []
  offset = 0
  for f in range(settings.n_founders):
    with _quiet_simulator():
      tree = sim.generate_phylogenetic_tree(n_cells=settings.tree_nodes)
      sim._assign_fate(tree, commit_depth=settings.commit_depth)  # pylint: disable=protected-access
      sim._compute_fate_bias(tree)                                 # pylint: disable=protected-access
      cif = sim.simulate_cell_identity_factors(
          tree=tree, beta=settings.beta, n_CIF=settings.n_cif, sigma=settings.sigma,
          commit_depth=settings.commit_depth)
    nodes = tree["nodes"]
    ids = np.asarray([nd["id"] for nd in nodes], np.int64)
    if not np.array_equal(ids, np.arange(len(nodes))):
      raise DataError(f"{SIMULATOR} returned node ids out of order; this driver needs "
                      f"{SIMULATOR}=={SIMULATOR_VERSION} (pip install -e '.[lineage]')")
    parent = np.asarray([-1 if nd["parent"] is None else nd["parent"] for nd in nodes], np.int64)
    birth = np.asarray([nd["division_time"] for nd in nodes], np.int32)
    death = np.full(len(nodes), NEVER, np.int32)
    for nd in nodes:
      if nd["children"]:
        death[nd["id"]] = nodes[nd["children"][0]]["division_time"]
    parts.append(dict(
        founder=np.full(len(nodes), f, np.int32),
        parent=np.where(parent >= 0, parent + offset, -1),
        birth=birth, death=death,
        depth=np.asarray([nd["depth"] for nd in nodes], np.int32),
        fate=np.asarray([-1 if nd["fate"] is None else nd["fate"] for nd in nodes], np.int8),
        fate_prob=np.asarray([nd["fate_prob"] for nd in nodes], np.float32),
        cif=np.asarray(cif, np.float64)))
    offset += len(nodes)
  return Forest(**{k: np.concatenate([p[k] for p in parts]) for k in parts[0]})


def _levels(depth: np.ndarray) -> list[np.ndarray]:
  """Node indices per depth, shallowest first (a node's parent is one level up)."""
  order = np.argsort(depth, kind="stable")
  bounds = np.searchsorted(depth[order], np.arange(depth.max() + 2))
  return [order[bounds[d]:bounds[d + 1]] for d in range(depth.max() + 1)]


def alive(birth: np.ndarray, death: np.ndarray, t: int) -> np.ndarray:
  """Cells living during round ``t``: born by then and not yet divided."""
  return (birth <= t) & (death > t)


def clone_roots(parent: np.ndarray, birth: np.ndarray, death: np.ndarray, depth: np.ndarray,
                t: int) -> np.ndarray:
  """Each node's ancestor (or itself) living in round ``t``; -1 for nodes that died before."""
  root = np.where(alive(birth, death, t), np.arange(len(parent)), -1)
  for level in _levels(depth)[1:]:
    later = level[birth[level] > t]
    root[later] = root[parent[later]]
  return root


def sample_destructively(parent: np.ndarray, birth: np.ndarray, death: np.ndarray,
                         depth: np.ndarray, rounds: Sequence[int], fractions: Sequence[float],
                         rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """Takes each living cell with probability ``fraction`` per round; taken subtrees vanish.

  Returns:
    (node, round) of every taken cell, in round order. A cell is taken at most
    once, and no descendant of a taken cell is ever taken.
  """
  levels = _levels(depth)
  gone = np.zeros(len(parent), bool)
  taken_nodes, taken_rounds = [], []
  for t, fraction in zip(rounds, fractions):
    candidates = np.flatnonzero(alive(birth, death, t) & ~gone)
    pick = candidates[rng.random(len(candidates)) < fraction]
    taken_nodes.append(pick)
    taken_rounds.append(np.full(len(pick), t, np.int32))
    gone[pick] = True
    for level in levels[1:]:           # the taken cells' descendants never exist
      gone[level] |= gone[parent[level]]
  return np.concatenate(taken_nodes), np.concatenate(taken_rounds)


def _expression(sim: Any, cif: np.ndarray, settings: BedSettings) -> sp.csr_matrix:
  with _quiet_simulator():
    counts = sim.CIF_to_gene_expression(
        CIF_matrix=cif, n_genes=settings.n_genes, gene_effect_prob=settings.gene_effect_prob,
        scale_s=settings.scale_s)
    if settings.technical_noise:
      counts = sim.add_technical_noise(true_counts=counts, protocol=settings.protocol)
  return sp.csr_matrix(np.asarray(counts).astype(np.int32))


def simulate_bed(settings: BedSettings = BedSettings()) -> Any:
  """The barcoded, destructively sampled time course (see the module docstring).

  The simulator draws from numpy's global RNG (``LineageSim(seed)`` seeds it);
  its state is restored afterwards, so callers' global draws are unaffected.
  """
  import anndata as ad   # pylint: disable=g-import-not-at-top
  _check(settings)
  simulator = _import_simulator()
  started = time.perf_counter()
  global_state = np.random.get_state()
  try:
    sim = simulator.LineageSim(seed=settings.seed)
    forest = grow_forest(sim, settings)
    rng = np.random.default_rng([settings.seed, 1])
    final = int(forest.birth.max())
    rounds = tuple(settings.sample_rounds)
    if rounds[-1] >= final:
      raise DataError(f"sample_rounds {rounds} reach the final round {final} of trees of "
                      f"{settings.tree_nodes} nodes; end them before it (the final round is "
                      "the fate day) or grow larger trees (tree_nodes)")
    rounds += (final,)
    fractions = tuple(settings.sample_fractions) + (settings.fate_fraction,)
    root = clone_roots(forest.parent, forest.birth, forest.death, forest.depth,
                       settings.barcode_round)
    living = np.flatnonzero(root == np.arange(len(root)))
    barcoded = np.zeros(len(root), bool)
    barcoded[living[rng.random(len(living)) < settings.barcode_efficiency]] = True
    node, taken_round = sample_destructively(forest.parent, forest.birth, forest.death,
                                             forest.depth, rounds, fractions, rng)
    x = _expression(sim, forest.cif[node], settings)
  finally:
    np.random.set_state(global_state)

  cell_root = root[node]
  has_clone = (cell_root >= 0) & barcoded[np.maximum(cell_root, 0)]
  observed = np.unique(cell_root[has_clone])
  width = max(4, len(str(len(living))))
  clone_names = np.asarray([f"c{i:0{width}d}" for i in range(len(observed))])
  column = np.searchsorted(observed, cell_root)
  rows = np.flatnonzero(has_clone)
  x_clone = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, column[rows])),
                          shape=(len(node), len(observed)))
  clone = np.full(len(node), "", dtype=object)
  clone[rows] = clone_names[column[rows]]
  days = [f"d{r - settings.barcode_round}" for r in rounds]
  fate = forest.fate[node]
  cell_type = np.where(fate < 0, PROGENITOR, np.asarray(FATES)[np.maximum(fate, 0)])
  obs = pd.DataFrame({
      TIME_KEY: pd.Categorical([f"d{r - settings.barcode_round}" for r in taken_round],
                               categories=days, ordered=True),
      STATE_KEY: pd.Categorical(cell_type, categories=[PROGENITOR, *FATES]),
      CLONE_KEY: clone.astype(str),
      "fate_prob_B": forest.fate_prob[node],
      "clone_fate_prob_B": np.where(cell_root >= 0, forest.fate_prob[np.maximum(cell_root, 0)],
                                    np.nan).astype(np.float32),
      "depth": forest.depth[node],
      "round": taken_round,
      "founder": forest.founder[node],
      "node": node.astype(np.int64),
  }, index=pd.Index([f"cell{i:06d}" for i in range(len(node))]))
  var = pd.DataFrame(index=pd.Index([f"gene{g:04d}" for g in range(settings.n_genes)]))
  adata = ad.AnnData(X=x, obs=obs, var=var)
  adata.obsm[CLONE_OBSM] = x_clone
  adata.uns["clone_names"] = clone_names
  adata.uns["lineage_testbed"] = json.dumps(dict(
      simulator=SIMULATOR, version=SIMULATOR_VERSION, fates=list(FATES), days=days,
      rounds=list(rounds), final_round=final, n_nodes=int(len(forest.parent)),
      n_barcoded=int(barcoded.sum()), n_clones=int(len(observed)),
      **{k: (list(v) if isinstance(v, tuple) else v)
         for k, v in dataclasses.asdict(settings).items()}))
  logging.info("lineage bed: %d cells of %d clones from %d founders (%d nodes) x %d genes in "
               "%.1f s", adata.n_obs, len(observed), settings.n_founders, len(forest.parent),
               settings.n_genes, time.perf_counter() - started)
  return adata


def split_founders(adata: Any, n_held_out: int) -> tuple[Any, Any]:
  """(cells of the first founders, cells of the last ``n_held_out`` founders).

  Two samples of one culture that share the simulator's gene programmes (drawn
  once per seed, after the trees): a model trained on the first can be asked
  about the second with no refit. Another seed would not do: it draws other
  gene programmes, so its genes mean something else. Each part keeps the clones
  (``obsm["X_clone"]`` columns) its cells carry; a clone never spans founders.
  """
  founder = adata.obs["founder"].to_numpy()
  n = int(founder.max()) + 1
  if not 0 < n_held_out < n:
    raise DataError(f"holdout_founders={n_held_out} must leave founders on both sides of "
                    f"{n}; choose 1 .. {n - 1}")
  parts = []
  for keep in (founder < n - n_held_out, founder >= n - n_held_out):
    part = adata[keep].copy()
    used = np.flatnonzero(np.asarray(sp.csr_matrix(part.obsm[CLONE_OBSM]).sum(axis=0)).ravel())
    part.obsm[CLONE_OBSM] = sp.csr_matrix(part.obsm[CLONE_OBSM])[:, used]
    part.uns["clone_names"] = np.asarray(adata.uns["clone_names"])[used]
    parts.append(part)
  return parts[0], parts[1]


def write_h5ad(adata: Any, out: str | os.PathLike) -> pathlib.Path:
  """Writes ``adata`` atomically (``fileio.atomic_write_h5ad``)."""
  from cardiac_jax import fileio   # pylint: disable=g-import-not-at-top
  return fileio.atomic_write_h5ad(adata, out)


# ---------------------------------------------------------------- clone labels and headroom


def clone_fates(adata: Any, fate_day: str, fates: Sequence[str] = FATES, *,
                time_key: str = TIME_KEY, state_key: str = STATE_KEY,
                clone_key: str = CLONE_KEY) -> pd.DataFrame:
  """Per clone: its fate-day cells of each fate, the fraction of ``fates[1]`` and the label.

  The label is 1 when most of the clone's fate-day cells (of the two fates) are
  ``fates[1]``, 0 when most are ``fates[0]``; ties and clones without such
  cells are left out.
  """
  obs = adata.obs
  day = obs[time_key].astype(str).to_numpy()
  if fate_day not in set(day):
    raise DataError(f"no cells on fate day {fate_day!r} in obs[{time_key!r}] (days: "
                    f"{sorted(set(day))}); pass one of them")
  state = obs[state_key].astype(str).to_numpy()
  clone = obs[clone_key].astype(str).to_numpy()
  keep = (day == fate_day) & (clone != "") & np.isin(state, list(fates))
  table = pd.crosstab(clone[keep], state[keep]).reindex(columns=list(fates), fill_value=0)
  table["frac"] = table[fates[1]] / (table[fates[0]] + table[fates[1]])
  table = table[table["frac"] != 0.5].copy()
  table["label"] = (table["frac"] > 0.5).astype(np.int8)
  table.index.name = "clone"
  return table


def _log_normalised(counts: Any) -> np.ndarray:
  counts = sp.csr_matrix(counts, dtype=np.float64)
  size = np.maximum(np.asarray(counts.sum(axis=1)).ravel(), 1.0)
  return np.log1p(sp.diags(1e4 / size) @ counts).toarray()


def _early_cells(adata: Any, early_days: Sequence[str], table: pd.DataFrame
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """Early cells of labelled clones: (rows, clone names, each cell's clone index, labels)."""
  day = adata.obs[TIME_KEY].astype(str).to_numpy()
  clone = adata.obs[CLONE_KEY].astype(str).to_numpy()
  early = np.flatnonzero(np.isin(day, list(early_days)) & np.isin(clone, table.index))
  if not len(early):
    raise DataError(f"no early cells ({list(early_days)}) of clones with a fate; sample more "
                    "cells early or barcode more")
  names, cell_clone = np.unique(clone[early], return_inverse=True)
  return early, names, cell_clone, table.loc[names, "label"].to_numpy()


def _out_of_fold_logits(x: np.ndarray, y: np.ndarray, train: np.ndarray, n_pcs: int,
                        seed: int) -> np.ndarray:
  """Log-odds of the cells outside ``train`` from a logistic regression on PCA of ``train``."""
  from sklearn import decomposition, linear_model, preprocessing  # pylint: disable=g-import-not-at-top,multiple-imports
  scaler = preprocessing.StandardScaler().fit(x[train])
  pca = decomposition.PCA(min(n_pcs, x.shape[1] - 1), random_state=seed)
  z_train = pca.fit_transform(np.clip(scaler.transform(x[train]), -10, 10))
  clf = linear_model.LogisticRegression(max_iter=2_000).fit(z_train, y[train])
  return clf.decision_function(pca.transform(np.clip(scaler.transform(x[~train]), -10, 10)))


def _one_vs_pooled(logit: np.ndarray, cell_clone: np.ndarray, label: np.ndarray,
                   subset: np.ndarray, draws: int, rng: np.random.Generator) -> dict[str, float]:
  """AUC over the ``subset`` clones of one random early cell's log-odds, and of their mean."""
  from sklearn import metrics  # pylint: disable=g-import-not-at-top
  size = np.bincount(cell_clone, minlength=len(label))
  pooled = np.bincount(cell_clone, weights=logit, minlength=len(label)) / np.maximum(size, 1)
  order = np.argsort(cell_clone, kind="stable")
  starts = np.r_[0, np.cumsum(size)[:-1]]
  subset = subset & (size > 0)
  one = []
  for _ in range(draws):
    pick = order[starts + (rng.random(len(size)) * size).astype(int)]
    one.append(metrics.roc_auc_score(label[subset], logit[pick][subset]))
  return {"one_cell_auc": float(np.mean(one)),
          "pooled_auc": float(metrics.roc_auc_score(label[subset], pooled[subset]))}


def headroom(adata: Any, early_days: Sequence[str], fate_day: str,
             fates: Sequence[str] = FATES, *, n_pcs: int = 30, n_folds: int = 5,
             draws: int = 50, seed: int = 0) -> dict[str, Any]:
  """How much one early cell vs a clone's pooled early cells tell about the clone's fate.

  A logistic regression on PCA (scaler and PCA fitted on the training fold's
  early cells) of log1p(counts per 1e4) is trained per early cell on its clone's
  label; folds are over clones (stratified), so every clone is scored out of
  fold. ``one_cell_auc``: one random early cell per clone (mean over ``draws``);
  ``pooled_auc``: the mean log-odds over the clone's early cells; ``*_multi``:
  the same on the clones with >= 2 early cells (where pooling can help).
  References from the simulator's latents (no model of the counts reaches
  them): ``latent_clone_auc``, the barcoded cell's true fraction of fate-1
  descendants (what is left is the fate-day sampling); ``latent_pooled_auc``,
  the early cells' own fractions averaged (lower: a sampled early cell's own
  subtree is gone, and the clone's fate-day cells come from its sisters').
  """
  from sklearn import metrics, model_selection  # pylint: disable=g-import-not-at-top,multiple-imports
  table = clone_fates(adata, fate_day, fates)
  early, names, cell_clone, label = _early_cells(adata, early_days, table)
  if len(np.unique(label)) < 2 or min(np.bincount(label)) < n_folds:
    raise DataError(f"{len(names)} clones with early cells, labels {np.bincount(label)}: too "
                    f"few of one fate for {n_folds} folds; make a larger bed (n_founders)")
  x = _log_normalised(adata.X[early])
  y = label[cell_clone]
  logit = np.zeros(len(early))
  folds = model_selection.StratifiedKFold(n_folds, shuffle=True, random_state=seed)
  for train_clones, _ in folds.split(names, label):
    train = np.isin(cell_clone, train_clones)
    logit[~train] = _out_of_fold_logits(x, y, train, n_pcs, seed)
  rng = np.random.default_rng(seed)
  size = np.bincount(cell_clone)
  every, multi = np.ones(len(names), bool), size >= 2
  result = {"n_clones": int(len(names)), "n_clones_multi": int(multi.sum()),
            "n_early_cells": int(len(early)), "label_fraction_1": float(label.mean()),
            "cell_auc": float(metrics.roc_auc_score(y, logit)),
            **_one_vs_pooled(logit, cell_clone, label, every, draws, rng)}
  if len(np.unique(label[multi])) == 2:
    result.update({f"{k}_multi": v for k, v in
                   _one_vs_pooled(logit, cell_clone, label, multi, draws, rng).items()})
  for key, column in (("latent_pooled_auc", "fate_prob_B"),
                      ("latent_clone_auc", "clone_fate_prob_B")):
    if column in adata.obs:
      mean = np.bincount(cell_clone, weights=adata.obs[column].to_numpy()[early]) / size
      result[key] = float(metrics.roc_auc_score(label, mean))
  return result


def holdout_auc(adata: Any, early_days: Sequence[str], fate_day: str,
                held_out: Sequence[str], fates: Sequence[str] = FATES, *, n_pcs: int = 30,
                draws: int = 50, seed: int = 0) -> dict[str, Any]:
  """`headroom`'s per-cell logistic regression on one split: trained on the other clones.

  Scores the ``held_out`` clones (those with early cells and a label), so a
  peer run on the same split (e.g. `cospar_peer.run_cospar`) compares directly.
  """
  table = clone_fates(adata, fate_day, fates)
  early, names, cell_clone, label = _early_cells(adata, early_days, table)
  held = np.isin(names, np.asarray(list(held_out)).astype(str))
  train = ~held[cell_clone]
  x = _log_normalised(adata.X[early])
  logit = np.full(len(early), np.nan)
  logit[~train] = _out_of_fold_logits(x, label[cell_clone], train, n_pcs, seed)
  rng = np.random.default_rng(seed)
  return {"n_held_out_clones_scored": int(held.sum()),
          **_one_vs_pooled(np.nan_to_num(logit), cell_clone, label, held, draws, rng)}


def summary(adata: Any) -> dict[str, Any]:
  """Cells per day and type, clones and how many days they span."""
  obs = adata.obs
  clone = obs[CLONE_KEY].astype(str)
  days_per_clone = obs[clone != ""].groupby(clone[clone != ""], observed=True)[TIME_KEY] \
      .nunique()
  return {
      "n_cells": int(adata.n_obs), "n_genes": int(adata.n_vars),
      "n_clones": int(adata.obsm[CLONE_OBSM].shape[1]),
      "barcoded_fraction": float((clone != "").mean()),
      "cells": {str(d): {str(k): int(v) for k, v in g.value_counts().items() if v}
                for d, g in obs.groupby(TIME_KEY, observed=True)[STATE_KEY]},
      "clones_by_days_spanned": {int(k): int(v)
                                 for k, v in days_per_clone.value_counts().sort_index().items()},
  }


# ---------------------------------------------------------------- command line


def _define_flags() -> Any:
  from absl import flags   # pylint: disable=g-import-not-at-top
  d = BedSettings()
  flags.DEFINE_string("out", None, "Output .h5ad (written atomically).")
  flags.DEFINE_integer("n_founders", d.n_founders, "Trees (founding cells).")
  flags.DEFINE_integer("tree_nodes", d.tree_nodes, "Nodes per tree (lineagesim n_cells).")
  flags.DEFINE_integer("barcode_round", d.barcode_round, "Division round of barcoding (day 0).")
  flags.DEFINE_list("sample_rounds", [str(r) for r in d.sample_rounds],
                    "Sampling rounds before the final one (the fate day).")
  flags.DEFINE_list("sample_fractions", [str(f) for f in d.sample_fractions],
                    "Fraction of living cells taken on each sampling round.")
  flags.DEFINE_float("fate_fraction", d.fate_fraction, "Fraction taken on the fate day.")
  flags.DEFINE_float("barcode_efficiency", d.barcode_efficiency, "Chance a cell is barcoded.")
  flags.DEFINE_integer("n_genes", d.n_genes, "Genes.")
  flags.DEFINE_integer("commit_depth", d.commit_depth, "lineagesim commit_depth.")
  flags.DEFINE_float("beta", d.beta, "lineagesim fate signal strength.")
  flags.DEFINE_float("sigma", d.sigma, "lineagesim Brownian sd per division.")
  flags.DEFINE_integer("seed", d.seed, "Seed.")
  flags.DEFINE_bool("check", True, "Measure one-cell vs pooled early AUC (`headroom`).")
  flags.DEFINE_integer("holdout_founders", 0, "The last N founders' cells go to "
                       "--holdout_out instead (a second sample, same gene programmes).")
  flags.DEFINE_string("holdout_out", "", "Output .h5ad of --holdout_founders' cells.")
  return flags.FLAGS


def main(argv: Sequence[str]) -> None:
  del argv
  from cardiac_jax import fileio   # pylint: disable=g-import-not-at-top
  flag_values = _FLAGS
  if not flag_values.out:
    raise DataError("--out is required: the .h5ad to write")
  settings = BedSettings(
      n_founders=flag_values.n_founders, tree_nodes=flag_values.tree_nodes,
      barcode_round=flag_values.barcode_round,
      sample_rounds=tuple(int(r) for r in flag_values.sample_rounds),
      sample_fractions=tuple(float(f) for f in flag_values.sample_fractions),
      fate_fraction=flag_values.fate_fraction,
      barcode_efficiency=flag_values.barcode_efficiency, n_genes=flag_values.n_genes,
      commit_depth=flag_values.commit_depth, beta=flag_values.beta, sigma=flag_values.sigma,
      seed=flag_values.seed)
  if bool(flag_values.holdout_founders) != bool(flag_values.holdout_out):
    raise DataError("--holdout_founders and --holdout_out go together")
  started = time.perf_counter()
  adata = simulate_bed(settings)
  seconds = time.perf_counter() - started
  if flag_values.holdout_founders:
    adata, held = split_founders(adata, flag_values.holdout_founders)
    write_h5ad(held, flag_values.holdout_out)
  out = write_h5ad(adata, flag_values.out)
  report = {"out": str(out), "seconds": round(seconds, 1), **summary(adata),
            "settings": json.loads(adata.uns["lineage_testbed"])}
  if flag_values.check:
    days = report["settings"]["days"]
    report["headroom"] = headroom(adata, days[:-1], days[-1], seed=settings.seed)
    report["headroom_first_day"] = headroom(adata, days[:1], days[-1], seed=settings.seed)
  fileio.atomic_write_json(out.with_suffix(".json"), report)
  print(json.dumps(report, indent=1))


if __name__ == "__main__":
  from absl import app   # pylint: disable=g-import-not-at-top
  _FLAGS = _define_flags()
  app.run(main)
