"""The 'scale2' preset (see cardiac_jax/config_lib.py)."""
from cardiac_jax import config_lib


def get_config():
  return config_lib.preset("scale2")
