"""Spatial regions: the sequence model against every baseline on held-out sections.

  python experiments/regions_benchmark.py --workdir=runs/regions_bench \
      --simspace_bed=/work/data/simspace_bed_seed{seed}.h5ad --out=docs/results/spatial

The study lives in cardiac_jax/studies/regions_benchmark.py (also runnable as
``python -m cardiac_jax.studies.regions_benchmark``).
"""
from absl import app
from absl import flags

from cardiac_jax.studies import regions_benchmark

if __name__ == "__main__":
  regions_benchmark.define_flags()
  flags.adopt_module_key_flags(regions_benchmark)   # --helpshort lists the study's flags
  app.run(regions_benchmark.main)
