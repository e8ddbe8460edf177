"""fate_lineage: the fate model on lineage-simulator time courses (data we did not generate).

  python -m cardiac_jax.studies.lineage_testbed --out=/work/data/lineage_seed0.h5ad \\
      --n_founders=12 --seed=0 --nocheck                              # ~20K cells
  python experiments/fate_benchmark.py --config=configs/fate_lineage.py --seeds=0 \\
      --config.data.path=/work/data/lineage_seed{seed}.h5ad \\
      --methods=cardiac_jax,logreg,cellrank_pt,cellrank_ck

configs/fate.py on the h5ad cardiac_jax/studies/lineage_testbed.py writes:
obs["cell_type"] is "progenitor" before a clade commits, else "fateA" /
"fateB"; obs["day"] the sampling day. The one pre-branch population is the
progenitors; the terminal populations are the two fates, fate B FIRST, so every
method gives P(fate B). The truth of a cell (scoring only) is its node's true
fraction of fate-B descendants, obs["fate_prob_B"] > 0.5; a cell at exactly
0.5 has no leaning and is left out of the scores (``truth_ties = "drop"``).
The bed has no pseudotime: CellRank's PseudotimeKernel gets scanpy's DPT
(fate_benchmark._dpt). ``{seed}`` in data.path: seed s reads its own bed (and
the transfer test the bed of s + 100).
"""
import ml_collections

from cardiac_jax import config_lib

PROGENITOR = "progenitor"            # lineage_testbed.PROGENITOR (no lineage import here)
FATES = ("fateB", "fateA")           # lineage_testbed.FATES reversed: P(fate B) first


def get_config(arg=None):
  config = config_lib.preset("fate", arg)
  config.name = "fate_lineage"
  config.data.source = "h5ad"
  config.data.path = "lineage_seed{seed}.h5ad"
  config.data.population_key = "cell_type"
  config.data.time_key = "day"
  config.data.donor_key = ""
  config.data.classes = ()             # progenitor, fateA, fateB, ordered by mean day
  config.data.drop_labels = ()
  config.data.fate.pre_branch = (PROGENITOR,)
  config.data.fate.terminal = FATES
  config.data.fate_classes = FATES
  # configs/fate.py's sequences on its progenitors (9,000; the quick variant's share).
  config.data.fate.per_population = (config.data.fate.per_population[-1],)
  config.fate_benchmark = ml_collections.ConfigDict()
  config.fate_benchmark.truth_key = "fate_prob_B"
  config.fate_benchmark.truth_threshold = 0.5
  config.fate_benchmark.truth_ties = "drop"
  config.fate_benchmark.headline = PROGENITOR
  config.fate_benchmark.pseudotime_key = "dpt_pseudotime"
  return config
