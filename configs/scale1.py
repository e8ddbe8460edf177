"""scale1: 1,000 sequences per population and 500 spatial (6,500 in all).

  python -m cardiac_jax.main --config=configs/scale1.py
  python -m cardiac_jax.main --config=configs/scale1.py:quick   # debug-sized, seconds

6,500 sequences fall in scaling.py's "large" bracket; the sizes below
are that bracket's (tests/test_configs.py keeps them in step).
"""
from cardiac_jax import config_lib


def get_config(arg=None):
  config = config_lib.base_config()
  config.name = "scale1"
  config.data.sequences.per_population = 1_000
  config.data.sequences.spatial_total = 500
  config.model.width = 64
  config.model.depth = 2
  config.train.batch_size = 32
  config.train.num_epochs = 40
  return config_lib.variant(config, arg)
