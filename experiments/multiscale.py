"""Trains the scale1/2/3 configs (x seeds) and compares them; the best scale is picked on val.

  python experiments/multiscale.py --workdir=runs/multiscale [--seeds=0,1,2]
      [--scales=scale1,scale2] [--config.scale1.train.num_epochs=20 ...]
  python experiments/multiscale.py --config=configs/multiscale.py:quick   # smoke test

The runs are configs/multiscale.py: one field per scale, each that scale's
configs/<scale>.py, overridden with --config.<scale>.<field>=<value>.
Writes <workdir>/<scale>_seed<k>/ (one run each) and multiscale.{md,json,png}.
Consecutive seeds (0,1,2) train as the members of one run per scale
(train.num_members, in <workdir>/<scale>_seeds0-2/), each member reported as
its own seed; --nomembers trains one run per seed.
Rerunning reuses finished runs and resumes unfinished ones.
"""
from __future__ import annotations

import pathlib

from absl import app
from absl import flags
from ml_collections import config_flags

from cardiac_jax import experiments

_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/multiscale.py",
    "Configs of the scales; :quick for the tiny variant, --config.scale1.<field>=<value>.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/multiscale", "Root directory of the study.")
_SCALES = flags.DEFINE_list("scales", list(experiments.SCALES), "Scales to compare.")
_SEEDS = flags.DEFINE_list("seeds", ["0"], "Training seeds (the splits stay fixed).")
_MEMBERS = flags.DEFINE_bool("members", True,
                             "Train consecutive seeds as the members of one run per scale.")


def main(argv):
  del argv
  result = experiments.run_multiscale(
      {scale: _CONFIG.value[scale] for scale in _SCALES.value},
      seeds=tuple(int(s) for s in _SEEDS.value), workdir_root=_WORKDIR.value,
      members=_MEMBERS.value)
  print(pathlib.Path(result["files"]["md"]).read_text())


if __name__ == "__main__":
  app.run(main)
