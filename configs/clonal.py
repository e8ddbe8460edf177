"""clonal: a barcoded clone's early cells -> the fate its cells on the last day show.

  python -m cardiac_jax.main --config=configs/clonal.py              # embedded simulator
  python -m cardiac_jax.main --config=configs/clonal.py:quick        # seconds (tests)
  python -m cardiac_jax.main --config=configs/clonal.py --config.data.source=h5ad \\
      --config.data.path=X.h5ad --config.data.clone_key=clone --config.data.time_key=day \\
      --config.data.population_key=cell_type "--config.data.clonal.fate_classes=('A','B')"

A sequence is a clone's cells before the fate day, up to an observation day,
ordered by day (cardiac_jax/data/clonal.py); the model reads it as a set
(no position embedding: the order within a day means nothing) and its mean
(the pooled reading) and latest cell (the per-cell head). The report scores
every held-out clone at every observation day against the baselines on the
same clones (cardiac_jax/clones.py).
"""
import ml_collections

from cardiac_jax import config_lib


def get_config(arg=None):
  config = config_lib.base_config()
  config.name = "clonal"
  config.data.task = "clonal"
  config.data.classes = ()                 # every population present (fates among them)
  config.data.spatial.enabled = False
  config.data.sequences.spatial_total = 0
  config.data.simulator.n_cells = 20_000   # sampled cells of the embedded clonal simulator
  config.data.sequences.length = 32        # cells per sequence (a random subset of larger clones)
  config.data.clone_key = "clone"          # obs column; "" / NaN = no barcode
  config.data.clone_obsm = ""              # or a cells x clones 0/1 matrix, e.g. "X_clone"
  config.data.clonal = ml_collections.ConfigDict()
  config.data.clonal.fate_day = ""         # "" = the last time label
  config.data.clonal.fate_classes = ("CM", "CF")   # () = the populations present on the fate day
  config.data.clonal.observation_days = ()  # () = every sampling day before the fate day
  config.data.clonal.rotation = 0          # which twentieths are tested (splits.rotation_split)
  config.data.clonal.draws_per_unit = 4    # training sequences per (clone, observation day)
  config.data.clonal.eval_draws = 8        # draws averaged per clone when scoring / predicting
  config.data.fate_classes = ()            # the two-class score is the clone-level one here
  config.model.positions = "none"
  # One block of width 32: ~1,100 training clones overfit width 64 x 2 blocks by epoch 2;
  # the smaller model read validation clones as well or better at every observation day
  # (embedded simulator, seed 0, rotation 0) in a fifth of the time.
  config.model.width = 32
  config.model.depth = 1
  config.train.batch_size = 32
  config.train.num_epochs = 15
  config.train.first_cycle_epochs = 10.0
  config.train.ramp_epochs = 10.0
  config.train.early_stopping_patience = 4
  return config_lib.variant(config, arg)
