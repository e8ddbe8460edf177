"""Baselines and the time-shuffle ablation next to the sequence model, with a verdict.

  python experiments/ablations.py --config=configs/scale1.py --workdir=runs/ablations
      [--reference_workdir=runs/scale1]  # reuse a finished run of the same config

The study lives in cardiac_jax/studies/ablations.py (also runnable as
``python -m cardiac_jax.studies.ablations``).
"""
from absl import app
from absl import flags

from cardiac_jax.studies import ablations

if __name__ == "__main__":
  ablations.define_flags()
  flags.adopt_module_key_flags(ablations)   # --helpshort lists the study's flags
  app.run(ablations.main)
