"""Baselines and the time-shuffle ablation next to the sequence model, with a verdict.

  python experiments/ablations.py --config=configs/scale1.py --workdir=runs/ablations
      [--reference_workdir=runs/scale1]  # reuse a finished run of the same config

Writes <workdir>/model/, <workdir>/model_time_shuffled/ and ablations.{md,json}.
"""
from __future__ import annotations

import pathlib

from absl import app
from absl import flags
from ml_collections import config_flags

from cardiac_jax import experiments

_CONFIG = config_flags.DEFINE_config_file("config", "configs/scale1.py",
                                          "Config file; :quick for the tiny variant, "
                                          "--config.<field>=<value> to override.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/ablations", "Root directory of the study.")
_REFERENCE = flags.DEFINE_string("reference_workdir", None,
                                 "Workdir of the normal model's run (default <workdir>/model).")


def main(argv):
  del argv
  result = experiments.run_ablations(_CONFIG.value, _WORKDIR.value,
                                     reference_workdir=_REFERENCE.value)
  print(pathlib.Path(result["files"]["md"]).read_text())


if __name__ == "__main__":
  app.run(main)
