"""Clone fate from early cells: the model against every baseline and CoSpar, pooled over rotations.

  python experiments/clonal_benchmark.py --beds=embedded,lineage --seeds=0,1,2 \
      --workdir=runs/clonal_bench --out=docs/results/clonal

The lineage bed's files come first (the `lineage` extra):
  python -m cardiac_jax.studies.lineage_testbed --out=/work/data/lineage_seed0.h5ad \
      --n_founders=12 --seed=0

The study lives in cardiac_jax/studies/clonal_benchmark.py.
"""
from absl import app
from absl import flags

from cardiac_jax.studies import clonal_benchmark

if __name__ == "__main__":
  clonal_benchmark.define_flags()
  flags.adopt_module_key_flags(clonal_benchmark)   # --helpshort lists the study's flags
  app.run(clonal_benchmark.main)
