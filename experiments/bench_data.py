"""Benchmarks the dataset build, stage by stage (wall seconds and peak RSS).

  python experiments/bench_data.py --config=configs/scale3.py --out=/tmp/bench_data.json

The study lives in cardiac_jax/studies/bench_data.py (also runnable as
``python -m cardiac_jax.studies.bench_data``).
"""
from absl import app
from absl import flags

from cardiac_jax.studies import bench_data

if __name__ == "__main__":
  bench_data.define_flags()
  flags.adopt_module_key_flags(bench_data)   # --helpshort lists the study's flags
  app.run(bench_data.main)
