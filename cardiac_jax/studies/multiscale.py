"""Trains the scale1/2/3 configs (x seeds) and compares them; the best scale is picked on val.

  python experiments/multiscale.py --workdir=runs/multiscale [--seeds=0,1,2]
      [--scales=scale1,scale2] [--config.scale1.train.num_epochs=20 ...]
  python experiments/multiscale.py --config=configs/multiscale.py:quick   # smoke test

The presets are trained with ``train.train_and_evaluate``; the best scale is
chosen on VALIDATION accuracy, never on test, and the spread of test accuracy
across scales and seeds says how much a single number can be trusted. Seeds
change the training seed (initialisation, dropout, batch order) only; the
splits stay identical.

The runs are configs/multiscale.py: one field per scale, each that scale's
configs/<scale>.py, overridden with --config.<scale>.<field>=<value>.
Writes <workdir>/<scale>_seed<k>/ (one run each) and multiscale.{md,json,png}.
Consecutive seeds (0,1,2) train as the members of one run per scale
(train.num_members, in <workdir>/<scale>_seeds0-2/), each member reported as
its own seed; --nomembers trains one run per seed.
Rerunning reuses finished runs and resumes unfinished ones (``runs.train_or_reuse``).
"""
from __future__ import annotations

import os
import pathlib
from typing import Any, Mapping, Sequence

from absl import app
from absl import flags
from absl import logging
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  pylint: disable=g-import-not-at-top
import ml_collections  # noqa: E402
from ml_collections import config_flags  # noqa: E402
import numpy as np  # noqa: E402

from cardiac_jax import config_lib  # noqa: E402
from cardiac_jax import fileio  # noqa: E402
from cardiac_jax import members as members_lib  # noqa: E402
from cardiac_jax.data import dataset as dataset_lib  # noqa: E402
from cardiac_jax.studies import common  # noqa: E402
from cardiac_jax.studies import runs  # noqa: E402

FLAGS = flags.FLAGS
SCALES = config_lib.SCALES


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
  rows = []
  datasets: dict[str, Any] = {}
  base = None
  # Consecutive seeds train as the members of one run per scale (one compiled
  # epoch for all of them); other seed lists, or a config that already sets
  # train.num_members, train one run per seed.
  seeds = [int(k) for k in seeds]
  together = (members and runs.consecutive(seeds)
              and all(members_lib.num_members(configs[s]) == 1 for s in scales)
              and not any(os.path.isdir(os.path.join(root, f"{s}_seed{k}"))
                          for s in scales for k in seeds))   # a study begun run by run
  jobs = [(s, seeds) for s in scales] if together else [(s, [k]) for s in scales for k in seeds]
  for scale, group in runs.each_run(jobs, "multiscale"):
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
    results = runs.train_or_reuse(config, workdir, ds)
    per_seed = runs.member_results(results) if together else [dict(results, seed=group[0])]
    for r in per_seed:
      rows.append({"scale": scale, "seed": r["seed"], "workdir": workdir,
                   **runs.run_summary(r, ds)})

  per_scale = {}
  for scale in scales:
    rs = [r for r in rows if r["scale"] == scale]
    entry = {"seeds": [r["seed"] for r in rs], "sequences": rs[0]["sequences"],
             "num_params": rs[0]["num_params"]}
    for key in ("train_acc", "val_acc", "test_acc", "macro_f1", "acc_gap", "loss_gap",
                "epochs_run", "best_epoch", "wall_seconds"):
      entry[key], entry[f"{key}_std"] = common.mean_std([r[key] for r in rs])
    per_scale[scale] = entry
  best = best_scale(per_scale)
  test = [r["test_acc"] for r in rows]
  mon = base.monitor
  result = {
      "quick": config_lib.is_quick(base),
      "scales_order": list(scales),
      "seeds": [int(k) for k in seeds],
      "runs": rows,
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
  plot(result, result["files"]["png"])
  fileio.atomic_write_text(result["files"]["md"], markdown(result))
  common.write_json(result["files"]["json"], result)
  logging.info("multiscale: best scale on validation %s (test %.4f); test spread %.4f",
               best, per_scale[best]["test_acc"], result["test_acc_spread"]["max_minus_min"])
  return result


def markdown(r: dict[str, Any]) -> str:
  """multiscale.md: every run, the means over seeds, the best scale on validation."""
  lines = [f"# Multi-scale comparison{' (quick mode)' if r['quick'] else ''}", "",
           f"Seeds: {r['seeds']} (training seed only; identical splits).", ""]
  lines += common.table(
      ("scale", "seed", "sequences", "params", "epochs run", "best epoch", "train acc",
       "val acc", "test acc", "macro-F1", "acc gap", "loss gap", "wall s"),
      [(x["scale"], x["seed"], x["sequences"], x["num_params"], x["epochs_run"],
        x["best_epoch"], x["train_acc"], x["val_acc"], x["test_acc"], x["macro_f1"],
        x["acc_gap"], x["loss_gap"], f"{x['wall_seconds']:.1f}") for x in r["runs"]])
  if len(r["seeds"]) > 1:
    lines += ["", "Mean ± std over seeds:", ""]
    lines += common.table(
        ("scale", "train acc", "val acc", "test acc", "acc gap"),
        [(s, *(common.fmt((e[k], e[k + "_std"]), 4)
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


def plot(r: dict[str, Any], path: str) -> str:
  """multiscale.png: accuracy per scale (± std over seeds) and the accuracy gap, with targets."""
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



def define_flags() -> None:
  """The script's flags (defined here, not at import: cardiac_jax.main defines --config too)."""
  config_flags.DEFINE_config_file(
      "config", "configs/multiscale.py",
      "Configs of the scales; :quick for the tiny variant, --config.scale1.<field>=<value>.")
  flags.DEFINE_string("workdir", "runs/multiscale", "Root directory of the study.")
  flags.DEFINE_list("scales", list(SCALES), "Scales to compare.")
  flags.DEFINE_list("seeds", ["0"], "Training seeds (the splits stay fixed).")
  flags.DEFINE_bool("members", True,
                    "Train consecutive seeds as the members of one run per scale.")


def main(argv: Sequence[str]) -> None:
  del argv
  result = run_multiscale(
      {scale: FLAGS.config[scale] for scale in FLAGS.scales},
      seeds=tuple(int(s) for s in FLAGS.seeds), workdir_root=FLAGS.workdir,
      members=FLAGS.members)
  print(pathlib.Path(result["files"]["md"]).read_text())


if __name__ == "__main__":
  define_flags()
  app.run(main)
