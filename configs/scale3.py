"""scale3: 2,000 sequences per population and 1,000 spatial (13,000 in all).

  python -m cardiac_jax.main --config=configs/scale3.py
  python -m cardiac_jax.main --config=configs/scale3.py:quick   # debug-sized, seconds

13,000 sequences fall in scaling.py's "large" bracket; the sizes below
are that bracket's (tests/test_configs.py keeps them in step).
"""
from cardiac_jax import config_lib


def get_config(arg=None):
  config = config_lib.base_config()
  config.name = "scale3"
  config.data.sequences.per_population = 2_000
  config.data.sequences.spatial_total = 1_000
  config.model.width = 64
  config.model.depth = 2
  config.train.batch_size = 32
  config.train.num_epochs = 40
  return config_lib.variant(config, arg)
