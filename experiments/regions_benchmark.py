"""Spatial regions on held-out sections: the sequence model against every baseline, over seeds.

  python experiments/regions_benchmark.py --config=configs/spatial.py --seeds=0,1,2 \\
      --simspace=/work/data/simspace_bed_seed{seed}.h5ad --workdir=runs/regions_bench \\
      --out=docs/results/spatial

The SimSpace beds come from ``python -m cardiac_jax.studies.simspace_testbed
--out=... --seed=N`` (the ``simspace`` extra). The study lives in
cardiac_jax/studies/regions_benchmark.py (also runnable as
``python -m cardiac_jax.studies.regions_benchmark``).
"""
from absl import app
from absl import flags

from cardiac_jax.studies import regions_benchmark

if __name__ == "__main__":
  regions_benchmark.define_flags()
  flags.adopt_module_key_flags(regions_benchmark)   # --helpshort lists the study's flags
  app.run(regions_benchmark.main)
