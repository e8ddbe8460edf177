"""The run report: ``report.json``, ``report.md`` and the plots in ``plots/``.

Plots are drawn from the ``metrics.jsonl`` records (a path or the parsed
list), so a notebook can redraw them from any finished or running workdir.
Every file is written atomically (``fileio``), so a reader never sees half a
report.
"""
from __future__ import annotations

import json
import os
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  pylint: disable=g-import-not-at-top
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
from scipy import stats  # noqa: E402
from sklearn import metrics as skm  # noqa: E402

from cardiac_jax import fileio  # noqa: E402
from cardiac_jax import monitor  # noqa: E402

METRICS_FILE = "metrics.jsonl"
PLOTS = {"curves": "learning_curves.png", "gap": "accuracy_gap.png",
         "confusion": "confusion_matrix.png"}
Records = Sequence[dict[str, Any]]


def load_records(metrics: str | os.PathLike | Records) -> list[dict[str, Any]]:
  """The epoch records from a ``metrics.jsonl`` path, or the records themselves."""
  if isinstance(metrics, (str, os.PathLike)):
    with open(metrics) as f:
      return [json.loads(line) for line in f if line.strip()]
  return list(metrics)


def read_metrics(path: str) -> list[dict[str, Any]]:
  """The per-epoch records of ``metrics.jsonl`` (empty if absent)."""
  return load_records(path) if os.path.exists(path) else []


def truncate_metrics(path: str, last_epoch: int) -> list[dict[str, Any]]:
  """Keeps only records of epochs <= ``last_epoch`` (a resume must not duplicate them)."""
  stored = read_metrics(path)
  records = [r for r in stored if r["epoch"] <= last_epoch]
  if len(records) < len(stored):
    fileio.atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in records))
  return records


def append_metrics(path: str, record: dict[str, Any]) -> None:
  """Appends one epoch's record, flushed, so a crash loses at most that epoch (on the
  primary process only, ``fileio.is_primary``)."""
  if not fileio.is_primary():
    return
  with open(path, "a") as f:
    f.write(json.dumps(record) + "\n")
    f.flush()


# ---------------------------------------------------------------- numbers


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray,
                           class_names: Sequence[str]) -> dict[str, Any]:
  """Accuracy, macro-F1, per-class precision/recall/F1/support, confusion matrix.

  Macro-F1 averages over the classes present in the truth or the predictions
  (scikit-learn's default), so a class with no test sequences does not drag
  it down with an undefined 0; the per-class table lists every class.
  """
  labels = list(range(len(class_names)))
  p, r, f, s = skm.precision_recall_fscore_support(y_true, y_pred, labels=labels,
                                                   zero_division=0)
  return {
      "accuracy": float(skm.accuracy_score(y_true, y_pred)),
      "macro_f1": float(skm.f1_score(y_true, y_pred, average="macro", zero_division=0)),
      "per_class": {name: {"precision": float(p[i]), "recall": float(r[i]),
                           "f1": float(f[i]), "support": int(s[i])}
                    for i, name in enumerate(class_names)},
      "confusion": skm.confusion_matrix(y_true, y_pred, labels=labels).tolist(),
  }


def auc_score(y_true: np.ndarray, probs: np.ndarray) -> float | None:
  """ROC AUC of class probabilities: of the second class for two, else macro
  one-vs-rest over the classes present; None when a single class is present."""
  y_true, probs = np.asarray(y_true), np.asarray(probs, np.float64)
  present = np.unique(y_true)
  if present.size < 2:
    return None
  if probs.shape[1] == 2:
    return _binary_auc(y_true == 1, probs[:, 1])
  return float(np.mean([_binary_auc(y_true == c, probs[:, c]) for c in present]))


def _binary_auc(positive: np.ndarray, score: np.ndarray) -> float:
  """Mann-Whitney AUC with average ranks for ties (scikit-learn's value, without its
  overhead: the paired bootstrap calls this thousands of times)."""
  ranks = stats.rankdata(score)
  n_pos = int(positive.sum())
  n_neg = positive.size - n_pos
  return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def auc_difference(y_true: np.ndarray, probs_a: np.ndarray, probs_b: np.ndarray, *,
                   n_boot: int = 1000, seed: int = 0) -> dict[str, float | None]:
  """AUC(a) - AUC(b) on the same units, with its paired-bootstrap standard error.

  Both readings are resampled together (the same units), so what is shared
  between them cancels: a difference of 0.02 on 1,500 clones can be resolved.
  """
  y_true = np.asarray(y_true)
  a, b = auc_score(y_true, probs_a), auc_score(y_true, probs_b)
  if a is None or b is None:
    return {"diff": None, "se": None}
  rng = np.random.default_rng(seed)
  diffs = []
  for _ in range(n_boot):
    idx = rng.integers(0, y_true.size, y_true.size)
    da, db = auc_score(y_true[idx], probs_a[idx]), auc_score(y_true[idx], probs_b[idx])
    if da is not None and db is not None:
      diffs.append(da - db)
  return {"diff": a - b, "se": float(np.std(diffs)) if diffs else None}


def pair_accuracy(y_true: np.ndarray, probs: np.ndarray, class_names: Sequence[str],
                  pair: Sequence[str]) -> float | None:
  """Two-class accuracy among the sequences whose true class is one of ``pair``.

  The prediction is the likelier of the two classes (the other classes' mass is
  ignored), so chance is 0.5 whatever the rest of the model does: the honest
  number for a fate branch such as CM vs CF. None when a class of the pair is
  not a class of the model or has no sequence here.
  """
  names = list(class_names)
  if len(pair) != 2 or any(c not in names for c in pair):
    return None
  ids = np.asarray([names.index(c) for c in pair])
  y_true = np.asarray(y_true)
  rows = np.isin(y_true, ids)
  if not rows.any() or not all(np.any(y_true == i) for i in ids):
    return None
  picked = ids[np.argmax(np.asarray(probs)[rows][:, ids], axis=1)]
  return float(np.mean(picked == y_true[rows]))


def fate_pair(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The two terminal populations of ``config.data.fate_classes`` (default CM, CF)."""
  return tuple(config.data.get("fate_classes", ("CM", "CF")))


def success_criteria(results: dict[str, Any],
                     monitor_cfg: ml_collections.ConfigDict) -> dict[str, dict[str, Any]]:
  """The design's pass/fail checks, each with its value and threshold."""
  running = results.get("train_acc_running")
  out = {
      "test_accuracy": {
          "value": results["test_acc"], "threshold": monitor_cfg.target_test_acc,
          "rule": f"test accuracy > {monitor_cfg.target_test_acc}",
          "passed": results["test_acc"] > monitor_cfg.target_test_acc},
      "accuracy_gap": {
          "value": results["acc_gap"], "threshold": monitor_cfg.target_gap,
          "rule": f"train - val accuracy at the best epoch < {monitor_cfg.target_gap}",
          "passed": results["acc_gap"] < monitor_cfg.target_gap},
      # Judged both ways: against the eval-mode training accuracy (the best
      # weights re-scored without dropout), and against the running accuracy
      # that Keras / PyTorch loops print (the epoch's batches in training mode,
      # dropout and the regularisers on), which the seed's criterion was written for.
      "val_not_below_train": {
          "value": results["val_acc"] - results["train_acc"], "threshold": 0.0,
          "rule": "validation accuracy >= training accuracy (best epoch, eval mode)",
          "passed": results["val_acc"] >= results["train_acc"]},
      "val_test_agreement": {
          "value": results["val_test_diff"], "threshold": monitor_cfg.val_test_tolerance,
          "rule": f"|val - test accuracy| <= {monitor_cfg.val_test_tolerance}",
          "passed": results["val_test_diff"] <= monitor_cfg.val_test_tolerance},
  }
  if running is not None and np.isfinite(running):   # absent from per-member rows
    out["val_not_below_train"]["running"] = {
        "value": results["val_acc"] - running, "threshold": 0.0,
        "rule": "validation accuracy >= running training accuracy (best epoch's batches in "
                "training mode)",
        "passed": results["val_acc"] >= running}
  return out


def summarise(*, config: ml_collections.ConfigDict, evals: dict[str, dict[str, Any]],
              y_test: np.ndarray, class_names: Sequence[str], records: Records,
              best_epoch: int, early_stopped: bool, num_params: int,
              wall_seconds: float) -> dict[str, Any]:
  """The final results of a run: best-epoch weights evaluated on every split.

  ``evals`` holds eval-mode results of the best weights for "train", "val" and
  "test" (the test one with "probs"), so the gap and |val - test| describe
  exactly the weights being reported.
  """
  y_pred = np.argmax(evals["test"]["probs"], axis=-1)
  cls = classification_metrics(np.asarray(y_test), y_pred, class_names)
  best = next((r for r in records if r["epoch"] == int(best_epoch)), {})
  results = {
      "test_acc": evals["test"]["acc"],
      "test_loss": evals["test"]["loss"],
      "macro_f1": cls["macro_f1"],
      "val_acc": evals["val"]["acc"],
      "val_loss": evals["val"]["loss"],
      "train_acc": evals["train"]["acc"],
      "train_loss": evals["train"]["loss"],
      # The best epoch's batches in training mode (dropout on; members: their mean).
      "train_acc_running": float(best.get("train_acc_running", float("nan"))),
      "train_loss_running": float(best.get("train_loss_running", float("nan"))),
      **monitor.gaps(evals["train"]["acc"], evals["val"]["acc"], evals["train"]["loss"],
                     evals["val"]["loss"]),
      "val_test_diff": abs(evals["val"]["acc"] - evals["test"]["acc"]),
      "best_epoch": int(best_epoch),
      "epochs_run": max((r["epoch"] for r in records), default=0),
      "early_stopped": bool(early_stopped),
      "num_params": int(num_params),
      "train_seconds": float(sum(r.get("seconds", 0.0) for r in records)),
      "wall_seconds": float(wall_seconds),
      "num_test": int(evals["test"]["count"]),
      "class_names": list(class_names),
      "per_class": cls["per_class"],
      "confusion": cls["confusion"],
      "fate_classes": list(fate_pair(config)),
      "fate_pair_acc": pair_accuracy(y_test, evals["test"]["probs"], class_names,
                                     fate_pair(config)),
      "config_name": config.name,
  }
  results["criteria"] = success_criteria(results, config.monitor)
  results["thresholds"] = {"moderate_gap": config.monitor.moderate_gap,
                           "significant_gap": config.monitor.significant_gap}
  return results


# ---------------------------------------------------------------- files


def _fmt(value: Any) -> str:
  """A number, or a list of them (one per member), for the tables."""
  if isinstance(value, (list, tuple)):
    return ", ".join(f"{v:g}" for v in value)
  return f"{value:g}"


def _members_markdown(m: dict[str, Any]) -> list[str]:
  """The members' own scores beside the ensemble's (runs with train.num_members > 1)."""
  lines = ["", f"## Members ({m['num_members']}, seeds {_fmt(m['seeds'])}; the numbers above "
           "are their ensemble: the mean of their probabilities)", "",
           "| split | members' accuracy (mean ± std) | each member |", "|---|---|---|"]
  for name in ("train", "val", "test"):
    lines.append(f"| {name} | {m[f'{name}_acc_mean']:.4f} ± {m[f'{name}_acc_std']:.4f} | "
                 + ", ".join(f"{a:.4f}" for a in m[f"{name}_acc"]) + " |")
  lines.append(f"| best epoch | | {_fmt(m['best_epoch'])} |")
  return lines


def _markdown(results: dict[str, Any]) -> str:
  yes = lambda b: "yes" if b else "no"  # noqa: E731
  # A unit task (regions) scores units, not sequences, at the top: say so.
  unit = str(results.get("headline", "")).split(":")[0]     # e.g. "per spot"
  lines = [
      f"# Run report: {results['config_name']}", "",
      "| metric | value |", "|---|---|",
      f"| test accuracy{f' ({unit})' if unit else ''} | {results['test_acc']:.4f} |",
      f"| macro-F1 (test{f', {unit}' if unit else ''}) | {results['macro_f1']:.4f} |",
      f"| validation accuracy (best epoch{f', {unit}' if unit else ''}) | "
      f"{results['val_acc']:.4f} |",
      f"| training accuracy (best epoch, eval mode) | {results['train_acc']:.4f} |",
      f"| training accuracy (best epoch, running in training mode) | "
      f"{results.get('train_acc_running', float('nan')):.4f} |",
      f"| accuracy gap (train - val) | {results['acc_gap']:+.4f} |",
      f"| loss gap (val - train) | {results['loss_gap']:+.4f} |",
      f"| \\|val - test\\| | {results['val_test_diff']:.4f} |",
      f"| best epoch | {results['best_epoch']} |",
      f"| epochs run | {results['epochs_run']} |",
      f"| early stopped | {yes(results['early_stopped'])} |",
      f"| parameters | {results['num_params']:,} |",
      *([f"| {'/'.join(results['fate_classes'])} two-class accuracy (test) | "
         f"{results['fate_pair_acc']:.4f} |"] if results.get("fate_pair_acc") is not None else []),
      *([f"| sequence-branch gate (chosen on validation from "
         f"{results['branch_gate']['grid']}) | {_fmt(results['branch_gate']['chosen'])} |"]
        if results.get("branch_gate") else []),
      f"| training time (all epochs) | {results['train_seconds']:.1f} s |",
      f"| wall time (this call) | {results['wall_seconds']:.1f} s |",
      "", "## Success criteria", "", "| criterion | value | result |", "|---|---|---|",
  ]
  for criterion in results["criteria"].values():
    for c in (criterion, criterion.get("running")):
      if c:
        rule = c["rule"].replace("|", "\\|")
        lines.append(f"| {rule} | {c['value']:.4f} | {'PASS' if c['passed'] else 'FAIL'} |")
  if results.get("members"):
    lines += _members_markdown(results["members"])
  lines += ["", "## Per-class (test)", "", "| class | precision | recall | F1 | support |",
            "|---|---|---|---|---|"]
  for name, m in results["per_class"].items():
    lines.append(f"| {name} | {m['precision']:.3f} | {m['recall']:.3f} | {m['f1']:.3f} | "
                 f"{m['support']} |")
  names = results["class_names"]
  lines += ["", "## Confusion matrix (test; rows = true, columns = predicted)", "",
            "| | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
  for name, row in zip(names, results["confusion"]):
    lines.append(f"| **{name}** | " + " | ".join(str(v) for v in row) + " |")
  lines += list(results.get("sections_md", ()))   # a unit task's own tables (clones, regions)
  lines += ["", "## Plots", ""]
  lines += [f"![{key}](plots/{fname})" for key, fname in PLOTS.items()]
  lines += [f"![{key}](plots/{fname})" for key, fname in results.get("unit_plots", {}).items()]
  return "\n".join(lines) + "\n"


def plot_learning_curves(metrics: str | os.PathLike | Records, path: str) -> str:
  """Loss, accuracy (train vs val), the schedules and the training health norms.

  Health (global norms of gradients, updates and parameters) is drawn when the
  records have it; metrics.jsonl files written before it existed lack it.
  """
  recs = load_records(metrics)
  ep = [r["epoch"] for r in recs]
  health = bool(recs) and all("grad_norm" in r for r in recs)
  fig, axes = plt.subplots(1, 4 if health else 3, figsize=(21 if health else 16, 4.2),
                           layout="constrained")
  ax = axes[0]
  ax.plot(ep, [r["train_loss"] for r in recs], "o-", label="train (eval mode)")
  ax.plot(ep, [r["val_loss"] for r in recs], "o-", label="validation")
  ax.plot(ep, [r["train_loss_running"] for r in recs], "--", alpha=0.6,
          label="train (running, smoothed)")
  ax.set(xlabel="epoch", ylabel="cross-entropy", title="Loss")
  ax.legend()
  ax = axes[1]
  ax.plot(ep, [r["train_acc"] for r in recs], "o-", label="train (eval mode)")
  ax.plot(ep, [r["val_acc"] for r in recs], "o-", label="validation")
  ax.plot(ep, [r["train_acc_running"] for r in recs], "--", alpha=0.6,
          label="train (running, training mode)")
  ax.set(xlabel="epoch", ylabel="accuracy", title="Accuracy")
  ax.legend()
  ax = axes[2]
  ax.plot(ep, [r["lr"] for r in recs], "o-", color="C0", label="learning rate")
  ax.set(xlabel="epoch", ylabel="learning rate", title="Schedules (at each epoch's end)")
  ax2 = ax.twinx()
  ax2.plot(ep, [r["label_smoothing"] for r in recs], "s-", color="C1",
           label="label smoothing")
  ax2.plot(ep, [r["weight_decay"] for r in recs], "^-", color="C2", label="weight decay")
  ax2.set_ylabel("label smoothing / weight decay")
  handles = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
  ax.legend(handles, [h.get_label() for h in handles])
  if health:
    ax = axes[3]
    for key, label in (("grad_norm", "gradients (mean, before clipping)"),
                       ("update_norm", "updates (mean)"), ("param_norm", "parameters (end)")):
      ax.plot(ep, [r[key] for r in recs], "o-", label=label)
    ax.set(xlabel="epoch", ylabel="global norm", yscale="log", title="Training health")
    ax.legend()
  for a in axes:
    a.grid(alpha=0.3)
  return str(fileio.save_figure(fig, path))


def plot_accuracy_gap(metrics: str | os.PathLike | Records, path: str,
                      moderate: float = 0.08, significant: float = 0.15) -> str:
  """Train - validation accuracy per epoch against the overfitting thresholds."""
  recs = load_records(metrics)
  fig, ax = plt.subplots(figsize=(7, 4), layout="constrained")
  ax.plot([r["epoch"] for r in recs], [r["acc_gap"] for r in recs], "o-",
          label="train - val accuracy")
  ax.axhline(moderate, color="orange", ls="--", label=f"moderate ({moderate})")
  ax.axhline(significant, color="red", ls="--", label=f"significant ({significant})")
  ax.axhline(0.0, color="gray", lw=0.8)
  ax.set(xlabel="epoch", ylabel="accuracy gap", title="Overfitting monitor")
  ax.legend()
  ax.grid(alpha=0.3)
  return str(fileio.save_figure(fig, path))


def plot_confusion(confusion: Sequence[Sequence[int]], class_names: Sequence[str],
                   path: str) -> str:
  """Row-normalised confusion matrix annotated with fractions and counts."""
  cm = np.asarray(confusion, np.float64)
  norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1.0)
  fig, ax = plt.subplots(figsize=(1.1 * len(class_names) + 2, 1.1 * len(class_names) + 1))
  im = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
  fig.colorbar(im, ax=ax, fraction=0.046)
  ticks = np.arange(len(class_names))
  ax.set(xticks=ticks, yticks=ticks, xticklabels=class_names, yticklabels=class_names,
         xlabel="predicted", ylabel="true", title="Confusion matrix (test, row-normalised)")
  for i in range(cm.shape[0]):
    for j in range(cm.shape[1]):
      ax.text(j, i, f"{norm[i, j]:.2f}\n({int(cm[i, j])})", ha="center", va="center",
              fontsize=8, color="white" if norm[i, j] > 0.5 else "black")
  return str(fileio.save_figure(fig, path))


def write_report(workdir: str, results: dict[str, Any], records: Records) -> dict[str, str]:
  """Writes report.json, report.md and the three plots; returns their paths."""
  plots_dir = os.path.join(workdir, "plots")
  os.makedirs(plots_dir, exist_ok=True)
  paths = {key: os.path.join(plots_dir, fname) for key, fname in PLOTS.items()}
  th = results.get("thresholds", {})
  plot_learning_curves(records, paths["curves"])
  plot_accuracy_gap(records, paths["gap"], th.get("moderate_gap", 0.08),
                    th.get("significant_gap", 0.15))
  plot_confusion(results["confusion"], results["class_names"], paths["confusion"])
  paths["json"] = os.path.join(workdir, "report.json")
  paths["md"] = os.path.join(workdir, "report.md")
  fileio.atomic_write_json(paths["json"], results)
  fileio.atomic_write_text(paths["md"], _markdown(results))
  return paths
