"""Baselines and the time-shuffle ablation next to the sequence model, with a verdict.

  python experiments/ablations.py --config=configs/scale1.py --workdir=runs/ablations
      [--reference_workdir=runs/scale1]  # reuse a finished run of the same config

The non-sequence baselines of ``baselines.py`` and the model trained on
time-shuffled sequences (and, by default, shuffled with the day feature zeroed),
next to the normal model, on identical splits, with a verdict computed from the
numbers (DOMAIN.md: an earlier transformer was tied by a ridge regression
because its sequences had no temporal structure).

Writes <workdir>/model/, <workdir>/model_time_shuffled/, <workdir>/model_order_blind/
and ablations.{md,json}.
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Any, Mapping, Sequence

from absl import app
from absl import flags
from absl import logging
import ml_collections
from ml_collections import config_flags
import numpy as np

from cardiac_jax import baselines as baselines_lib
from cardiac_jax import config_lib
from cardiac_jax import fileio
from cardiac_jax.data import dataset as dataset_lib
from cardiac_jax.data import splits as splits_lib
from cardiac_jax.studies import common
from cardiac_jax.studies import runs

FLAGS = flags.FLAGS
# Two-sided ~95% band for a difference of two test accuracies (binomial noise).
NOISE_SIGMAS = 2.0
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
  noise = {k: NOISE_SIGMAS * common.se_diff(m, v, n_test) for k, v in others.items()}
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
  config = runs.with_data(config, time_shuffle=False)
  ds = dataset_lib.build_dataset(config.data)
  logging.info("ablations: baselines on %d sequences", len(ds.y))
  base = baselines_lib.run_baselines(ds, seed=int(config.seed))

  shuffled_cfg = runs.with_data(config, time_shuffle=True)
  model_dir = os.path.abspath(reference_workdir or os.path.join(root, "model"))
  shuffled_ds = dataset_lib.post_process(ds, shuffled_cfg.data)   # the cache is pre-shuffle
  jobs = [("model", config, model_dir, ds),
          ("model_time_shuffled", shuffled_cfg, os.path.join(root, "model_time_shuffled"),
           shuffled_ds)]
  if order_blind:
    jobs.append(("model_order_blind", shuffled_cfg, os.path.join(root, "model_order_blind"),
                 drop_day_feature(shuffled_ds)))
  models = {}
  for name, cfg, wd, data in runs.each_run(jobs, "ablations"):
    summary = runs.run_summary(runs.train_or_reuse(cfg, wd, data), data)
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
  fileio.atomic_write_text(result["files"]["md"], markdown(result))
  common.write_json(result["files"]["json"], result)
  logging.info("ablations: %s", verdict["text"])
  return result


def markdown(r: dict[str, Any]) -> str:
  """ablations.md: the model, its ablations and every baseline, and the verdict."""
  lines = [f"# Ablations: {r['config_name']}{' (quick mode)' if r['quick'] else ''}", "",
           f"{r['sequences']} sequences, {r['test_sequences']} in test; identical splits "
           "for every row. Baselines: fitted on train, hyperparameter chosen on val.", ""]
  lines += common.table(("model", "train acc", "val acc", "test acc", "macro-F1 (test)",
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



def define_flags() -> None:
  """The script's flags (defined here, not at import: cardiac_jax.main defines --config too)."""
  config_flags.DEFINE_config_file("config", "configs/scale1.py",
                                  "Config file; :quick for the tiny variant, "
                                  "--config.<field>=<value> to override.")
  flags.DEFINE_string("workdir", "runs/ablations", "Root directory of the study.")
  flags.DEFINE_string("reference_workdir", None,
                      "Workdir of the normal model's run (default <workdir>/model).")


def main(argv: Sequence[str]) -> None:
  del argv
  result = run_ablations(FLAGS.config, FLAGS.workdir, reference_workdir=FLAGS.reference_workdir)
  print(pathlib.Path(result["files"]["md"]).read_text())


if __name__ == "__main__":
  define_flags()
  app.run(main)
