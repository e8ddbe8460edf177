"""base: the defaults of config_lib.base_config; sizes follow the data (scaling.py).

For data of other sizes (e.g. an .h5ad via --config.data.source=h5ad): width,
depth, batch size and epochs are left None and filled from the bracket of the
dataset's size when the run starts.
"""
from cardiac_jax import config_lib


def get_config(arg=None):
  config = config_lib.base_config()
  config.name = "base"
  return config_lib.variant(config, arg)
