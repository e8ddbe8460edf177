"""fate: P(CM) / P(CF) for every pre-branch cell, from walks labelled by their terminal cell.

  python -m cardiac_jax.main --config=configs/fate.py                 # train + export
  python -m cardiac_jax.main --config=configs/fate.py:quick           # debug-sized, seconds
  cardiac-jax predict --model=runs/fate/model --input=cells.h5ad \\
      --output=cells_fate.h5ad --plots_dir=plots                      # fate per cell

The classes are the terminal populations (``data.fate.terminal``). Labels are
forward absorption probabilities (``data.fate.labels = "forward"``): from each
training cell, the chance that a chain moving forward over the kNN graph (same
day or next day) reaches a CM before a CF cell, as soft targets P(CM), P(CF)
per pre-branch cell. ``"exact"`` is the previous default: the expected visits of
32-step backward walks from every CM and CF cell (``data.fate.label_length``). The model reads
what a query cell has, its expression (PCA) and its day: sequences of length 1
(``data.sequences.length``), so prediction builds no kNN graph and no walks.
``--config.data.fate.labels=walks --config.data.sequences.length=32`` is the
previous model (sampled labels, 32-step walks ending at the cell); see
docs/results/fate.md for the measurements behind the defaults.
"""
import ml_collections

from cardiac_jax import config_lib
from cardiac_jax.data import fate

FATE_LENGTH = 1      # input sequence: the query cell alone
LABEL_LENGTH = 32    # labelling walks: as the previous model's 32-step walks


def get_config(arg=None):
  config = config_lib.base_config()
  config.name = "fate"
  config.data.task = "fate"
  config.data.spatial.enabled = False
  config.data.sequences.length = FATE_LENGTH   # the cell itself (PCA + day)
  config.data.sequences.k_neighbors = 30       # as CellRank's kNN graph (scanpy, k=30)
  config.data.fate = ml_collections.ConfigDict()
  config.data.fate.pre_branch = fate.PRE_BRANCH
  config.data.fate.terminal = fate.TERMINAL
  config.data.fate.labels = "forward"   # forward absorption, soft ("exact": backward visits)
  config.data.fate.label_length = LABEL_LENGTH  # steps of the labelling walks
  config.data.fate.walks_per_anchor = 4       # labels="walks": sampled walks per CM / CF cell
  # Sequences (all splits) per pre-branch population, IPSC, MES, CMES, PROG: mostly
  # progenitors, the cells whose fate shows (priming genes); the earlier ones get
  # few, enough to learn that their fate is near the prior.
  config.data.fate.per_population = (300, 300, 1_500, 9_000)
  config.data.fate_classes = fate.TERMINAL
  config.model.width = 64
  config.model.depth = 2
  config.train.batch_size = 32
  config.train.num_epochs = 20
  config.train.first_cycle_epochs = 10.0
  config.train.ramp_epochs = 10.0
  config.train.early_stopping_patience = 6
  config = config_lib.variant(config, arg)
  if arg == "quick":   # quick divides per_population; the fate section too
    config.data.fate.label_length = config.data.sequences.length   # the debug walks
    config.data.sequences.length = FATE_LENGTH
    config.data.fate.per_population = tuple(
        max(20, n // config_lib.QUICK_DIVISOR) for n in config.data.fate.per_population)
  return config
