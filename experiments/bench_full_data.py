"""Full-size data benchmark: simulate -> GEO files -> convert back -> scale3 dataset.

  # GSE175634's size and density: 230,786 cells x 38,943 genes, ~312 M non-zeros.
  python experiments/bench_full_data.py --n_cells=230786 --n_genes=38943 \
      --mean_library_size=5000 --workdir=/tmp/full --stages=simulate
  python experiments/bench_full_data.py --n_cells=230786 --n_genes=38943 \
      --mean_library_size=5000 --workdir=/tmp/full --stages=write_geo,convert,build --predict

The study lives in cardiac_jax/studies/bench_full_data.py (also runnable as
``python -m cardiac_jax.studies.bench_full_data``).
"""
from absl import app
from absl import flags

from cardiac_jax.studies import bench_full_data

if __name__ == "__main__":
  bench_full_data.define_flags()
  flags.adopt_module_key_flags(bench_full_data)   # --helpshort lists the study's flags
  app.run(bench_full_data.main)
