"""Non-sequence baselines on the SAME arrays and splits as the sequence model.

Why: an earlier pipeline's transformer was tied by a ridge regression because
its sequences carried no temporal structure (see DOMAIN.md). These baselines
expose that failure mode: a per-cell classifier on the last visible step, and
order-blind pooled-feature models. If the sequence model does not beat them,
it has learned nothing a per-cell or bag-of-cells model could not. One more,
``day_only``, is a diagnostic rather than a competitor: it sees only the days of
the visible steps, and measures how much of the label their pacing gives away
(at early-fate horizons, a lot: see ``day_features``). ``logreg_last_day`` sees
the last visible step and those days: a walk is a Markov chain built backwards from
its anchor (``sequences.walk``), so given its last visible cell, that step's index
and the anchor's day (which sets the pacing), the earlier visible steps are
independent of the hidden anchor. Those two inputs are all a prefix can tell about
its end, on any data set; this baseline reads them (linearly, so it is a yardstick,
not an information limit).

Every baseline is fitted on the train split, picks its one hyperparameter (if
any) on the validation split, and is scored on train, val and test. Features
are standardised with statistics of the train split only. Only visible steps
(mask > 0) contribute, so the same code serves the early-fate horizons.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Sequence
import warnings

from absl import logging
import numpy as np
import threadpoolctl
from sklearn import ensemble
from sklearn import exceptions as sk_exceptions
from sklearn import linear_model
from sklearn import neighbors
from sklearn import preprocessing

from cardiac_jax import report as report_lib
from cardiac_jax.data import splits as splits_lib

SPLITS = splits_lib.SPLITS
SPLIT_IDS = splits_lib.SPLIT_IDS
FATE_CLASSES = ("CM", "CF")   # the branch at the end of the lineage

# Hyperparameter grids, chosen on validation accuracy.
LOGREG_C = (0.01, 0.1, 1.0, 10.0)
KNN_K = (1, 5, 15, 31)
HGB_MAX_ITER = 80             # boosting rounds; the best round is picked on val
HGB_LEARNING_RATE = 0.15
HGB_MAX_TRAIN = 20_000        # row cap for the boosted trees (keeps scale3 at seconds)
# BLAS / OpenMP threads while fitting. The pooled problems are small (about 10^4 x
# 10^2), so one thread costs little, while OpenMP next to JAX's own thread pool
# on a busy machine oversubscribes the cores: measured on 2 shared cores, one
# HistGradientBoosting fit took 6.6 s with 1 thread and 87 s with 2.
MAX_THREADS = 1

BASELINES = ("majority", "logreg_last", "logreg_last_day", "logreg_mean", "hgb_summary",
             "knn_mean", "day_only")
# Baselines that measure a property of the data rather than compete with the model:
# never picked as "the best baseline".
DIAGNOSTICS = ("majority", "day_only")
# Feature value of a hidden step in the day-only features (days are in [0, 1]).
HIDDEN_DAY = -1.0
DESCRIPTIONS = {
    "majority": "most frequent training class",
    "logreg_last": "logistic regression on the last visible step (per-cell classifier)",
    "logreg_last_day": ("logistic regression on the last visible step and the days of the "
                        "visible steps (all a Markov walk's prefix says about its end)"),
    "logreg_mean": "logistic regression on features mean-pooled over visible steps",
    "hgb_summary": "gradient-boosted trees on mean, std, first, last and slope over visible steps",
    "knn_mean": "k-nearest neighbours on mean-pooled features",
    "day_only": ("logistic regression on the day column of the visible steps only (per-step "
                 "days and their histogram): what the pacing of the visible days reveals"),
}


# ---------------------------------------------------------------- features


def _visible(mask: np.ndarray) -> np.ndarray:
  visible = np.asarray(mask) > 0
  if not visible.any(axis=1).all():
    raise ValueError("every sequence needs at least one visible step (mask > 0); check "
                     "config.data.sequences.observed_fraction.")
  return visible


def pooled_features(x: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
  """Per-sequence summaries over the visible steps, each (N, F) float32.

  Keys: ``mean``, ``std``, ``first`` and ``last`` (first / last visible step),
  ``slope`` (least-squares slope of each feature against the step position
  scaled to [0, 1] over the full length; 0 with one visible step). Hidden
  steps never contribute, whatever values they hold.
  """
  x = np.asarray(x, np.float32)
  visible = _visible(mask)
  n, length, _ = x.shape
  w = visible.astype(np.float32)
  count = w.sum(axis=1)                                         # (N,)
  xm = np.where(visible[..., None], x, np.float32(0))
  mean = np.einsum("nl,nlf->nf", w, xm) / count[:, None]
  centred = np.where(visible[..., None], xm - mean[:, None, :], np.float32(0))
  std = np.sqrt(np.einsum("nlf,nlf->nf", centred, centred) / count[:, None])
  t = np.arange(length, dtype=np.float32) / max(length - 1, 1)
  t_bar = (w @ t) / count                                       # (N,)
  dt = np.where(visible, t[None, :] - t_bar[:, None], np.float32(0))
  denom = np.einsum("nl,nl->n", dt, dt)
  slope = np.einsum("nl,nlf->nf", dt, centred) / np.where(denom > 0, denom, 1.0)[:, None]
  rows = np.arange(n)
  first_idx = np.argmax(visible, axis=1)
  last_idx = length - 1 - np.argmax(visible[:, ::-1], axis=1)
  return {"mean": mean.astype(np.float32), "std": std.astype(np.float32),
          "first": x[rows, first_idx], "last": x[rows, last_idx],
          "slope": slope.astype(np.float32)}


def day_features(x: np.ndarray, mask: np.ndarray, day_column: int) -> np.ndarray:
  """Day-only features of each sequence, (N, L + D) float32: nothing but the days.

  Walk steps are paced over the days up to the anchor's day
  (``sequences.step_times``), so even the first visible steps' days reveal that
  day, and with it much of the label, without any expression. Features: the day
  of each step where visible (``HIDDEN_DAY`` where hidden), then the fraction
  of visible steps on each of the D distinct day values seen among visible
  steps (no labels are used to find them).
  """
  visible = _visible(mask)
  day = np.asarray(x, np.float32)[..., day_column]
  per_step = np.where(visible, day, np.float32(HIDDEN_DAY))
  values = np.unique(day[visible])
  hist = ((day[..., None] == values) & visible[..., None]).sum(axis=1)
  hist = hist / visible.sum(axis=1, keepdims=True)
  return np.concatenate([per_step, hist], axis=1).astype(np.float32)


def day_column(dataset: Any) -> int:
  """Index of the day feature: ``meta["n_pcs"]``, else F - 2 (PCs, day, modality)."""
  meta = getattr(dataset, "meta", None) or {}
  return int(meta.get("n_pcs", np.shape(dataset.x)[-1] - 2))


def feature_sets(x: np.ndarray, mask: np.ndarray,
                 day_col: int | None = None) -> dict[str, np.ndarray]:
  """The input matrix of each feature-based baseline, keyed by feature-set name.

  ``day`` (the day-only features) and ``last_day`` (the last step and them) are
  included when ``day_col`` is given.
  """
  p = pooled_features(x, mask)
  out = {"last": p["last"], "mean": p["mean"],
         "summary": np.concatenate([p["mean"], p["std"], p["first"], p["last"],
                                    p["slope"]], axis=1)}
  if day_col is not None:
    out["day"] = day_features(x, mask, day_col)
    out["last_day"] = np.concatenate([p["last"], out["day"]], axis=1)
  return out


# ---------------------------------------------------------------- metrics


def fate_metrics(confusion: Sequence[Sequence[int]],
                 class_names: Sequence[str]) -> dict[str, Any]:
  """Per-class accuracy (recall) and CM-vs-CF accuracy from a confusion matrix.

  CM-vs-CF accuracy is accuracy restricted to sequences whose TRUE label is CM
  or CF (the predicted label must match exactly): it measures the fate branch,
  the hard part of early prediction. None where a class is absent.
  """
  conf = np.asarray(confusion, np.float64)
  support = conf.sum(axis=1)
  diag = np.diag(conf)
  per_class = {name: (float(diag[i] / support[i]) if support[i] > 0 else None)
               for i, name in enumerate(class_names)}
  cm_cf = None
  ids = [list(class_names).index(c) for c in FATE_CLASSES if c in class_names]
  if len(ids) == len(FATE_CLASSES) and support[ids].sum() > 0:
    cm_cf = float(diag[ids].sum() / support[ids].sum())
  return {"per_class_acc": per_class, "cm_cf_acc": cm_cf}


def score(y_true: np.ndarray, y_pred: np.ndarray,
          class_names: Sequence[str]) -> dict[str, Any]:
  """Accuracy, macro-F1, per-class accuracy and CM-vs-CF accuracy of predictions."""
  cls = report_lib.classification_metrics(np.asarray(y_true), np.asarray(y_pred), class_names)
  return {"acc": cls["accuracy"], "macro_f1": cls["macro_f1"],
          **fate_metrics(cls["confusion"], class_names)}


# ---------------------------------------------------------------- models


def _split_rows(split: np.ndarray) -> dict[str, np.ndarray]:
  rows = {name: np.flatnonzero(np.asarray(split) == sid) for name, sid in SPLIT_IDS.items()}
  for name, r in rows.items():
    if r.size == 0:
      raise ValueError(f"the dataset has no {name!r} sequences; baselines need all three "
                       "splits (check config.data.split.fractions).")
  return rows


def _standardise(feats: np.ndarray, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Splits of ``feats`` scaled with the mean / std of the TRAIN rows only."""
  scaler = preprocessing.StandardScaler().fit(feats[rows["train"]])
  return {name: scaler.transform(feats[r]).astype(np.float32) for name, r in rows.items()}


def _select(candidates: Sequence[Any], fit_predict: Callable[[Any], dict[str, np.ndarray]],
            y_val: np.ndarray) -> tuple[Any, dict[str, np.ndarray]]:
  """The candidate with the best validation accuracy (ties: the first) and its predictions."""
  best, best_pred, best_acc = None, None, -1.0
  for cand in candidates:
    pred = fit_predict(cand)
    acc = float(np.mean(pred["val"] == y_val))
    if acc > best_acc:
      best, best_pred, best_acc = cand, pred, acc
  return best, best_pred


def _num_classes(ys: dict[str, np.ndarray]) -> int:
  """Columns of the probability matrices: every label seen in any split."""
  return int(max(int(np.max(v)) for v in ys.values())) + 1


def _full_probs(clf: Any, proba: np.ndarray, n_classes: int) -> np.ndarray:
  """(N, n_classes) probabilities from a classifier that saw only ``clf.classes_``."""
  out = np.zeros((proba.shape[0], n_classes), np.float32)
  out[:, np.asarray(clf.classes_, np.int64)] = proba
  return out


def _predictions(clf: Any, xs: dict[str, np.ndarray], n_classes: int) -> dict[str, np.ndarray]:
  """Predicted labels per split, and the val / test probabilities ("val_probs", "test_probs")."""
  pred = {s: clf.predict(xs[s]) for s in SPLITS}
  for s in ("val", "test"):
    pred[f"{s}_probs"] = _full_probs(clf, clf.predict_proba(xs[s]), n_classes)
  return pred


def logreg(xs: dict[str, np.ndarray], ys: dict[str, np.ndarray], seed: int,
           class_weight: str | None = None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
  """Logistic regression fitted on ``xs["train"]``, C chosen from ``LOGREG_C`` on val.

  Returns ({"C": chosen C}, predictions per split and "val_probs" / "test_probs").
  """
  n_classes = _num_classes(ys)
  def fit_predict(c):
    clf = linear_model.LogisticRegression(C=c, max_iter=1000, random_state=seed,
                                          class_weight=class_weight)
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", sk_exceptions.ConvergenceWarning)
      clf.fit(xs["train"], ys["train"])
    return _predictions(clf, xs, n_classes)
  c, pred = _select(LOGREG_C, fit_predict, ys["val"])
  return {"C": c}, pred


def _knn(xs: dict[str, np.ndarray], ys: dict[str, np.ndarray],
         seed: int) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
  del seed  # deterministic
  ks = sorted({min(k, len(ys["train"])) for k in KNN_K})

  n_classes = _num_classes(ys)

  def fit_predict(k):
    clf = neighbors.KNeighborsClassifier(n_neighbors=k).fit(xs["train"], ys["train"])
    return _predictions(clf, xs, n_classes)
  k, pred = _select(ks, fit_predict, ys["val"])
  return {"k": k}, pred


def _hgb(xs: dict[str, np.ndarray], ys: dict[str, np.ndarray],
         seed: int) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
  """Boosted trees; the number of rounds is chosen on val from the staged predictions."""
  x_train, y_train = xs["train"], ys["train"]
  if len(y_train) > HGB_MAX_TRAIN:
    keep = np.random.default_rng(seed).choice(len(y_train), HGB_MAX_TRAIN, replace=False)
    x_train, y_train = x_train[keep], y_train[keep]
  clf = ensemble.HistGradientBoostingClassifier(
      max_iter=HGB_MAX_ITER, learning_rate=HGB_LEARNING_RATE, max_leaf_nodes=15,
      min_samples_leaf=10, l2_regularization=1.0, early_stopping=False, random_state=seed)
  clf.fit(x_train, y_train)
  val_acc = [float(np.mean(p == ys["val"])) for p in clf.staged_predict(xs["val"])]
  best = int(np.argmax(val_acc))            # first stage with the best val accuracy
  pred = {}
  for s in SPLITS:
    for i, p in enumerate(clf.staged_predict(xs[s])):
      if i == best:
        pred[s] = p
        break
  n_classes = _num_classes(ys)
  for s in ("val", "test"):
    for i, p in enumerate(clf.staged_predict_proba(xs[s])):
      if i == best:
        pred[f"{s}_probs"] = _full_probs(clf, p, n_classes)
        break
  return {"n_iter": best + 1}, pred


_FITTERS = {"logreg_last": ("last", logreg), "logreg_last_day": ("last_day", logreg),
            "logreg_mean": ("mean", logreg),
            "hgb_summary": ("summary", _hgb), "knn_mean": ("mean", _knn),
            "day_only": ("day", logreg)}


def run_baselines(dataset: Any, names: Sequence[str] = BASELINES, seed: int = 0,
                  max_threads: int | None = MAX_THREADS,
                  fate_classes: Sequence[str] = FATE_CLASSES) -> dict[str, dict[str, Any]]:
  """Fits and scores the named baselines on a ``SequenceDataset`` (or look-alike).

  Args:
    dataset: anything with ``x`` (N, L, F), ``mask`` (N, L), ``y`` (N,),
      ``split`` (N,) in {0, 1, 2} and ``class_names``; ``meta["n_pcs"]`` locates
      the day column for ``day_only`` (default F - 2).
    names: a subset of ``BASELINES``.
    seed: random state of the fitted models.
    max_threads: BLAS / OpenMP thread cap while fitting (None = no cap).
    fate_classes: the two terminal populations of ``fate_pair_acc`` (the
      two-class accuracy among their test sequences, ``report.pair_accuracy``).

  Returns:
    {name: {"description", "selected" (the hyperparameter chosen on val),
    "train_acc", "val_acc", "test_acc", "train_macro_f1", "val_macro_f1",
    "test_macro_f1", "macro_f1" (test), "per_class_acc" (test),
    "cm_cf_acc" (test), "val_cm_cf_acc", "fate_pair_acc" (test), "seconds"}}.
  """
  unknown = [n for n in names if n not in BASELINES]
  if unknown:
    raise ValueError(f"unknown baselines {unknown}; choose from {BASELINES}.")
  with threadpoolctl.threadpool_limits(max_threads):
    return _run_baselines(dataset, names, seed, tuple(fate_classes))


def baseline_probs(dataset: Any, name: str, seed: int = 0) -> tuple[dict[str, Any],
                                                                     dict[str, np.ndarray]]:
  """One feature-based baseline, fitted as ``run_baselines`` fits it: its selected
  hyperparameter and its class probabilities on "val" and "test" (for checks that
  combine it with a model on the same splits, e.g. experiments/refit_check.py)."""
  if name not in _FITTERS:
    raise ValueError(f"baseline {name!r} has no probabilities; choose from {sorted(_FITTERS)}.")
  rows = _split_rows(dataset.split)
  y = np.asarray(dataset.y)
  feat_name, fitter = _FITTERS[name]
  day_col = day_column(dataset) if feat_name in ("day", "last_day") else None
  xs = _standardise(feature_sets(dataset.x, dataset.mask, day_col)[feat_name], rows)
  with threadpoolctl.threadpool_limits(MAX_THREADS):
    selected, pred = fitter(xs, {s: y[r] for s, r in rows.items()}, seed)
  return selected, {s: pred[f"{s}_probs"] for s in ("val", "test")}


def _run_baselines(dataset: Any, names: Sequence[str], seed: int,
                   fate_classes: tuple[str, ...]) -> dict[str, dict[str, Any]]:
  class_names = tuple(dataset.class_names)
  y = np.asarray(dataset.y)
  rows = _split_rows(dataset.split)
  ys = {s: y[r] for s, r in rows.items()}
  day_col = day_column(dataset) if {"day_only", "logreg_last_day"} & set(names) else None
  feats = feature_sets(dataset.x, dataset.mask, day_col) if set(names) - {"majority"} else {}
  scaled = {}
  results = {}
  for name in names:
    start = time.perf_counter()
    if name == "majority":
      counts = np.bincount(ys["train"], minlength=len(class_names))
      top = int(np.argmax(counts))
      selected = {"class": class_names[top]}
      pred = {s: np.full(len(ys[s]), top, np.int64) for s in SPLITS}
      pred["test_probs"] = np.tile(counts / counts.sum(), (len(ys["test"]), 1))
    else:
      feat_name, fitter = _FITTERS[name]
      if feat_name not in scaled:
        scaled[feat_name] = _standardise(feats[feat_name], rows)
      selected, pred = fitter(scaled[feat_name], ys, seed)
    scores = {s: score(ys[s], pred[s], class_names) for s in SPLITS}
    results[name] = {
        "description": DESCRIPTIONS[name],
        "selected": selected,
        **{f"{s}_acc": scores[s]["acc"] for s in SPLITS},
        **{f"{s}_macro_f1": scores[s]["macro_f1"] for s in SPLITS},
        "macro_f1": scores["test"]["macro_f1"],
        "per_class_acc": scores["test"]["per_class_acc"],
        "cm_cf_acc": scores["test"]["cm_cf_acc"],
        "val_cm_cf_acc": scores["val"]["cm_cf_acc"],
        "fate_pair_acc": report_lib.pair_accuracy(ys["test"], pred["test_probs"], class_names,
                                                  fate_classes),
        "seconds": time.perf_counter() - start,
    }
    logging.info("baseline %s (%s): train %.4f val %.4f test %.4f (%.1fs)", name, selected,
                 results[name]["train_acc"], results[name]["val_acc"],
                 results[name]["test_acc"], results[name]["seconds"])
  return results


def best_on_val(results: dict[str, dict[str, Any]], exclude: Sequence[str] = DIAGNOSTICS) -> str:
  """Name of the competing baseline with the highest validation accuracy (no diagnostics).

  Ties go to the earlier name in ``BASELINES`` (simpler models first), whatever
  the order of ``results`` (a dict read back from sorted JSON has another).
  """
  candidates = [n for n in results if n not in exclude] or list(results)
  rank = {n: i for i, n in enumerate(BASELINES)}
  candidates.sort(key=lambda n: rank.get(n, len(rank)))
  return max(candidates, key=lambda n: results[n]["val_acc"])
