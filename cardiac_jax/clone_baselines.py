"""Simple readings of a clone's early cells, on the same clones and splits as the model.

The bar a clonal model must clear is the pooled reading, and the win to show is
over one-cell readings (what a state-only tool can say about one progenitor):

* ``logreg_one_cell``: a per-cell logistic regression (every early cell of a
  training clone labelled with its clone's fate), scored on ONE random early cell
  of the clone.
* ``logreg_latest_cell``: the same classifier on the clone's latest early cell.
* ``logreg_mean_log_odds``: the same classifier, its log-probabilities averaged
  over all the clone's early cells (naive-Bayes pooling of independent readings).
* ``pooled_logreg`` / ``pooled_hgb``: a clone-level classifier per observation day
  on per-day pooled features (each day's mean PCs, whether the day was seen and
  its log cell count), a logistic regression and boosted trees.

Everything is fitted on training clones only and its one hyperparameter chosen on
validation clones (clone-level AUC); readings use the cells a clone shows up to
each observation day, exactly the cells the model may read.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence
import warnings

import numpy as np
import threadpoolctl
from sklearn import ensemble
from sklearn import exceptions as sk_exceptions
from sklearn import linear_model
from sklearn import preprocessing

from cardiac_jax import baselines
from cardiac_jax import report as report_lib
from cardiac_jax.data import splits as splits_lib

NAMES = ("logreg_one_cell", "logreg_latest_cell", "logreg_mean_log_odds", "pooled_logreg",
         "pooled_hgb")
HGB_MAX_ITER = 150


def _fit_logreg(x: np.ndarray, y: np.ndarray, c: float, seed: int) -> Any:
  clf = linear_model.LogisticRegression(C=c, max_iter=1000, random_state=seed)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", sk_exceptions.ConvergenceWarning)
    return clf.fit(x, y)


def _log_probs(clf: Any, x: np.ndarray, n_classes: int) -> np.ndarray:
  """(n, C) log-probabilities of every class (a class unseen in training: log 1e-6)."""
  out = np.full((x.shape[0], n_classes), np.log(1e-6), np.float64)
  out[:, np.asarray(clf.classes_, np.int64)] = np.log(np.clip(clf.predict_proba(x), 1e-6, 1))
  return out


def _softmax(z: np.ndarray) -> np.ndarray:
  z = z - z.max(axis=1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(axis=1, keepdims=True)


def _group_mean(values: np.ndarray, groups: np.ndarray, n_groups: int) -> np.ndarray:
  out = np.zeros((n_groups,) + values.shape[1:], np.float64)
  np.add.at(out, groups, values)
  count = np.bincount(groups, minlength=n_groups).reshape((-1,) + (1,) * (values.ndim - 1))
  return out / np.maximum(count, 1)


class Cells:
  """A clone table's early cells with fast per-clone selections."""

  def __init__(self, tables: dict[str, np.ndarray]):
    self.pcs = np.asarray(tables["cell_pcs"], np.float32)
    self.time = np.asarray(tables["cell_time"], np.int64)
    self.clone = np.asarray(tables["cell_clone"], np.int64)
    self.split = np.asarray(tables["clone_split"], np.int64)
    self.label = np.asarray(tables["clone_label"], np.int64)
    self.days = [int(d) for d in tables["observation_days"]]

  def clones(self, split: str) -> np.ndarray:
    return np.flatnonzero(self.split == splits_lib.SPLIT_IDS[split])

  def seen(self, clones: np.ndarray, day: int) -> np.ndarray:
    """The clones among ``clones`` with an early cell up to ``day``."""
    first = np.full(self.label.size, np.iinfo(np.int64).max)
    np.minimum.at(first, self.clone, self.time)
    return clones[first[clones] <= day]

  def rows(self, clones: np.ndarray, day: int) -> np.ndarray:
    """Cells of ``clones`` up to ``day``."""
    return np.flatnonzero(np.isin(self.clone, clones) & (self.time <= day))


def _per_cell_readings(cells: Cells, clf: Any, scaler: Any, n_classes: int, clones: np.ndarray,
                       day: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
  """The three per-cell readings of ``clones`` up to ``day``: (len(clones), C) each."""
  rows = cells.rows(clones, day)
  local = np.searchsorted(clones, cells.clone[rows])
  logp = _log_probs(clf, scaler.transform(cells.pcs[rows]), n_classes)
  mean = _softmax(_group_mean(logp, local, clones.size))
  # One random cell, and a random one of the latest day's cells, per clone.
  priority = rng.random(rows.size)
  one = np.lexsort((priority, local))
  first_of = np.concatenate([[0], np.flatnonzero(np.diff(local[one])) + 1])
  latest = np.lexsort((priority, -cells.time[rows], local))
  first_latest = np.concatenate([[0], np.flatnonzero(np.diff(local[latest])) + 1])
  return {"logreg_one_cell": np.exp(logp[one[first_of]]),
          "logreg_latest_cell": np.exp(logp[latest[first_latest]]),
          "logreg_mean_log_odds": mean}


def pooled_features(cells: Cells, clones: np.ndarray, day: int) -> np.ndarray:
  """Per-day pooled features of ``clones`` up to ``day``: for each observation day, the
  mean PCs of the clone's cells that day, whether it was seen and log(1 + its cells)."""
  blocks = []
  for d in cells.days:
    rows = cells.rows(clones, day) if d <= day else np.zeros(0, np.int64)
    rows = rows[cells.time[rows] == d]
    local = np.searchsorted(clones, cells.clone[rows])
    n = np.bincount(local, minlength=clones.size).astype(np.float64)
    blocks += [_group_mean(cells.pcs[rows].astype(np.float64), local, clones.size),
               (n > 0)[:, None].astype(np.float64), np.log1p(n)[:, None]]
  return np.concatenate(blocks, axis=1)


def _scores(y: np.ndarray, probs: np.ndarray) -> dict[str, Any]:
  return {"auc": report_lib.auc_score(y, probs),
          "acc": float(np.mean(np.argmax(probs, axis=1) == y)) if y.size else None,
          "n": int(y.size)}


def _select(candidates: Sequence[Any], fit: Callable[[Any], Any],
            val_auc: Callable[[Any], float | None]) -> Any:
  """The fitted candidate with the best validation AUC (ties: the first)."""
  best, best_auc = None, -np.inf
  for cand in candidates:
    model = fit(cand)
    auc = val_auc(model)
    auc = -np.inf if auc is None else auc
    if best is None or auc > best_auc:
      best, best_auc = model, auc
  return best


def evaluate(tables: dict[str, np.ndarray], n_classes: int, seed: int = 0
             ) -> dict[str, dict[str, Any]]:
  """Every baseline's val/test scores per observation day, and its predictions.

  Returns:
    {name: {"per_day": {day: {"val": {auc, acc, n}, "test": {...}}},
            "probs": {split: {day: (clones, probs)}}}}
  """
  cells = Cells(tables)
  train, val, test = (cells.clones(s) for s in splits_lib.SPLITS)
  last = max(cells.days)
  out: dict[str, dict[str, Any]] = {n: {"per_day": {}, "probs": {"val": {}, "test": {}}}
                                    for n in NAMES}
  # One OpenMP thread: boosted trees on ~1,000 clones gain nothing from more, and next to
  # XLA's threads (or other jobs) OpenMP's spinning workers made them ~50x slower here.
  with threadpoolctl.threadpool_limits(limits=1, user_api="openmp"):
    # One per-cell classifier for the three per-cell readings; C by the pooled
    # reading's validation AUC with every early cell seen.
    train_rows = cells.rows(train, last)
    scaler = preprocessing.StandardScaler().fit(cells.pcs[train_rows])
    x_train = scaler.transform(cells.pcs[train_rows])
    y_train = cells.label[cells.clone[train_rows]]
    val_seen = cells.seen(val, last)

    def val_auc_of(clf):
      probs = _per_cell_readings(cells, clf, scaler, n_classes, val_seen, last,
                                 np.random.default_rng(seed))["logreg_mean_log_odds"]
      return report_lib.auc_score(cells.label[val_seen], probs)
    clf = _select(baselines.LOGREG_C, lambda c: _fit_logreg(x_train, y_train, c, seed),
                  val_auc_of)
    for day in cells.days:
      for split, clones in (("val", val), ("test", test)):
        seen = cells.seen(clones, day)
        readings = _per_cell_readings(cells, clf, scaler, n_classes, seen, day,
                                      np.random.default_rng([seed, day]))
        for name, probs in readings.items():
          out[name]["probs"][split][day] = (seen, probs)
      # Clone-level classifiers, one per observation day.
      seen = {s: cells.seen(c, day) for s, c in (("train", train), ("val", val), ("test", test))}
      feats = {s: pooled_features(cells, c, day) for s, c in seen.items()}
      scale = preprocessing.StandardScaler().fit(feats["train"])
      feats = {s: scale.transform(f) for s, f in feats.items()}
      y = {s: cells.label[c] for s, c in seen.items()}
      fitters = {
          "pooled_logreg": (baselines.LOGREG_C,
                            lambda c: _fit_logreg(feats["train"], y["train"], c, seed)),
          "pooled_hgb": ((0.05, 0.1), lambda lr: ensemble.HistGradientBoostingClassifier(
              max_iter=HGB_MAX_ITER, learning_rate=lr, max_leaf_nodes=15, min_samples_leaf=10,
              l2_regularization=1.0, random_state=seed).fit(feats["train"], y["train"]))}
      for name, (grid, fit) in fitters.items():
        model = _select(grid, fit, lambda m: report_lib.auc_score(
            y["val"], _full(m, feats["val"], n_classes)))
        for split in ("val", "test"):
          out[name]["probs"][split][day] = (seen[split], _full(model, feats[split], n_classes))
  for name in NAMES:
    for day in cells.days:
      out[name]["per_day"][day] = {
          split: _scores(cells.label[out[name]["probs"][split][day][0]],
                         out[name]["probs"][split][day][1]) for split in ("val", "test")}
  return out


def _full(clf: Any, x: np.ndarray, n_classes: int) -> np.ndarray:
  out = np.zeros((x.shape[0], n_classes), np.float64)
  out[:, np.asarray(clf.classes_, np.int64)] = clf.predict_proba(x)
  return out
