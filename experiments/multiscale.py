"""Trains the scale1/2/3 configs (x seeds) and compares them; the best scale is picked on val.

  python experiments/multiscale.py --workdir=runs/multiscale [--seeds=0,1,2]
      [--scales=scale1,scale2] [--config.scale1.train.num_epochs=20 ...]
  python experiments/multiscale.py --config=configs/multiscale.py:quick   # smoke test

The study lives in cardiac_jax/studies/multiscale.py (also runnable as
``python -m cardiac_jax.studies.multiscale``).
"""
from absl import app
from absl import flags

from cardiac_jax.studies import multiscale

if __name__ == "__main__":
  multiscale.define_flags()
  flags.adopt_module_key_flags(multiscale)   # --helpshort lists the study's flags
  app.run(multiscale.main)
