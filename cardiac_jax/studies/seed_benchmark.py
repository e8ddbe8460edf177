"""The model against every baseline, over training seeds, on one data set's splits.

  python experiments/seed_benchmark.py --config=configs/scale1.py --seeds=0,1,2 \
      --workdir=runs/bench/scale1
  python experiments/seed_benchmark.py --config=configs/scale1.py --seeds=0,1,2 \
      --horizons=0.5,0.75 --workdir=runs/bench/scale1_fate
  # a data set of your own (or the external test bed, experiments/external_testbed.py):
  python experiments/seed_benchmark.py --config=configs/scale1.py --seeds=0,1,2 \
      --workdir=runs/bench/ext_a --config.data.source=h5ad --config.data.path=ext_a.h5ad \
      --config.data.population_key=population --config.data.time_key=time \
      --config.data.donor_key= --config.data.spatial.enabled=false \
      --config.data.fate_classes="('fateA','fateB')" ...
  # one table from several benchmarks:
  python experiments/seed_benchmark.py --combine=runs/bench/scale1,runs/bench/ext_a \
      --out=docs/results/benchmark

Per horizon (``data.sequences.observed_fraction``) the data set is built once
(cached), the baselines are fitted once on its splits (they do not depend on the
training seed), and the model is trained once per seed into
``<workdir>/f<horizon>/seed<k>`` (a finished run is re-reported, an interrupted
one resumes). The verdict compares the model's mean test accuracy with the
baseline that is best on VALIDATION, with the two-standard-error band of a
difference of two accuracies on this test split; the fate branch is scored as a
two-class accuracy among its test paths (``report.pair_accuracy``, chance 0.5).
"""
from __future__ import annotations

import json
import os
from typing import Any, Sequence

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags
import numpy as np

from cardiac_jax import baselines as baselines_lib
from cardiac_jax import fileio
from cardiac_jax import report as report_lib
from cardiac_jax import train as train_lib
from cardiac_jax.data import dataset as dataset_lib
from cardiac_jax.studies import common
from cardiac_jax.studies import runs as runs_lib

FLAGS = flags.FLAGS
SUMMARY = "summary.json"
_MODEL_KEYS = ("test_acc", "val_acc", "train_acc", "macro_f1", "fate_pair_acc", "acc_gap",
               "best_epoch", "epochs_run", "wall_seconds", "train_seconds")


def _schedule_values(workdir: str, best_epoch: int) -> dict[str, float]:
  records = report_lib.load_records(os.path.join(workdir, "metrics.jsonl"))
  rec = next((r for r in records if r["epoch"] == best_epoch), {})
  return {k: rec.get(k) for k in ("label_smoothing", "weight_decay")}


def benchmark_horizon(config, horizon: float, seeds: Sequence[int], root: str) -> dict[str, Any]:
  """Baselines once and the model once per seed, all on one horizon's arrays."""
  config = config.copy_and_resolve_references()
  config.data.sequences.observed_fraction = float(horizon)
  ds = dataset_lib.build_dataset(config.data)
  pair = report_lib.fate_pair(config)
  base = baselines_lib.run_baselines(ds, fate_classes=pair)
  runs, ensembles = [], []
  for seed in seeds:
    cfg = config.copy_and_resolve_references()
    cfg.seed = int(seed)
    workdir = os.path.join(root, f"f{horizon:g}", f"seed{seed}")
    r = train_lib.train_and_evaluate(cfg, workdir, dataset=ds)
    run = {k: r.get(k) for k in _MODEL_KEYS}
    run.update(seed=int(seed), workdir=workdir,
               criteria={k: v["passed"] for k, v in r["criteria"].items()},
               at_best_epoch=_schedule_values(workdir, r["best_epoch"]))
    if r.get("members"):
      run["members"] = r["members"]["seeds"]
      ensembles.append(run)
      runs += _member_runs(r, cfg, workdir)
    else:
      runs.append(run)
  best = baselines_lib.best_on_val(base)
  n_test = int(np.sum(np.asarray(ds.split) == 2))
  n_pair = int(np.sum(np.isin(np.asarray(ds.y)[np.asarray(ds.split) == 2],
                              [list(ds.class_names).index(c) for c in pair
                               if c in ds.class_names])))
  out = {"horizon": float(horizon), "seeds": [int(s) for s in seeds], "n_test": n_test,
         "fate_classes": list(pair), "n_test_fate": n_pair, "runs": runs,
         "baselines": {k: {m: v.get(m) for m in ("val_acc", "test_acc", "macro_f1",
                                                 "fate_pair_acc", "selected")}
                       for k, v in base.items()},
         "best_baseline": best}
  out.update(_against_best(runs, base, best, n_test, n_pair))
  if ensembles:
    out["ensembles"] = ensembles
    out["ensemble"] = _against_best(ensembles, base, best, n_test, n_pair)
  return out


def _member_runs(r: dict[str, Any], config, workdir: str) -> list[dict[str, Any]]:
  """A K-member run as K single-seed rows (``runs.member_results``)."""
  rows = []
  for m in runs_lib.member_results(r):
    res = {k: m[k] for k in _MODEL_KEYS if k in m}
    res["val_test_diff"] = abs(m["val_acc"] - m["test_acc"])
    crit = report_lib.success_criteria(res, config.monitor)
    res.pop("val_test_diff")
    res.update(seed=m["seed"], workdir=workdir, member_of=m["member_of"],
               criteria={c: v["passed"] for c, v in crit.items()},
               at_best_epoch=_schedule_values(workdir, m["best_epoch"]))
    rows.append(res)
  return rows


def _against_best(runs: Sequence[dict[str, Any]], base: dict[str, Any], best: str,
                  n_test: int, n_pair: int) -> dict[str, Any]:
  """Mean ± std over runs, and the verdict against the baseline best on validation."""
  model = {k: common.mean_std([run[k] for run in runs]) for k in
           ("test_acc", "val_acc", "train_acc", "macro_f1", "fate_pair_acc", "train_seconds")}
  diff = model["test_acc"][0] - base[best]["test_acc"]
  band = 2.0 * common.se_diff(base[best]["test_acc"], base[best]["test_acc"], n_test)
  out = {"model": model, "diff_vs_best": diff, "two_se": band,
         "verdict": ("beats" if diff > band else "at least ties" if diff >= 0 else
                     "within noise, below" if diff > -band else "loses to") +
                    f" the best baseline ({best})"}
  if model["fate_pair_acc"][0] is not None and base[best]["fate_pair_acc"] is not None:
    out["fate_diff_vs_best"] = model["fate_pair_acc"][0] - base[best]["fate_pair_acc"]
    p = base[best]["fate_pair_acc"]
    out["fate_two_se"] = 2.0 * common.se_diff(p, p, n_pair)
  return out


def _table_row(label: str, h: dict[str, Any], v: dict[str, Any]) -> str:
  """One verdict row: ``v`` is a horizon's single-model or ensemble summary."""
  b, best, m = h["baselines"], h["best_baseline"], v["model"]
  cell = lambda x: common.fmt(x, 3)  # noqa: E731
  return (f"| {label} | {h['horizon']:g} | {cell(m['test_acc'])} | "
          f"{cell(m['macro_f1'])} | {best} | {cell(b[best]['test_acc'])} | "
          f"{cell(b['logreg_last']['test_acc'])} | {cell(b['hgb_summary']['test_acc'])} | "
          f"{v['diff_vs_best']:+.3f} (±{v['two_se']:.3f}) | "
          f"{cell(m['fate_pair_acc'])} | {cell(b[best]['fate_pair_acc'])}"
          f"{' (±%.3f)' % v['fate_two_se'] if 'fate_two_se' in v else ''} | {v['verdict']} |")


def _run_label(r: dict[str, Any]) -> str:
  """A single run's seed; a member's seed and its run; an ensemble's member seeds."""
  if "members" in r:
    return "ensemble " + "+".join(str(s) for s in r["members"])
  return f"{r['seed']}" + (f" (member of run {r['member_of']})" if "member_of" in r else "")


def markdown(summaries: dict[str, dict[str, Any]]) -> str:
  """One table row per (data set, horizon); the seeds' mean ± std for the model."""
  lines = ["| data set | f | model test | model macro-F1 | best baseline (on val) | its test "
           "| logreg last | HGB pooled | diff (2 SE) | model fate 2-class | baseline fate "
           "2-class (2 SE) | verdict |", "|" + "---|" * 12]
  for name, summary in summaries.items():
    for h in summary["horizons"]:
      rows = [(name, h)]
      if h.get("ensemble"):
        k = len(h["ensembles"][0]["members"])
        rows.append((f"{name}, ensembles of {k} (n = {len(h['ensembles'])})", h["ensemble"]))
      for label, v in rows:
        lines.append(_table_row(label, h, v))
  lines += ["", "Per run (criteria: test > 0.75, train − val gap < 0.05, val ≥ train; label "
            "smoothing and weight decay at the best epoch; train s = the epochs' own time, "
            "so a re-reported run keeps it; a member's is its run's divided by K):", "",
            "| data set | f | seed | test | val | train | gap | best / run epochs | ls | wd | "
            "train s | test>0.75 | gap<0.05 | val≥train |", "|" + "---|" * 14]
  for name, summary in summaries.items():
    for h in summary["horizons"]:
      for r in h["runs"] + h.get("ensembles", []):
        c = r["criteria"]
        yn = lambda k: "pass" if c.get(k) else "FAIL"  # noqa: E731
        lines.append(
            f"| {name} | {h['horizon']:g} | {_run_label(r)} | {r['test_acc']:.3f} | "
            f"{r['val_acc']:.3f} | {r['train_acc']:.3f} | {r['acc_gap']:+.3f} | "
            f"{r['best_epoch']} / {r['epochs_run']} | "
            f"{common.fmt(r['at_best_epoch']['label_smoothing'], 3)} | "
            f"{common.fmt(r['at_best_epoch']['weight_decay'], 3)} | "
            f"{common.fmt(r.get('train_seconds'), 0)} | "
            f"{yn('test_accuracy')} | {yn('accuracy_gap')} | {yn('val_not_below_train')} |")
  return "\n".join(lines) + "\n"


def define_flags() -> None:
  """The script's flags (defined here, not at import: cardiac_jax.main defines --config too)."""
  config_flags.DEFINE_config_file("config", None, "Run config (configs/*.py).")
  flags.DEFINE_list("seeds", ["0", "1", "2"], "Training seeds.")
  flags.DEFINE_list("horizons", ["1.0"], "Observed fractions of each path.")
  flags.DEFINE_string("workdir", None, "Where the runs and summary.json go.")
  flags.DEFINE_list("combine", [], "Benchmark workdirs to combine into one table.")
  flags.DEFINE_string("out", None, "With --combine: output path without extension.")


def main(argv: Sequence[str]) -> None:
  del argv
  if FLAGS.combine:
    if not FLAGS.out:
      raise app.UsageError("--combine needs --out (a path without extension).")
    summaries = {}
    for d in FLAGS.combine:
      with open(os.path.join(d, SUMMARY)) as fh:
        summaries[os.path.basename(os.path.normpath(d))] = json.load(fh)
    names = ", ".join(summaries)
    title = ("# Model against every baseline, same splits (experiments/seed_benchmark.py)\n\n"
             f"Combined from: {names}\n\n")
    fileio.atomic_write_text(FLAGS.out + ".md", title + markdown(summaries))
    fileio.atomic_write_json(FLAGS.out + ".json", summaries)
    print(markdown(summaries))
    return
  if FLAGS.config is None or not FLAGS.workdir:
    raise app.UsageError("give --config=configs/<name>.py and --workdir (or --combine).")
  config = FLAGS.config
  config.train.progress_bar = False
  seeds = [int(s) for s in FLAGS.seeds]
  summary = {"config_name": config.name, "data": config.data.to_dict(),
             "horizons": [benchmark_horizon(config, float(h), seeds, FLAGS.workdir)
                          for h in FLAGS.horizons]}
  fileio.atomic_write_json(os.path.join(FLAGS.workdir, SUMMARY), summary)
  md = markdown({os.path.basename(os.path.normpath(FLAGS.workdir)): summary})
  fileio.atomic_write_text(os.path.join(FLAGS.workdir, "summary.md"), md)
  logging.info("wrote %s", os.path.join(FLAGS.workdir, SUMMARY))
  print(md)


if __name__ == "__main__":
  define_flags()
  app.run(main)
