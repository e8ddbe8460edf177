"""The model against every baseline, over training seeds, on one data set's splits.

  python experiments/seed_benchmark.py --config=configs/scale1.py --seeds=0,1,2 \
      --workdir=runs/bench/scale1
  python experiments/seed_benchmark.py --config=configs/scale1.py --seeds=0,1,2 \
      --horizons=0.5,0.75 --workdir=runs/bench/scale1_fate
  # a data set of your own (or the external test bed, experiments/external_testbed.py):
  python experiments/seed_benchmark.py --config=configs/scale1.py --seeds=0,1,2 \
      --workdir=runs/bench/ext_a --config.data.source=h5ad --config.data.path=ext_a.h5ad \
      --config.data.population_key=population --config.data.time_key=time \
      --config.data.donor_key= --config.data.spatial.enabled=false \
      --config.data.fate_classes="('fateA','fateB')" ...
  # one table from several benchmarks:
  python experiments/seed_benchmark.py --combine=runs/bench/scale1,runs/bench/ext_a \
      --out=docs/results/benchmark

The study lives in cardiac_jax/studies/seed_benchmark.py (also runnable as
``python -m cardiac_jax.studies.seed_benchmark``).
"""
from absl import app
from absl import flags

from cardiac_jax.studies import seed_benchmark

if __name__ == "__main__":
  seed_benchmark.define_flags()
  flags.adopt_module_key_flags(seed_benchmark)   # --helpshort lists the study's flags
  app.run(seed_benchmark.main)
