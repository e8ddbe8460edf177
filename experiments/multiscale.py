"""Trains the scale1/2/3 presets (x seeds) and compares them; the best scale is picked on val.

  python experiments/multiscale.py --workdir=runs/multiscale [--seeds=0,1,2] [--quick]
      [--scales=scale1,scale2] [--override=train.num_epochs=20 ...]

Writes <workdir>/<scale>_seed<k>/ (one run each) and multiscale.{md,json,png}.
Rerunning reuses finished runs and resumes unfinished ones.
"""
from __future__ import annotations

import pathlib

from absl import app
from absl import flags

from cardiac_jax import experiments

_WORKDIR = flags.DEFINE_string("workdir", "runs/multiscale", "Root directory of the study.")
_SCALES = flags.DEFINE_list("scales", list(experiments.SCALES), "Presets to compare.")
_SEEDS = flags.DEFINE_list("seeds", ["0"], "Training seeds (the splits stay fixed).")
_QUICK = flags.DEFINE_bool("quick", False, "Tiny data and 2 epochs per run (smoke test).")
_OVERRIDE = flags.DEFINE_multi_string("override", [],
                                      "dotted.key=value applied to every run's config.")


def main(argv):
  del argv
  result = experiments.run_multiscale(
      scales=tuple(_SCALES.value), seeds=tuple(int(s) for s in _SEEDS.value),
      workdir_root=_WORKDIR.value, overrides=experiments.parse_overrides(_OVERRIDE.value),
      quick=_QUICK.value)
  print(pathlib.Path(result["files"]["md"]).read_text())


if __name__ == "__main__":
  app.run(main)
