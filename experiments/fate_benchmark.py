"""Fate probabilities of held-out pre-branch cells: cardiac_jax against its peers.

  python experiments/fate_benchmark.py --seeds=0,1,2 --workdir=runs/fate_bench \
      --out=docs/results/fate                          # simulator, 3 seeds, CellRank if installed
  python experiments/fate_benchmark.py --config=configs/fate.py:quick --seeds=0 \
      --methods=cardiac_jax,logreg,priming             # the tests' quick mode (seconds)
  python experiments/fate_benchmark.py --config=configs/fate_lineage.py --seeds=0,1,2 \
      --config.data.path=/data/bed_seed{seed}.h5ad     # lineage-simulator beds (one per seed)

The study lives in cardiac_jax/studies/fate_benchmark.py (also runnable as
``python -m cardiac_jax.studies.fate_benchmark``).
"""
from absl import app
from absl import flags

from cardiac_jax.studies import fate_benchmark

if __name__ == "__main__":
  fate_benchmark.define_flags()
  flags.adopt_module_key_flags(fate_benchmark)   # --helpshort lists the study's flags
  app.run(fate_benchmark.main)
