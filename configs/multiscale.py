"""multiscale: the runs of experiments/multiscale.py, one field per scale.

Each field is that scale's own config (configs/scale1.py, ...), so
``--config.scale2.train.num_epochs=20`` overrides one run and
``configs/multiscale.py:quick`` takes every scale's quick variant.
"""
import ml_collections

from cardiac_jax import config_lib


def get_config(arg=None):
  config = ml_collections.ConfigDict()
  for scale in config_lib.SCALES:
    config[scale] = config_lib.preset(scale, arg)
  return config
