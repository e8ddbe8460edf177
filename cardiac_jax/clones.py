"""A clonal model's scores and predictions per clone: the report, and predict on new data.

The model is trained on sequences (``data/clonal.py``); the question is about
clones. Every clone is scored from ``eval_draws`` sequences of its early cells
(a random subset and order per draw when it has more cells than a sequence
holds), their probabilities averaged, at every observation day, against the
baselines on the same clones (``clone_baselines``). The headline numbers
(``test_auc``, ``test_acc``) read every early cell of a clone (the last
observation day); ``per_day`` answers the early-fate question.
"""
from __future__ import annotations

import os
from typing import Any, Callable

from absl import logging
import numpy as np

from cardiac_jax import clone_baselines
from cardiac_jax import evaluation
from cardiac_jax import fileio
from cardiac_jax import monitor
from cardiac_jax import query
from cardiac_jax import report as report_lib
from cardiac_jax import run as run_lib
from cardiac_jax import steps
from cardiac_jax.data import clonal
from cardiac_jax.data import splits as splits_lib
from cardiac_jax.data.errors import DataError

PREDICTIONS_CSV = "clone_predictions.csv"
# Every held-out clone's reading by every method at every observation day (long format),
# so that studies can pool clones over rotations and compare methods on the same clones.
SCORES_CSV = "clone_scores_by_day.csv"
PredictFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


def clone_probabilities(predict_fn: PredictFn, cell_pcs: np.ndarray, cell_time: np.ndarray,
                        cell_clone: np.ndarray, requests: list[tuple[np.ndarray, int]], *,
                        length: int, n_times: int, draws: int, seed: int = 0
                        ) -> list[np.ndarray]:
  """For each request (clones, day): (len(clones), C), the mean probabilities of ``draws``
  sequences of each clone's cells up to ``day`` (``clonal.clone_sequences``).

  Every request goes through ONE ``predict_fn`` call (one compilation for any number
  of splits and days); each request's draws are seeded by (seed, day).
  """
  srcs, masks = [], []
  for clones, day in requests:
    clones = np.asarray(clones, np.int64)
    src, mask = clonal.clone_sequences(cell_clone, cell_time, np.tile(clones, draws),
                                       np.full(clones.size * draws, day), length,
                                       np.random.default_rng([seed, 5, day]))
    srcs.append(src)
    masks.append(mask)
  src, mask = np.concatenate(srcs), np.concatenate(masks)
  probs = predict_fn(clonal.sequence_features(cell_pcs, cell_time, cell_clone, src, n_times),
                     mask)
  out, start = [], 0
  for clones, _ in requests:
    n = len(clones) * draws
    out.append(probs[start:start + n].reshape(draws, len(clones), -1).mean(axis=0))
    start += n
  return out


def _scores(y: np.ndarray, probs: np.ndarray) -> dict[str, Any]:
  picked = np.clip(probs[np.arange(y.size), y], 1e-12, None)
  return {"auc": report_lib.auc_score(y, probs), "acc": float(np.mean(probs.argmax(1) == y)),
          "loss": float(-np.mean(np.log(picked))), "n": int(y.size)}


def report(run: run_lib.Run, state: steps.TrainState, workdir: str,
           results: dict[str, Any]) -> None:
  """Clone-level scores of every split at every observation day, the baselines on the
  same clones, ``clone_predictions.csv`` and two plots; the headline numbers of
  ``results`` become the clones' (the sequence-level ones move to "sequence_level")."""
  ds, info = run.dataset, run.dataset.meta["task_info"]
  tables, names = ds.tables, list(ds.class_names)
  cells = clone_baselines.Cells(tables)
  days = cells.days
  last = max(days)

  keys = [(split, day) for day in days for split in splits_lib.SPLITS]
  seen = {k: cells.seen(cells.clones(k[0]), k[1]) for k in keys}
  probs = clone_probabilities(
      lambda x, m: evaluation.predict(run, state, x, m), cells.pcs, cells.time, cells.clone,
      [(seen[k], k[1]) for k in keys], length=ds.length, n_times=len(ds.meta["time_labels"]),
      draws=int(info["eval_draws"]), seed=int(run.config.seed))
  model_probs = {k: (seen[k], p) for k, p in zip(keys, probs)}
  per_day = {day: {split: _scores(cells.label[seen[(split, day)]], model_probs[(split, day)][1])
                   for split in splits_lib.SPLITS} for day in days}
  base = clone_baselines.evaluate(tables, len(names), seed=int(run.config.seed))
  time_labels = ds.meta["time_labels"]
  summary = _summary(per_day, base, model_probs, cells, time_labels)

  seq_keys = ("train_acc", "val_acc", "test_acc", "train_loss", "val_loss", "test_loss",
              "macro_f1", "acc_gap", "loss_gap", "val_test_diff", "num_test", "confusion",
              "per_class", "fate_pair_acc")
  results["sequence_level"] = {k: results.get(k) for k in seq_keys}
  head = {s: per_day[last][s] for s in splits_lib.SPLITS}
  test_clones, test_probs = model_probs[("test", last)]
  cls = report_lib.classification_metrics(cells.label[test_clones], test_probs.argmax(1), names)
  results.update(
      train_acc=head["train"]["acc"], val_acc=head["val"]["acc"], test_acc=head["test"]["acc"],
      train_loss=head["train"]["loss"], val_loss=head["val"]["loss"],
      test_loss=head["test"]["loss"], val_auc=head["val"]["auc"], test_auc=head["test"]["auc"],
      n_test_clones=head["test"]["n"], num_test=head["test"]["n"], macro_f1=cls["macro_f1"],
      per_class=cls["per_class"], confusion=cls["confusion"], fate_pair_acc=None,
      val_test_diff=abs(head["val"]["acc"] - head["test"]["acc"]),
      **monitor.gaps(head["train"]["acc"], head["val"]["acc"], head["train"]["loss"],
                     head["val"]["loss"]),
      clonal=summary, baselines=summary["baselines"],
      best_baseline=summary["best_baseline_by_day"][str(time_labels[last])])
  results["criteria"] = report_lib.success_criteria(results, run.config.monitor)
  results["sections_md"] = _markdown(summary, names)
  results["unit_plots"] = _plots(workdir, summary, model_probs, cells, names, time_labels)
  _write_predictions(workdir, ds, cells, model_probs, last, names)
  _write_scores_by_day(workdir, ds, cells, model_probs, base, names)
  logging.info("clones: test AUC %s, acc %.4f on %d clones (every early cell); per day %s",
               results["test_auc"], results["test_acc"], results["n_test_clones"],
               {time_labels[d]: per_day[d]["test"]["auc"] for d in days})


def _summary(per_day: dict, base: dict, model_probs: dict, cells: Any,
             time_labels: list[str]) -> dict[str, Any]:
  """The JSON of the clone-level scores: model and baselines per day, the best baseline
  chosen on validation per day, and the model's difference to it and to the best
  one-cell reading, each with its paired-bootstrap standard error on the test clones."""
  one_cell = ("logreg_one_cell", "logreg_latest_cell")
  out: dict[str, Any] = {"per_day": {}, "baselines": {}, "best_baseline_by_day": {}}
  for day, scores in per_day.items():
    label = str(time_labels[day])
    out["per_day"][label] = {"model": scores}
    ranked = {n: b["per_day"][day]["val"]["auc"] for n, b in base.items()}
    best = max(ranked, key=lambda n: -np.inf if ranked[n] is None else ranked[n])
    best_cell = max(one_cell, key=lambda n: -np.inf if ranked[n] is None else ranked[n])
    out["best_baseline_by_day"][label] = best
    clones, probs = model_probs[("test", day)]
    y = cells.label[clones]
    for name, b in base.items():
      out["per_day"][label][name] = b["per_day"][day]
      if day == max(per_day):
        out["baselines"][name] = {
            "val_auc": b["per_day"][day]["val"]["auc"], "test_auc": b["per_day"][day]["test"]["auc"],
            "val_acc": b["per_day"][day]["val"]["acc"], "test_acc": b["per_day"][day]["test"]["acc"]}
    for key, name in (("vs_best_baseline", best), ("vs_best_one_cell", best_cell)):
      b_clones, b_probs = base[name]["probs"]["test"][day]
      assert np.array_equal(b_clones, clones)   # the same clones, so a paired difference
      out["per_day"][label][key] = {"baseline": name, **report_lib.auc_difference(
          y, probs, b_probs)}
  return out


def _fmt(v: Any) -> str:
  return "–" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def _markdown(summary: dict[str, Any], names: list[str]) -> list[str]:
  days = list(summary["per_day"])
  methods = ["model"] + list(clone_baselines.NAMES)
  lines = ["", "## Clones: fate from the early cells (test AUC / accuracy per observation day)",
           "", "Each held-out clone is scored from its cells up to the day; the headline numbers "
           "above read every early cell (the last day). Classes: " + ", ".join(names) + ".", "",
           "| method | " + " | ".join(days) + " |", "|---" * (len(days) + 1) + "|"]
  for m in methods:
    cells = [f"{_fmt(summary['per_day'][d][m]['test']['auc'])} / "
             f"{_fmt(summary['per_day'][d][m]['test']['acc'])}" for d in days]
    lines.append(f"| {m} | " + " | ".join(cells) + " |")
  lines += ["", "| day | clones (test) | best baseline on validation | model - it (± SE) | "
            "model - best one-cell reading (± SE) |", "|---|---|---|---|---|"]
  for d in days:
    v, c = summary["per_day"][d]["vs_best_baseline"], summary["per_day"][d]["vs_best_one_cell"]
    lines.append(f"| {d} | {summary['per_day'][d]['model']['test']['n']} | {v['baseline']} | "
                 f"{_fmt(v['diff'])} ± {_fmt(v['se'])} | {_fmt(c['diff'])} ± {_fmt(c['se'])} "
                 f"({c['baseline']}) |")
  return lines


def _plots(workdir: str, summary: dict[str, Any], model_probs: dict, cells: Any,
           names: list[str], time_labels: list[str]) -> dict[str, str]:
  """Test AUC per observation day (model and baselines), and P(fate) per clone against
  its last observed day, coloured by its true fate."""
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  os.makedirs(os.path.join(workdir, "plots"), exist_ok=True)
  days = list(summary["per_day"])
  fig = Figure(figsize=(7, 4), layout="constrained")
  ax = fig.subplots()
  for m in ["model"] + list(clone_baselines.NAMES):
    aucs = [summary["per_day"][d][m]["test"]["auc"] for d in days]
    ax.plot(days, [np.nan if a is None else a for a in aucs], "o-" if m == "model" else ".--",
            lw=2.5 if m == "model" else 1, label=m)
  ax.axhline(0.5, color="gray", lw=0.8)
  ax.set(xlabel="observed up to", ylabel="test AUC (clones)", title="Clone fate from early cells")
  ax.legend(fontsize=7)
  ax.grid(alpha=0.3)
  paths = {"clone_auc_by_day": "clone_auc_by_day.png", "clone_fate_by_day":
           "clone_fate_by_day.png"}
  fileio.save_figure(fig, os.path.join(workdir, "plots", paths["clone_auc_by_day"]))
  last = max(int(d) for d in cells.days)
  clones, probs = model_probs[("test", last)]
  latest = np.full(cells.label.size, -1)
  np.maximum.at(latest, cells.clone, cells.time)
  fig = Figure(figsize=(7, 4), layout="constrained")
  ax = fig.subplots()
  jitter = np.random.default_rng(0).uniform(-0.15, 0.15, clones.size)
  for k, name in enumerate(names):
    rows = cells.label[clones] == k
    ax.scatter(latest[clones][rows] + jitter[rows], probs[rows, 0], s=10, alpha=0.6,
               label=f"true {name}")
  ax.set_xticks(cells.days, [time_labels[d] for d in cells.days])
  ax.set(xlabel="last observed day of the clone", ylabel=f"P({names[0]})",
         title="Test clones: predicted fate from every early cell")
  ax.legend(fontsize=7)
  ax.grid(alpha=0.3)
  fileio.save_figure(fig, os.path.join(workdir, "plots", paths["clone_fate_by_day"]))
  return paths


def _write_predictions(workdir: str, ds: Any, cells: Any, model_probs: dict, last: int,
                       names: list[str]) -> None:
  """``clone_predictions.csv``: every labelled clone of every split read from all its early
  cells (training clones with the weights fitted to them: marked so)."""
  import pandas as pd  # pylint: disable=g-import-not-at-top
  tables, time_labels = ds.tables, ds.meta["time_labels"]
  frames = []
  for split in splits_lib.SPLITS:
    clones, probs = model_probs[(split, last)]
    frames.append(clone_table(clones, probs, cells, names, time_labels,
                              np.asarray(tables["clone_names"]).astype(str),
                              split=split, true=cells.label[clones]))
  table = pd.concat(frames, ignore_index=True)
  fileio.atomic_write_text(os.path.join(workdir, PREDICTIONS_CSV), table.to_csv(index=False))


def _write_scores_by_day(workdir: str, ds: Any, cells: Any, model_probs: dict, base: dict,
                         names: list[str]) -> None:
  """``clone_scores_by_day.csv``: clone, split, day, method, true, p_<fate> for every
  validation and test clone, observation day and method (the model and each baseline)."""
  import pandas as pd  # pylint: disable=g-import-not-at-top
  clone_names = np.asarray(ds.tables["clone_names"]).astype(str)
  time_labels = ds.meta["time_labels"]
  frames = []
  for split in ("val", "test"):
    for day in cells.days:
      readings = {"model": model_probs[(split, day)]}
      readings.update({n: b["probs"][split][day] for n, b in base.items()})
      for method, (clones, probs) in readings.items():
        frame = pd.DataFrame({"clone": clone_names[clones], "split": split,
                              "day": time_labels[day], "method": method,
                              "true": np.asarray(names, dtype=object)[cells.label[clones]]})
        for k, name in enumerate(names):
          frame[f"p_{name}"] = np.asarray(probs)[:, k]
        frames.append(frame)
  fileio.atomic_write_text(os.path.join(workdir, SCORES_CSV),
                           pd.concat(frames, ignore_index=True).to_csv(index=False))


def clone_table(clones: np.ndarray, probs: np.ndarray, cells: Any, names: list[str],
                time_labels: list[str], clone_names: np.ndarray, *, split: str | None = None,
                true: np.ndarray | None = None) -> Any:
  """One row per clone: clone, (split, true,) n_early_cells, days_seen, p_<fate>..., label."""
  import pandas as pd  # pylint: disable=g-import-not-at-top
  n_early = np.bincount(cells.clone, minlength=clone_names.size)[clones]
  days_seen = [",".join(time_labels[d] for d in np.unique(cells.time[cells.clone == c]))
               for c in clones]
  table = pd.DataFrame({"clone": clone_names[clones]})
  if split is not None:
    table["split"] = split
    table["true"] = np.asarray(names, dtype=object)[true]
  table["n_early_cells"] = n_early
  table["days_seen"] = days_seen
  for k, name in enumerate(names):
    table[f"p_{name}"] = probs[:, k]
  table["label"] = np.asarray(names, dtype=object)[probs.argmax(axis=1)]
  return table


# ---------------------------------------------------------------- new data


def predict(adata: Any, model: Any, *, time_key: str = "diffday",
            counts_layer: str | None = None, clone_key: str = "", clone_obsm: str = "",
            key_added: str = "cardiac_jax", copy: bool = False, seed: int = 0,
            min_gene_fraction: float = query.MIN_GENE_FRACTION, draws: int | None = None,
            **unused: Any) -> Any:
  """Each barcoded clone's fate from its cells before the model's fate day.

  Writes ``uns[key_added]["clones"]`` (the per-clone table: clone, n_early_cells,
  days_seen, p_<fate>, label), ``obsm[f"{key_added}_clone_fate"]`` (each cell: its
  clone's probabilities; NaN without a clone or a predicted clone) and
  ``obs[f"{key_added}_clone_label"]``. Cells on or after the fate day never enter
  a sequence. Cells without counts are left out of their clone's sequences.
  """
  import pandas as pd  # pylint: disable=g-import-not-at-top
  del unused
  info = model.info["task_info"]
  time_index = query.map_time_labels(query.time_column(adata, time_key), model.time_labels)
  counts = query.read_counts(adata, model, counts_layer=counts_layer,
                             min_gene_fraction=min_gene_fraction, key_added=key_added)
  cfg = {"clone_key": clone_key or info["clone_key"],
         "clone_obsm": clone_obsm if clone_key or clone_obsm else info["clone_obsm"]}
  names = clonal.clone_column(adata, _Cfg(cfg))
  if copy:
    adata = adata.copy()
  fate_day = list(model.time_labels).index(info["fate_day"])
  early = np.flatnonzero((names != "") & (time_index < fate_day) & ~counts.empty)
  if early.size == 0:
    raise DataError(f"no barcoded cell with counts before the fate day {info['fate_day']!r}: "
                    "nothing to predict; check the clone column (--clone_key / --clone_obsm) "
                    "and the time column (--time_key)")
  clone_names, cell_clone = np.unique(names[early], return_inverse=True)
  embedding = query.embed(counts.matrix, counts.gene_names, model.preprocessor)
  pcs = embedding[early]
  cell_time = time_index[early].astype(np.int64)
  clones = np.arange(clone_names.size)
  probs, = clone_probabilities(model.predict_sequences, pcs, cell_time, cell_clone,
                               [(clones, fate_day - 1)], length=int(info["length"]),
                               n_times=len(model.time_labels),
                               draws=int(draws or info["eval_draws"]), seed=seed)
  fates = list(model.class_names)
  view = clone_baselines.Cells({"cell_pcs": pcs, "cell_time": cell_time,
                                "cell_clone": cell_clone, "clone_split": clones * 0,
                                "clone_label": clones * 0, "observation_days": [fate_day - 1]})
  table = clone_table(clones, probs, view, fates, list(model.time_labels), clone_names)
  per_cell = np.full((adata.n_obs, len(fates)), np.nan, np.float32)
  index = pd.Index(clone_names).get_indexer(names)
  has = index >= 0
  per_cell[has] = probs[index[has]]
  adata.obsm[f"{key_added}_clone_fate"] = per_cell
  adata.obsm[f"X_pca_{key_added}"] = embedding
  labels = np.where(has, np.argmax(np.nan_to_num(per_cell, nan=-1), axis=1), -1)
  adata.obs[f"{key_added}_clone_label"] = pd.Categorical.from_codes(labels, categories=fates)
  adata.obs[f"{key_added}_no_counts"] = counts.empty
  adata.uns[key_added] = {
      "task": "clonal", "model_path": str(model.path), "model_hash": model.hash,
      "fate_names": fates, "fate_day": info["fate_day"],
      "time_labels": list(model.time_labels),
      "clones": {col: table[col].tolist() for col in table.columns},
      "params": {"time_key": time_key, "counts_layer": counts_layer or "",
                 "clone_key": cfg["clone_key"], "clone_obsm": cfg["clone_obsm"],
                 "draws": int(draws or info["eval_draws"]), "seed": int(seed)},
      "n_genes_used": len(counts.used), "genes_missing": counts.missing,
      "keys": {"fate": f"{key_added}_clone_fate", "label": f"{key_added}_clone_label"}}
  logging.info("predicted the fate of %d clones from %d early cells", clone_names.size,
               early.size)
  return adata


class _Cfg(dict):
  """A plain dict with ``.get`` for ``clonal.clone_column`` (which reads a config)."""


def predictions_table(adata: Any, key_added: str = "cardiac_jax") -> Any:
  """The per-clone table ``predict`` wrote (``clone_predictions.csv``)."""
  import pandas as pd  # pylint: disable=g-import-not-at-top
  return pd.DataFrame(adata.uns[key_added]["clones"])


def plot_predictions(adata: Any, plots_dir: str, *, key_added: str = "cardiac_jax",
                     time_key: str = "diffday", true_key: str = "") -> dict[str, str]:
  """P(first fate) per clone against its last observed day, and the embedding of the
  cells coloured by their clone's predicted fate."""
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  from cardiac_jax import viz  # pylint: disable=g-import-not-at-top
  del time_key, true_key
  os.makedirs(plots_dir, exist_ok=True)
  info = adata.uns[key_added]
  table = predictions_table(adata, key_added)
  first = info["fate_names"][0]
  order = list(info["time_labels"])
  x = np.asarray([order.index(d.split(",")[-1]) for d in table["days_seen"]], np.float64)
  x += np.random.default_rng(0).uniform(-0.15, 0.15, x.size)
  fig = Figure(figsize=(7, 4), layout="constrained")
  ax = fig.subplots()
  sc = ax.scatter(x, table[f"p_{first}"], c=np.log1p(table["n_early_cells"]), s=12,
                  cmap="viridis")
  fig.colorbar(sc, ax=ax, label="log(1 + early cells)")
  seen = sorted(set(np.rint(x).astype(int)))
  ax.set_xticks(seen, [order[i] for i in seen])
  ax.set(xlabel="last observed day before the fate day", ylabel=f"P({first})",
         title="Predicted clone fate")
  ax.grid(alpha=0.3)
  paths = {"clone_fate_by_day": os.path.join(plots_dir, "clone_fate_by_day.png")}
  fileio.save_figure(fig, paths["clone_fate_by_day"])
  coords, method = viz.embedding_2d_for(adata, f"X_pca_{key_added}")
  label = adata.obs[info["keys"]["label"]]
  codes = label.cat.codes.to_numpy()
  names = [str(c) for c in label.cat.categories] + ["no clone prediction"]
  paths["embedding_clone_fate"] = os.path.join(plots_dir, "embedding_clone_fate.png")
  viz.plot_embedding(coords, np.where(codes < 0, len(names) - 1, codes), names,
                     f"Cells coloured by their clone's predicted fate ({method})",
                     path=paths["embedding_clone_fate"])
  return paths
