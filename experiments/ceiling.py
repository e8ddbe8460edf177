"""How much better than the per-cell classifier can ANY model of a path be? On the
embedded simulator the question has an exact answer: the Bayes rule on its latents.

  python experiments/ceiling.py --presets=scale1,scale2,scale3 --data_seeds=0,1,2 \\
      --out=docs/results/ceiling

The study lives in cardiac_jax/studies/ceiling.py (also runnable as
``python -m cardiac_jax.studies.ceiling``).
"""
from absl import app
from absl import flags

from cardiac_jax.studies import ceiling

if __name__ == "__main__":
  ceiling.define_flags()
  flags.adopt_module_key_flags(ceiling)   # --helpshort lists the study's flags
  app.run(ceiling.main)
