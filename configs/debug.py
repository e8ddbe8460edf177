"""debug: the whole pipeline in seconds on a CPU (tests, notebooks, smoke runs).

  python -m cardiac_jax.main --config=configs/debug.py --workdir=/tmp/debug

260 sequences and a one-block model of width 32: far below the brackets of
scaling.py, whose smallest model would only memorise this little data.
"""
from cardiac_jax import config_lib


def get_config(arg=None):
  config = config_lib.base_config()
  config.name = "debug"
  config.data.simulator.n_cells = 3_000
  config.data.simulator.n_genes = 400
  config.data.spatial.n_spots = 600
  config.data.preprocess.n_hvg = 300
  config.data.preprocess.n_pcs = 16
  config.data.sequences.length = 16
  config.data.sequences.per_population = 40
  config.data.sequences.spatial_total = 20
  config.model.width = 32
  config.model.depth = 1
  config.train.batch_size = 16
  config.train.num_epochs = 3
  config.train.first_cycle_epochs = 2.0
  config.train.early_stopping_patience = 3
  config.train.progress_bar = False
  return config_lib.variant(config, arg)
