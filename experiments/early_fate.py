"""Fate prediction from a partial path: accuracy against the observed fraction.

  python experiments/early_fate.py --config=configs/scale1.py --workdir=runs/early_fate
  python experiments/early_fate.py --config=configs/scale1.py:quick --config.train.num_epochs=1
      [--fractions=0.25,0.5,0.75,1.0] [--reference_workdir=runs/scale1]

The model and the baselines are trained and evaluated per horizon (see
cardiac_jax/experiments.py). Writes <workdir>/model_f<f>/ and early_fate.{md,json,png}.
"""
from __future__ import annotations

import pathlib

from absl import app
from absl import flags
from ml_collections import config_flags

from cardiac_jax import experiments

_CONFIG = config_flags.DEFINE_config_file("config", "configs/scale1.py", "Config file; :quick for the tiny variant, --config.<field>=<value> to override.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/early_fate", "Root directory of the study.")
_FRACTIONS = flags.DEFINE_list("fractions", ["0.25", "0.5", "0.75", "1.0"],
                               "Observed fractions of each sequence, in (0, 1].")
_REFERENCE = flags.DEFINE_string("reference_workdir", None,
                                 "Workdir of the f=1.0 run of this config, reused if finished.")


def main(argv):
  del argv
  result = experiments.run_early_fate(
      _CONFIG.value, _WORKDIR.value, tuple(float(f) for f in _FRACTIONS.value),
      reference_workdir=_REFERENCE.value)
  print(pathlib.Path(result["files"]["md"]).read_text())


if __name__ == "__main__":
  app.run(main)
