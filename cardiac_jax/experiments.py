"""Experiments that say whether the sequence model learns temporal structure.

Three studies, callable from ``experiments/*.py``, tests and notebooks:

* ``run_multiscale``: the scale1/2/3 presets (x seeds) trained with
  ``train.train_and_evaluate``; the best scale is chosen on VALIDATION accuracy,
  never on test, and the spread of test accuracy across scales and seeds says
  how much a single number can be trusted. Seeds change the training seed
  (initialisation, dropout, batch order) only; the splits stay identical.
* ``run_ablations``: the non-sequence baselines of ``baselines.py`` and the
  model trained on time-shuffled sequences, next to the normal model, with a
  verdict computed from the numbers (DOMAIN.md: an earlier transformer was tied
  by a ridge regression because its sequences had no temporal structure).
* ``run_early_fate``: accuracy against the observed fraction of each sequence,
  overall and on the CM-vs-CF branch. The model and the baselines are TRAINED
  AND EVALUATED PER HORIZON: at fraction f only the first ceil(f·L) steps exist,
  in training, validation and test; a full-length model scored on truncated
  inputs would mix the loss of information with a train/test distribution
  shift. The hidden steps are gone, but not everything about them: a walk's
  steps are paced over the days up to its anchor's day
  (``sequences.step_times``), so the days of the visible steps reveal the
  anchor's day, and with it much of the six-class label. The ``day_only``
  baseline measures that pacing signal at every horizon. CM and CF anchors
  both sit on the last days (the same pacing), so CM-vs-CF accuracy is the
  honest fate-prediction number.

The horizon and the time shuffle are applied after the dataset cache, so every
run of a study shares one set of splits. A run whose workdir already holds a
finished run of the same config is reused, not retrained, so interrupted
studies resume and studies can share runs (``reference_workdir``). Result
files are written atomically (``fileio``).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Iterable, Mapping, Sequence

from absl import logging
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  pylint: disable=g-import-not-at-top
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
import tqdm  # noqa: E402

from cardiac_jax import baselines as baselines_lib  # noqa: E402
from cardiac_jax import fingerprint as fingerprint_lib  # noqa: E402
from cardiac_jax import config_lib  # noqa: E402
from cardiac_jax import fileio  # noqa: E402
from cardiac_jax import input_pipeline  # noqa: E402
from cardiac_jax import members as members_lib  # noqa: E402
from cardiac_jax import monitor  # noqa: E402
from cardiac_jax import scaling  # noqa: E402
from cardiac_jax import train as train_lib  # noqa: E402
from cardiac_jax.data import dataset as dataset_lib  # noqa: E402
from cardiac_jax.data import sequences as sequences_lib  # noqa: E402
from cardiac_jax.data import splits as splits_lib  # noqa: E402

SCALES = config_lib.SCALES
# Two-sided ~95% band for a difference of two test accuracies (binomial noise).
NOISE_SIGMAS = 2.0
_RUN_KEYS = ("train_acc", "val_acc", "test_acc", "macro_f1", "acc_gap", "loss_gap",
             "num_params", "epochs_run", "best_epoch", "wall_seconds")


# ---------------------------------------------------------------- configs


def with_data(config: ml_collections.ConfigDict,
              **sequence_fields: Any) -> ml_collections.ConfigDict:
  """A copy with ``config.data.sequences`` fields replaced (horizon, time shuffle)."""
  config = config.copy_and_resolve_references()
  for key, value in sequence_fields.items():
    if key not in config.data.sequences:
      raise KeyError(f"unknown config field data.sequences.{key}; see cardiac_jax/config_lib.py.")
    config.data.sequences[key] = value
  return config


# ---------------------------------------------------------------- runs


def _read_json(path: str) -> Any:
  with open(path) as f:
    return json.load(f)


def finished_report(config: ml_collections.ConfigDict, workdir: str,
                    dataset: Any) -> dict[str, Any] | None:
  """The report of a FINISHED run of exactly this config and data in ``workdir``, else None.

  Finished: early-stopped, or ran all ``num_epochs`` of the resolved config. The
  config fingerprint (every field that changes the run, plus the data key) must
  match, so a report of another config or horizon is never mistaken for this one.
  """
  report_path = os.path.join(workdir, "report.json")
  stored = fingerprint_lib.read_config_file(workdir)
  if stored is None or not os.path.exists(report_path):
    return None
  resolved = scaling.resolve_config(config, len(dataset.y))
  fp = fingerprint_lib.fingerprint(resolved, input_pipeline.data_key(dataset))
  if fingerprint_lib.fingerprint_diff(stored.get("fingerprint", {}), fp):
    return None
  report = _read_json(report_path)
  if report.get("early_stopped") or report.get("epochs_run", 0) >= resolved.train.num_epochs:
    return report
  return None


def train_or_reuse(config: ml_collections.ConfigDict, workdir: str,
                   dataset: Any) -> dict[str, Any]:
  """``train.train_and_evaluate`` unless ``workdir`` holds this run finished.

  A partial run resumes from its checkpoint; a different config in the workdir
  raises ``ConfigError`` (from the train loop) rather than being overwritten.
  """
  workdir = os.path.abspath(workdir)
  report = finished_report(config, workdir, dataset)
  if report is not None:
    logging.info("Reusing the finished run in %s (test acc %.4f).", workdir,
                 report["test_acc"])
    return report
  return train_lib.train_and_evaluate(config, workdir, dataset=dataset)


def member_results(results: Mapping[str, Any]) -> list[dict[str, Any]]:
  """A K-member run's report as K single-seed reports, one per member.

  Member k trains exactly as a run with seed ``seed + k`` would
  (tests/test_members.py), so its numbers stand in for that run's; the run's
  wall and training seconds are split evenly between the members, and
  ``epochs_run`` is the run's (its last member's stop), not each member's.
  """
  m = results["members"]
  k_all = len(m["seeds"])
  out = []
  for k, seed in enumerate(m["seeds"]):
    r = {"seed": int(seed), "member_of": int(m["seeds"][0]),
         "train_acc": m["train_acc"][k], "val_acc": m["val_acc"][k],
         "test_acc": m["test_acc"][k], "macro_f1": m["test_macro_f1"][k],
         "fate_pair_acc": m["test_fate_pair_acc"][k], "acc_gap": m["acc_gap"][k],
         "best_epoch": m["best_epoch"][k], "epochs_run": results["epochs_run"],
         "class_names": results["class_names"], "num_params": results["num_params"],
         "wall_seconds": results["wall_seconds"] / k_all,
         "train_seconds": results.get("train_seconds", 0.0) / k_all}
    if "train_loss" in m:   # reports written before they were kept per member lack these
      r.update(train_loss=m["train_loss"][k], val_loss=m["val_loss"][k],
               confusion=m["test_confusion"][k])
    out.append(r)
  return out


def consecutive(seeds: Sequence[int]) -> bool:
  """True for seeds s, s + 1, ..., the seeds of one run's members (members.seeds)."""
  return len(seeds) > 1 and list(seeds) == list(range(seeds[0], seeds[0] + len(seeds)))


def run_summary(results: Mapping[str, Any], dataset: Any) -> dict[str, Any]:
  """The numbers a study table needs from one run's results."""
  out = {k: results[k] for k in _RUN_KEYS if k in results}
  if "loss_gap" not in out:   # a report.json written before report.summarise had it
    out["loss_gap"] = monitor.gaps(results["train_acc"], results["val_acc"],
                                   results["train_loss"], results["val_loss"])["loss_gap"]
  out["sequences"] = int(len(dataset.y))
  out["train_sequences"] = int(np.sum(np.asarray(dataset.split) == splits_lib.SPLIT_IDS["train"]))
  out["test_sequences"] = int(results.get(
      "num_test", np.sum(np.asarray(dataset.split) == splits_lib.SPLIT_IDS["test"])))
  out.update(baselines_lib.fate_metrics(results["confusion"], results["class_names"]))
  return out


def _progress(items: Sequence[Any], desc: str):
  return tqdm.tqdm(items, desc=desc, unit="run", disable=None, dynamic_ncols=True)


# ---------------------------------------------------------------- files


def _write_json(path: str, obj: Any) -> str:
  return str(fileio.atomic_write_json(path, obj, default=_json_default))


def _json_default(o: Any) -> Any:
  if isinstance(o, (np.integer,)):
    return int(o)
  if isinstance(o, (np.floating,)):
    return float(o)
  if isinstance(o, np.ndarray):
    return o.tolist()
  raise TypeError(f"not JSON-able: {type(o)}")


def _fmt(v: Any, digits: int = 4) -> str:
  if v is None:
    return "–"
  if isinstance(v, float):
    return f"{v:.{digits}f}"
  return str(v)


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
  return lines


def _se_diff(p1: float, p2: float, n: int) -> float:
  """Binomial standard error of the difference of two accuracies on n examples."""
  n = max(int(n), 1)
  return math.sqrt((p1 * (1 - p1) + p2 * (1 - p2)) / n)


# ---------------------------------------------------------------- multiscale


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
  arr = np.asarray(values, np.float64)
  return float(arr.mean()), float(arr.std())


def best_scale(per_scale: Mapping[str, Mapping[str, Any]]) -> str:
  """The scale with the best mean VALIDATION accuracy; ties go to the smaller scale.

  Candidates are ranked in ``config_lib.SCALES`` order (unknown names last, in
  their given order) before the max, so the tie rule does not depend on the
  order in which the caller listed the scales.
  """
  rank = {name: i for i, name in enumerate(SCALES)}
  ordered = sorted(per_scale, key=lambda s: rank.get(s, len(rank)))
  return max(ordered, key=lambda s: per_scale[s]["val_acc"])


def run_multiscale(configs: Mapping[str, ml_collections.ConfigDict],
                   seeds: Sequence[int] = (0,), *, workdir_root: str,
                   members: bool = True) -> dict[str, Any]:
  """Trains each scale's config for each seed (members of one run, or a run each) and compares.

  Args:
    configs: {scale name: its config}, in table order, e.g.
      ``{s: config_lib.preset(s) for s in config_lib.SCALES}`` (the
      ``configs/multiscale.py`` of the script; ``preset(s, "quick")`` for
      tests and smoke checks).
    seeds: training seeds (config.seed); the data and splits do not change.
    workdir_root: where the runs and multiscale.{md,json,png} go.
    members: consecutive seeds train as the members of one run per scale
      (``train.num_members``, in ``<root>/<scale>_seeds<a>-<b>``), each
      reported as its own seed; False, or a root that already holds
      ``<scale>_seed<k>`` runs, = one run per seed.

  Returns:
    {"runs": [per run], "scales": {scale: means / stds over seeds},
    "best_scale_by_val", "test_acc_spread": {"max_minus_min", "std", ...},
    "targets", "files"}.
  """
  scales = tuple(configs)
  if not scales or not seeds:
    raise ValueError("run_multiscale needs at least one scale and one seed.")
  root = os.path.abspath(workdir_root)
  os.makedirs(root, exist_ok=True)
  runs = []
  datasets: dict[str, Any] = {}
  base = None
  # Consecutive seeds train as the members of one run per scale (one compiled
  # epoch for all of them); other seed lists, or a config that already sets
  # train.num_members, train one run per seed.
  seeds = [int(k) for k in seeds]
  together = (members and consecutive(seeds)
              and all(members_lib.num_members(configs[s]) == 1 for s in scales)
              and not any(os.path.isdir(os.path.join(root, f"{s}_seed{k}"))
                          for s in scales for k in seeds))   # a study begun run by run
  jobs = [(s, seeds) for s in scales] if together else [(s, [k]) for s in scales for k in seeds]
  for scale, group in _progress(jobs, "multiscale"):
    config = configs[scale].copy_and_resolve_references()
    config.seed = group[0]
    if together:
      config.train.num_members = len(group)
    if base is None:
      base = config
    if scale not in datasets:
      datasets = {scale: dataset_lib.build_dataset(config.data)}   # one scale in memory
    ds = datasets[scale]
    name = f"seed{group[0]}" if len(group) == 1 else f"seeds{group[0]}-{group[-1]}"
    workdir = os.path.join(root, f"{scale}_{name}")
    logging.info("multiscale: %s seeds %s (%d sequences) in %s", scale, group, len(ds.y),
                 workdir)
    results = train_or_reuse(config, workdir, ds)
    per_seed = member_results(results) if together else [dict(results, seed=group[0])]
    for r in per_seed:
      runs.append({"scale": scale, "seed": r["seed"], "workdir": workdir,
                   **run_summary(r, ds)})

  per_scale = {}
  for scale in scales:
    rs = [r for r in runs if r["scale"] == scale]
    entry = {"seeds": [r["seed"] for r in rs], "sequences": rs[0]["sequences"],
             "num_params": rs[0]["num_params"]}
    for key in ("train_acc", "val_acc", "test_acc", "macro_f1", "acc_gap", "loss_gap",
                "epochs_run", "best_epoch", "wall_seconds"):
      entry[key], entry[f"{key}_std"] = _mean_std([r[key] for r in rs])
    per_scale[scale] = entry
  best = best_scale(per_scale)
  test = [r["test_acc"] for r in runs]
  mon = base.monitor
  result = {
      "quick": config_lib.is_quick(base),
      "scales_order": list(scales),
      "seeds": [int(k) for k in seeds],
      "runs": runs,
      "scales": per_scale,
      "best_scale_by_val": best,
      "best_scale_test_acc": per_scale[best]["test_acc"],
      "test_acc_spread": {"max_minus_min": float(max(test) - min(test)),
                          "std": float(np.std(test)), "min": float(min(test)),
                          "max": float(max(test)), "n_runs": len(test)},
      "targets": {"test_acc": float(mon.target_test_acc), "acc_gap": float(mon.target_gap)},
  }
  result["files"] = {
      "json": os.path.join(root, "multiscale.json"),
      "md": os.path.join(root, "multiscale.md"),
      "png": os.path.join(root, "multiscale.png"),
  }
  _plot_multiscale(result, result["files"]["png"])
  fileio.atomic_write_text(result["files"]["md"], _multiscale_md(result))
  _write_json(result["files"]["json"], result)
  logging.info("multiscale: best scale on validation %s (test %.4f); test spread %.4f",
               best, per_scale[best]["test_acc"], result["test_acc_spread"]["max_minus_min"])
  return result


def _multiscale_md(r: dict[str, Any]) -> str:
  lines = [f"# Multi-scale comparison{' (quick mode)' if r['quick'] else ''}", "",
           f"Seeds: {r['seeds']} (training seed only; identical splits).", ""]
  lines += _table(
      ("scale", "seed", "sequences", "params", "epochs run", "best epoch", "train acc",
       "val acc", "test acc", "macro-F1", "acc gap", "loss gap", "wall s"),
      [(x["scale"], x["seed"], x["sequences"], x["num_params"], x["epochs_run"],
        x["best_epoch"], x["train_acc"], x["val_acc"], x["test_acc"], x["macro_f1"],
        x["acc_gap"], x["loss_gap"], f"{x['wall_seconds']:.1f}") for x in r["runs"]])
  if len(r["seeds"]) > 1:
    lines += ["", "Mean ± std over seeds:", ""]
    lines += _table(
        ("scale", "train acc", "val acc", "test acc", "acc gap"),
        [(s, *(f"{e[k]:.4f} ± {e[k + '_std']:.4f}"
               for k in ("train_acc", "val_acc", "test_acc", "acc_gap")))
         for s, e in r["scales"].items()])
  sp, t = r["test_acc_spread"], r["targets"]
  best = r["best_scale_by_val"]
  lines += [
      "",
      f"**Best scale on validation: {best}** (val {r['scales'][best]['val_acc']:.4f}, "
      f"test {r['scales'][best]['test_acc']:.4f}; target test accuracy > {t['test_acc']}, "
      f"gap < {t['acc_gap']}).",
      f"Test accuracy spread over {sp['n_runs']} runs: max − min {sp['max_minus_min']:.4f}, "
      f"std {sp['std']:.4f} (range {sp['min']:.4f}–{sp['max']:.4f}).",
      "",
      "![multiscale](multiscale.png)",
      ""]
  return "\n".join(lines)


def _plot_multiscale(r: dict[str, Any], path: str) -> str:
  scales = r["scales_order"]
  pos = np.arange(len(scales))
  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
  for i, (key, label) in enumerate((("train_acc", "train"), ("val_acc", "val"),
                                    ("test_acc", "test"))):
    ax1.errorbar(pos + (i - 1) * 0.08, [r["scales"][s][key] for s in scales],
                 yerr=[r["scales"][s][key + "_std"] for s in scales], marker="o",
                 capsize=3, label=label)
  ax1.axhline(r["targets"]["test_acc"], color="k", ls="--", lw=1,
              label=f"target {r['targets']['test_acc']}")
  ax1.set(xticks=pos, xticklabels=scales, ylabel="accuracy", ylim=(0, 1.02),
          title="accuracy per scale (best-epoch weights)")
  ax1.legend(loc="lower right", fontsize=8)
  ax2.bar(pos, [r["scales"][s]["acc_gap"] for s in scales],
          yerr=[r["scales"][s]["acc_gap_std"] for s in scales], color="tab:orange", capsize=3)
  ax2.axhline(r["targets"]["acc_gap"], color="k", ls="--", lw=1,
              label=f"target {r['targets']['acc_gap']}")
  ax2.axhline(0.0, color="grey", lw=0.5)
  ax2.set(xticks=pos, xticklabels=scales, ylabel="train − val accuracy", title="accuracy gap")
  ax2.legend(fontsize=8)
  return str(fileio.save_figure(fig, path, dpi=120))


# ---------------------------------------------------------------- ablations


POOLED = ("logreg_mean", "hgb_summary", "knn_mean")
_MODEL_KEYS = ("train_acc", "val_acc", "test_acc", "macro_f1", "acc_gap", "loss_gap",
               "cm_cf_acc", "per_class_acc", "epochs_run", "best_epoch", "num_params",
               "test_sequences", "workdir")


def drop_day_feature(dataset: Any) -> Any:
  """The dataset with the per-step day feature zeroed (column ``n_pcs``).

  ``time_shuffle`` moves each step's day value along with its cell, so a model
  can re-sort a shuffled sequence by day; zeroing the day as well removes that
  direct route. It does not remove every trace of the order: the PCA
  coordinates still encode the day (expression changes along the
  differentiation), so a model could partly re-sort by them. The data key
  changes so no run of the full data is mistaken for a run of this one.
  """
  day = baselines_lib.day_column(dataset)
  x = np.array(dataset.x, copy=True)
  x[..., day] = 0.0
  meta = dict(dataset.meta, day_feature_removed=True)
  if meta.get("cache_key"):
    meta["cache_key"] = f"{meta['cache_key']}:no-day"
  return dataclasses.replace(dataset, x=x, meta=meta)


def _compare(diff: float, noise: float, better: str, worse: str, tie: str) -> str:
  if diff > noise:
    return better
  return worse if diff < -noise else tie


def ablation_verdict(model: Mapping[str, Any], shuffled: Mapping[str, Any],
                     baselines: Mapping[str, Mapping[str, Any]], n_test: int,
                     order_blind: Mapping[str, Any] | None = None) -> dict[str, Any]:
  """Does the model beat the per-cell and pooled baselines, and does removing order hurt it?

  "Clearly" means by more than ``NOISE_SIGMAS`` binomial standard errors of the
  difference of two test accuracies on ``n_test`` sequences. The pooled
  baseline compared against is the one best on VALIDATION.
  """
  m = float(model["test_acc"])
  last = float(baselines["logreg_last"]["test_acc"])
  pooled_name = baselines_lib.best_on_val({k: baselines[k] for k in POOLED if k in baselines})
  pooled = float(baselines[pooled_name]["test_acc"])
  shuf = float(shuffled["test_acc"])
  others = {"last": last, "pooled": pooled, "shuffle": shuf}
  if order_blind is not None:
    others["order_blind"] = float(order_blind["test_acc"])
  noise = {k: NOISE_SIGMAS * _se_diff(m, v, n_test) for k, v in others.items()}
  hurts = {k: m - v > noise[k] for k, v in others.items()}
  beat = lambda k: _compare(m - others[k], noise[k], "beats", "is clearly worse than",  # noqa: E731
                            "does not clearly beat")
  harm = lambda k: _compare(m - others[k], noise[k], "hurts", "improves",  # noqa: E731
                            "does not clearly hurt")
  text = (f"Sequence model test {m:.3f} {beat('last')} the per-cell last-step baseline "
          f"{last:.3f} ({m - last:+.3f}) and {beat('pooled')} the best pooled baseline "
          f"({pooled_name}) {pooled:.3f} ({m - pooled:+.3f}); shuffling time "
          f"{harm('shuffle')} it ({m:.3f} -> {shuf:.3f}, {shuf - m:+.3f})")
  if order_blind is not None:
    ob = others["order_blind"]
    text += (f"; shuffling AND removing the day feature {harm('order_blind')} it "
             f"({m:.3f} -> {ob:.3f}, {ob - m:+.3f})")
  text += (f". Noise band ±{NOISE_SIGMAS:g} s.e. on {n_test} test sequences: "
           f"{max(noise.values()):.3f}.")
  out = {"model_test_acc": m, "last_step_test_acc": last, "best_pooled": pooled_name,
         "best_pooled_test_acc": pooled, "shuffled_test_acc": shuf,
         "margin_vs_last_step": m - last, "margin_vs_pooled": m - pooled,
         "shuffle_drop": m - shuf, "noise_band": noise, "beats_last_step": hurts["last"],
         "beats_pooled": hurts["pooled"], "shuffle_hurts": hurts["shuffle"], "text": text}
  if order_blind is not None:
    out.update(order_blind_test_acc=others["order_blind"],
               order_blind_drop=m - others["order_blind"],
               order_blind_hurts=hurts["order_blind"])
  # Temporal information is used when the model beats every order-blind baseline and
  # loses accuracy once order is removed (the strongest removal that was run).
  removal = "order_blind" if order_blind is not None else "shuffle"
  out["uses_temporal_information"] = bool(hurts["pooled"] and hurts["last"] and hurts[removal])
  return out


def run_ablations(config: ml_collections.ConfigDict, workdir_root: str, *,
                  reference_workdir: str | None = None,
                  order_blind: bool = True) -> dict[str, Any]:
  """Baselines, the model and the model on time-shuffled sequences, on identical splits.

  Args:
    config: the run's config (e.g. ``config_lib.preset("scale1")``; the
      ``"quick"`` variant for tests and smoke checks).
    workdir_root: where runs and ablations.{md,json} go.
    reference_workdir: a workdir holding (or to hold) the normal model's run of
      this config; reused when finished. Default ``<root>/model``.
    order_blind: also train on time-shuffled sequences with the day feature
      zeroed (``drop_day_feature``): the shuffle alone leaves each step's day,
      from which the order can be rebuilt.

  Returns:
    {"rows": table rows, "baselines", "model", "model_time_shuffled",
    "model_order_blind" (if run), "verdict", "files"}.
  """
  root = os.path.abspath(workdir_root)
  os.makedirs(root, exist_ok=True)
  config = with_data(config, time_shuffle=False)
  ds = dataset_lib.build_dataset(config.data)
  logging.info("ablations: baselines on %d sequences", len(ds.y))
  base = baselines_lib.run_baselines(ds, seed=int(config.seed))

  shuffled_cfg = with_data(config, time_shuffle=True)
  model_dir = os.path.abspath(reference_workdir or os.path.join(root, "model"))
  shuffled_ds = dataset_lib.post_process(ds, shuffled_cfg.data)   # the cache is pre-shuffle
  jobs = [("model", config, model_dir, ds),
          ("model_time_shuffled", shuffled_cfg, os.path.join(root, "model_time_shuffled"),
           shuffled_ds)]
  if order_blind:
    jobs.append(("model_order_blind", shuffled_cfg, os.path.join(root, "model_order_blind"),
                 drop_day_feature(shuffled_ds)))
  models = {}
  for name, cfg, wd, data in _progress(jobs, "ablations"):
    summary = run_summary(train_or_reuse(cfg, wd, data), data)
    models[name] = {k: summary[k] for k in _MODEL_KEYS if k in summary}
    models[name]["workdir"] = wd

  labels = {"model": "sequence model", "model_time_shuffled": "sequence model, time-shuffled",
            "model_order_blind": "sequence model, time-shuffled, no day feature"}
  rows = []
  for name in models:
    m = models[name]
    label = labels[name]
    rows.append({"model": label, "key": name, "train_acc": m["train_acc"],
                 "val_acc": m["val_acc"], "test_acc": m["test_acc"],
                 "macro_f1": m["macro_f1"], "cm_cf_acc": m["cm_cf_acc"]})
  for name, b in base.items():
    rows.append({"model": name, "key": name, "train_acc": b["train_acc"],
                 "val_acc": b["val_acc"], "test_acc": b["test_acc"],
                 "macro_f1": b["macro_f1"], "cm_cf_acc": b["cm_cf_acc"],
                 "description": b["description"], "selected": b["selected"]})
  n_test = int(np.sum(np.asarray(ds.split) == splits_lib.SPLIT_IDS["test"]))
  verdict = ablation_verdict(models["model"], models["model_time_shuffled"], base, n_test,
                             models.get("model_order_blind"))
  result = {"quick": config_lib.is_quick(config), "config_name": config.name,
            "sequences": int(len(ds.y)),
            "test_sequences": n_test, "rows": rows, "baselines": base, **models,
            "verdict": verdict}
  result["files"] = {"json": os.path.join(root, "ablations.json"),
                     "md": os.path.join(root, "ablations.md")}
  fileio.atomic_write_text(result["files"]["md"], _ablations_md(result))
  _write_json(result["files"]["json"], result)
  logging.info("ablations: %s", verdict["text"])
  return result


def _ablations_md(r: dict[str, Any]) -> str:
  lines = [f"# Ablations: {r['config_name']}{' (quick mode)' if r['quick'] else ''}", "",
           f"{r['sequences']} sequences, {r['test_sequences']} in test; identical splits "
           "for every row. Baselines: fitted on train, hyperparameter chosen on val.", ""]
  lines += _table(("model", "train acc", "val acc", "test acc", "macro-F1 (test)",
                   "CM-vs-CF acc (test)", "chosen on val"),
                  [(x["model"], x["train_acc"], x["val_acc"], x["test_acc"], x["macro_f1"],
                    x["cm_cf_acc"],
                    ", ".join(f"{k}={v}" for k, v in x.get("selected", {}).items()) or "–")
                   for x in r["rows"]])
  lines += ["", f"**Verdict:** {r['verdict']['text']}", ""]
  if "model_order_blind" in r:
    lines += ["Time shuffling permutes whole steps, so each cell keeps its day value and a "
              "model could re-sort by it; the no-day row removes that route too (the PCA "
              "coordinates still carry some day information).", ""]
  if "day_only" in r["baselines"]:
    lines += ["`day_only` is a diagnostic, not a competitor: it sees only the days of the "
              "visible steps, whose pacing depends on the anchor's day.", ""]
  lines += [f"- `{n}`: {b['description']}" for n, b in r["baselines"].items()]
  lines.append("")
  return "\n".join(lines)


# ---------------------------------------------------------------- early fate


def run_early_fate(config: ml_collections.ConfigDict, workdir_root: str,
                   fractions: Sequence[float] = (0.25, 0.5, 0.75, 1.0), *,
                   reference_workdir: str | None = None) -> dict[str, Any]:
  """Accuracy against the observed fraction, for the model and the best baseline.

  The model and every baseline are trained and evaluated per horizon (see the
  module docstring). The baseline reported is the one best on validation at
  f = 1.0 (fitted there even if 1.0 is not among ``fractions``), and is then
  followed across all fractions.

  Args:
    config: the run's config.
    workdir_root: runs go to ``<root>/model_f<f>``; early_fate.{md,json,png}.
    fractions: observed fractions in (0, 1].
    reference_workdir: workdir of the normal (f = 1.0) run, reused when finished.

  Returns:
    {"fractions", "rows" (per fraction: model and best baseline accuracy and
    CM-vs-CF accuracy), "best_baseline", "baselines" (all, per fraction),
    "summary", "files"}.
  """
  fractions = sorted({float(f) for f in fractions})
  if not fractions or fractions[0] <= 0.0 or fractions[-1] > 1.0:
    raise ValueError(f"fractions must lie in (0, 1], got {fractions}.")
  root = os.path.abspath(workdir_root)
  os.makedirs(root, exist_ok=True)
  config = with_data(config, time_shuffle=False)
  seed = int(config.seed)

  full = dataset_lib.build_dataset(with_data(config, observed_fraction=1.0).data)

  def data_at(f):   # the cache holds full paths; the horizon is applied after it
    cfg = with_data(config, observed_fraction=f)
    return cfg, dataset_lib.post_process(full, cfg.data)

  base_by_f = {}
  if 1.0 not in fractions:
    base_by_f[1.0] = baselines_lib.run_baselines(data_at(1.0)[1], seed=seed)
  rows = []
  for f in _progress(fractions, "early fate"):
    cfg, ds = data_at(f)
    base_by_f[f] = baselines_lib.run_baselines(ds, seed=seed)
    wd = (os.path.abspath(reference_workdir) if f == 1.0 and reference_workdir
          else os.path.join(root, f"model_f{f:.2f}"))
    logging.info("early fate: f=%.2f (%d of %d steps visible) in %s", f,
                 sequences_lib.visible_steps(ds.length, f), ds.length, wd)
    summary = run_summary(train_or_reuse(cfg, wd, ds), ds)
    rows.append({"fraction": f, "visible_steps": sequences_lib.visible_steps(ds.length, f),
                 "length": ds.length, "workdir": wd, "model_test_acc": summary["test_acc"],
                 "model_val_acc": summary["val_acc"], "model_cm_cf_acc": summary["cm_cf_acc"],
                 "model_macro_f1": summary["macro_f1"],
                 "model_per_class_acc": summary["per_class_acc"]})
  best = baselines_lib.best_on_val(base_by_f[1.0])
  for row in rows:
    b = base_by_f[row["fraction"]][best]
    row.update(baseline_test_acc=b["test_acc"], baseline_val_acc=b["val_acc"],
               baseline_cm_cf_acc=b["cm_cf_acc"], baseline_macro_f1=b["macro_f1"],
               baseline_per_class_acc=b["per_class_acc"])
    d = base_by_f[row["fraction"]]["day_only"]
    row.update(day_only_test_acc=d["test_acc"], day_only_val_acc=d["val_acc"],
               day_only_cm_cf_acc=d["cm_cf_acc"])
  n_classes = len(config.data.classes)
  result = {"quick": config_lib.is_quick(config), "config_name": config.name,
            "fractions": fractions,
            "protocol": "trained and evaluated per horizon", "best_baseline": best,
            "chance": 1.0 / n_classes, "rows": rows,
            "baselines": {f"{f:.2f}": v for f, v in sorted(base_by_f.items())}}
  result["summary"] = _early_fate_summary(result)
  result["files"] = {"json": os.path.join(root, "early_fate.json"),
                     "md": os.path.join(root, "early_fate.md"),
                     "png": os.path.join(root, "early_fate.png")}
  _plot_early_fate(result, result["files"]["png"])
  fileio.atomic_write_text(result["files"]["md"], _early_fate_md(result))
  _write_json(result["files"]["json"], result)
  logging.info("early fate: %s", result["summary"])
  return result


def _early_fate_summary(r: dict[str, Any]) -> str:
  first, last = r["rows"][0], r["rows"][-1]
  ahead = [x["fraction"] for x in r["rows"] if x["model_test_acc"] > x["baseline_test_acc"]]
  return (f"Model test accuracy {first['model_test_acc']:.3f} at f={first['fraction']:.2f} -> "
          f"{last['model_test_acc']:.3f} at f={last['fraction']:.2f} (CM-vs-CF "
          f"{_fmt(first['model_cm_cf_acc'], 3)} -> {_fmt(last['model_cm_cf_acc'], 3)}); best "
          f"baseline {r['best_baseline']} {first['baseline_test_acc']:.3f} -> "
          f"{last['baseline_test_acc']:.3f}; day-only (pacing) baseline "
          f"{first['day_only_test_acc']:.3f} -> {last['day_only_test_acc']:.3f}. Model ahead "
          f"at fractions {[round(f, 2) for f in ahead] or 'none'}.")


def _early_fate_md(r: dict[str, Any]) -> str:
  lines = [f"# Early fate prediction: {r['config_name']}{' (quick mode)' if r['quick'] else ''}",
           "", "Protocol: the model and the baselines are **trained and evaluated per "
           "horizon** — at observed fraction f only the first ceil(f·L) steps exist for "
           "training, validation and test (the fate-from-a-partial-path setting). Splits are "
           "identical at every f.", "",
           f"Best baseline (validation accuracy at f = 1.0): `{r['best_baseline']}`. "
           f"Chance: {r['chance']:.3f}.", "",
           "**Read the six-class numbers with care.** The visible steps are paced over the "
           "days up to the anchor's day, so their days alone reveal the anchor's day and "
           "much of the label: the six-class horizon accuracy includes this pacing signal, "
           "measured by the `day_only` baseline (logistic regression on the visible steps' "
           "days, nothing else). CM and CF anchors both sit on the terminal days with the "
           "same pacing, so **CM-vs-CF accuracy is the honest fate-prediction number**.", ""]
  lines += _table(("fraction", "visible steps", "model test acc", "model CM-vs-CF acc",
                   f"{r['best_baseline']} test acc", f"{r['best_baseline']} CM-vs-CF acc",
                   "day-only test acc", "day-only CM-vs-CF acc"),
                  [(f"{x['fraction']:.2f}", f"{x['visible_steps']}/{x['length']}",
                    x["model_test_acc"], x["model_cm_cf_acc"], x["baseline_test_acc"],
                    x["baseline_cm_cf_acc"], x["day_only_test_acc"], x["day_only_cm_cf_acc"])
                   for x in r["rows"]])
  lines += ["", r["summary"], "", "![early fate](early_fate.png)", ""]
  return "\n".join(lines)


def _plot_early_fate(r: dict[str, Any], path: str) -> str:
  f = [x["fraction"] for x in r["rows"]]
  nan = lambda v: np.nan if v is None else v  # noqa: E731
  fig, ax = plt.subplots(figsize=(6, 4))
  ax.plot(f, [x["model_test_acc"] for x in r["rows"]], "o-", color="tab:blue",
          label="sequence model: all classes")
  ax.plot(f, [nan(x["model_cm_cf_acc"]) for x in r["rows"]], "o--", color="tab:blue",
          label="sequence model: CM vs CF")
  ax.plot(f, [x["baseline_test_acc"] for x in r["rows"]], "s-", color="tab:orange",
          label=f"{r['best_baseline']}: all classes")
  ax.plot(f, [nan(x["baseline_cm_cf_acc"]) for x in r["rows"]], "s--", color="tab:orange",
          label=f"{r['best_baseline']}: CM vs CF")
  ax.plot(f, [x["day_only_test_acc"] for x in r["rows"]], "^:", color="tab:grey",
          label="day only (pacing): all classes")
  ax.axhline(r["chance"], color="grey", ls=":", lw=1, label="chance")
  ax.set(xlabel="observed fraction of the sequence", ylabel="test accuracy", ylim=(0, 1.02),
         title="early fate prediction (trained per horizon)")
  ax.legend(fontsize=8, loc="lower right")
  return str(fileio.save_figure(fig, path, dpi=120))
