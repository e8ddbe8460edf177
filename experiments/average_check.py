"""What the parameter average bought: the best checkpoint scored with and without it.

  python experiments/average_check.py --config=configs/scale1.py \
      --config.train.num_members=3 --config.train.average_epochs=2 \
      --workdir=runs/bench/scale1/f1/seed0     # + the run's other overrides

The study lives in cardiac_jax/studies/average_check.py (also runnable as
``python -m cardiac_jax.studies.average_check``).
"""
from absl import app
from absl import flags

from cardiac_jax.studies import average_check

if __name__ == "__main__":
  average_check.define_flags()
  flags.adopt_module_key_flags(average_check)   # --helpshort lists the study's flags
  app.run(average_check.main)
