"""Fate prediction from a partial path: accuracy against the observed fraction.

  python experiments/early_fate.py --config=configs/scale1.py --workdir=runs/early_fate
  python experiments/early_fate.py --config=configs/scale1.py:quick --config.train.num_epochs=1
      [--fractions=0.25,0.5,0.75,1.0] [--reference_workdir=runs/scale1]

The study lives in cardiac_jax/studies/early_fate.py (also runnable as
``python -m cardiac_jax.studies.early_fate``).
"""
from absl import app
from absl import flags

from cardiac_jax.studies import early_fate

if __name__ == "__main__":
  early_fate.define_flags()
  flags.adopt_module_key_flags(early_fate)   # --helpshort lists the study's flags
  app.run(early_fate.main)
