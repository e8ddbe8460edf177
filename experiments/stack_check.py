"""Does the path add anything to the best per-cell classifier? The trained sequence
branch stacked on a fitted baseline instead of the model's own cell head.

  python experiments/stack_check.py --config=configs/scale1.py \
      --workdir=runs/bench/scale1/f1/seed0     # + the run's own overrides

The study lives in cardiac_jax/studies/stack_check.py (also runnable as
``python -m cardiac_jax.studies.stack_check``).
"""
from absl import app
from absl import flags

from cardiac_jax.studies import stack_check

if __name__ == "__main__":
  stack_check.define_flags()
  flags.adopt_module_key_flags(stack_check)   # --helpshort lists the study's flags
  app.run(stack_check.main)
