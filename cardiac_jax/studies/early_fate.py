"""Fate prediction from a partial path: accuracy against the observed fraction.

  python experiments/early_fate.py --config=configs/scale1.py --workdir=runs/early_fate
  python experiments/early_fate.py --config=configs/scale1.py:quick --config.train.num_epochs=1
      [--fractions=0.25,0.5,0.75,1.0] [--reference_workdir=runs/scale1]

Accuracy against the observed fraction of each sequence, overall and on the
CM-vs-CF branch. The model and the baselines are TRAINED AND EVALUATED PER
HORIZON: at fraction f only the first ceil(f·L) steps exist, in training,
validation and test; a full-length model scored on truncated inputs would mix
the loss of information with a train/test distribution shift. The hidden steps
are gone, but not everything about them: a walk's steps are paced over the days
up to its anchor's day (``sequences.step_times``), so the days of the visible
steps reveal the anchor's day, and with it much of the six-class label. The
``day_only`` baseline measures that pacing signal at every horizon. CM and CF
anchors both sit on the last days (the same pacing), so CM-vs-CF accuracy is
the honest fate-prediction number.

Writes <workdir>/model_f<f>/ and early_fate.{md,json,png}.
"""
from __future__ import annotations

import os
import pathlib
from typing import Any, Sequence

from absl import app
from absl import flags
from absl import logging
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  pylint: disable=g-import-not-at-top
import ml_collections  # noqa: E402
from ml_collections import config_flags  # noqa: E402
import numpy as np  # noqa: E402

from cardiac_jax import baselines as baselines_lib  # noqa: E402
from cardiac_jax import config_lib  # noqa: E402
from cardiac_jax import fileio  # noqa: E402
from cardiac_jax.data import dataset as dataset_lib  # noqa: E402
from cardiac_jax.data import sequences as sequences_lib  # noqa: E402
from cardiac_jax.studies import common  # noqa: E402
from cardiac_jax.studies import runs  # noqa: E402

FLAGS = flags.FLAGS


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
  config = runs.with_data(config, time_shuffle=False)
  seed = int(config.seed)

  full = dataset_lib.build_dataset(runs.with_data(config, observed_fraction=1.0).data)

  def data_at(f):   # the cache holds full paths; the horizon is applied after it
    cfg = runs.with_data(config, observed_fraction=f)
    return cfg, dataset_lib.post_process(full, cfg.data)

  base_by_f = {}
  if 1.0 not in fractions:
    base_by_f[1.0] = baselines_lib.run_baselines(data_at(1.0)[1], seed=seed)
  rows = []
  for f in runs.each_run(fractions, "early fate"):
    cfg, ds = data_at(f)
    base_by_f[f] = baselines_lib.run_baselines(ds, seed=seed)
    wd = (os.path.abspath(reference_workdir) if f == 1.0 and reference_workdir
          else os.path.join(root, f"model_f{f:.2f}"))
    logging.info("early fate: f=%.2f (%d of %d steps visible) in %s", f,
                 sequences_lib.visible_steps(ds.length, f), ds.length, wd)
    summary = runs.run_summary(runs.train_or_reuse(cfg, wd, ds), ds)
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
  result["summary"] = summarise(result)
  result["files"] = {"json": os.path.join(root, "early_fate.json"),
                     "md": os.path.join(root, "early_fate.md"),
                     "png": os.path.join(root, "early_fate.png")}
  plot(result, result["files"]["png"])
  fileio.atomic_write_text(result["files"]["md"], markdown(result))
  common.write_json(result["files"]["json"], result)
  logging.info("early fate: %s", result["summary"])
  return result


def summarise(r: dict[str, Any]) -> str:
  """One sentence: model, best baseline and day-only accuracy from the first to the last f."""
  first, last = r["rows"][0], r["rows"][-1]
  cm_cf = lambda row: common.fmt(row["model_cm_cf_acc"], 3)  # noqa: E731
  ahead = [x["fraction"] for x in r["rows"] if x["model_test_acc"] > x["baseline_test_acc"]]
  return (f"Model test accuracy {first['model_test_acc']:.3f} at f={first['fraction']:.2f} -> "
          f"{last['model_test_acc']:.3f} at f={last['fraction']:.2f} (CM-vs-CF "
          f"{cm_cf(first)} -> {cm_cf(last)}); best "
          f"baseline {r['best_baseline']} {first['baseline_test_acc']:.3f} -> "
          f"{last['baseline_test_acc']:.3f}; day-only (pacing) baseline "
          f"{first['day_only_test_acc']:.3f} -> {last['day_only_test_acc']:.3f}. Model ahead "
          f"at fractions {[round(f, 2) for f in ahead] or 'none'}.")


def markdown(r: dict[str, Any]) -> str:
  """early_fate.md: the protocol, the per-fraction table and the summary."""
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
  lines += common.table(("fraction", "visible steps", "model test acc", "model CM-vs-CF acc",
                   f"{r['best_baseline']} test acc", f"{r['best_baseline']} CM-vs-CF acc",
                   "day-only test acc", "day-only CM-vs-CF acc"),
                  [(f"{x['fraction']:.2f}", f"{x['visible_steps']}/{x['length']}",
                    x["model_test_acc"], x["model_cm_cf_acc"], x["baseline_test_acc"],
                    x["baseline_cm_cf_acc"], x["day_only_test_acc"], x["day_only_cm_cf_acc"])
                   for x in r["rows"]])
  lines += ["", r["summary"], "", "![early fate](early_fate.png)", ""]
  return "\n".join(lines)


def plot(r: dict[str, Any], path: str) -> str:
  """early_fate.png: test and CM-vs-CF accuracy against the observed fraction."""
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


def define_flags() -> None:
  """The script's flags (defined here, not at import: cardiac_jax.main defines --config too)."""
  config_flags.DEFINE_config_file("config", "configs/scale1.py",
                                  "Config file; :quick for the tiny variant, "
                                  "--config.<field>=<value> to override.")
  flags.DEFINE_string("workdir", "runs/early_fate", "Root directory of the study.")
  flags.DEFINE_list("fractions", ["0.25", "0.5", "0.75", "1.0"],
                    "Observed fractions of each sequence, in (0, 1].")
  flags.DEFINE_string("reference_workdir", None,
                      "Workdir of the f=1.0 run of this config, reused if finished.")


def main(argv: Sequence[str]) -> None:
  del argv
  result = run_early_fate(FLAGS.config, FLAGS.workdir, tuple(float(f) for f in FLAGS.fractions),
                          reference_workdir=FLAGS.reference_workdir)
  print(pathlib.Path(result["files"]["md"]).read_text())


if __name__ == "__main__":
  define_flags()
  app.run(main)
