"""Adaptive sizes, override precedence and the errors for unusable sizes."""
import pytest

from cardiac_jax import config_lib, scaling
from cardiac_jax.errors import ConfigError

SMALL = dict(width=48, depth=2, batch_size=16, num_epochs=40)
MEDIUM = dict(width=64, depth=2, batch_size=24, num_epochs=40)
LARGE = dict(width=64, depth=2, batch_size=32, num_epochs=40)


@pytest.mark.parametrize("n,expected", [
    (0, SMALL), (1_999, SMALL),
    (2_000, MEDIUM), (3_500, MEDIUM), (5_000, MEDIUM),
    (5_001, LARGE), (50_000, LARGE),
])
def test_brackets_and_boundaries(n, expected):
  assert scaling.adaptive_settings(n) == expected


def test_negative_count_rejected():
  with pytest.raises(ConfigError):
    scaling.adaptive_settings(-1)


def test_resolve_fills_none_fields_without_touching_input():
  config = config_lib.base_config()
  resolved = scaling.resolve_config(config, 6_000)
  assert (resolved.model.width, resolved.model.depth) == (64, 2)
  assert (resolved.train.batch_size, resolved.train.num_epochs) == (32, 40)
  assert config.model.width is None and config.train.batch_size is None


def test_explicit_values_win():
  config = config_lib.base_config()
  config.model.width = 96
  config.train.num_epochs = 7
  resolved = scaling.resolve_config(config, 6_000)
  assert resolved.model.width == 96 and resolved.train.num_epochs == 7
  assert resolved.model.depth == 2 and resolved.train.batch_size == 32


def test_debug_preset_keeps_its_sizes():
  resolved = scaling.resolve_config(config_lib.preset("debug"), 100_000)
  assert (resolved.model.width, resolved.model.depth) == (32, 1)
  assert (resolved.train.batch_size, resolved.train.num_epochs) == (16, 3)


def test_missing_field_without_auto_scale_names_it():
  config = config_lib.base_config()
  config.train.auto_scale = False
  config.model.width, config.model.depth, config.train.batch_size = 64, 2, 8
  with pytest.raises(ConfigError, match=r"train\.num_epochs"):
    scaling.resolve_config(config, 100)
  config.train.num_epochs = 3
  assert scaling.resolve_config(config, 100).train.num_epochs == 3


def _resolved_with(**overrides):
  config = config_lib.base_config()
  for dotted, value in overrides.items():
    section, field = dotted.split("__")
    config[section][field] = value
  return scaling.resolve_config(config, 100)


def test_heads_must_divide_width_and_a_fix_is_suggested():
  with pytest.raises(ConfigError, match=r"num_heads=5.*width=48.*num_heads=4"):
    _resolved_with(model__num_heads=5)
  with pytest.raises(ConfigError, match=r"num_heads=10"):
    _resolved_with(model__width=100, model__num_heads=8)


@pytest.mark.parametrize("field,value,pattern", [
    ("model__width", 0, r"model\.width"),
    ("model__depth", -1, r"model\.depth"),
    ("train__batch_size", 0, r"train\.batch_size"),
    ("train__num_epochs", 0, r"train\.num_epochs"),
    ("model__num_heads", 0, r"model\.num_heads"),
    ("model__dropout_min", -0.1, r"model\.dropout_min"),
    ("model__dropout_max", 1.0, r"model\.dropout_max"),
    ("model__attention_dropout", 1.5, r"model\.attention_dropout"),
    ("model__input_dropout", 1.0, r"model\.input_dropout"),
    ("model__norm", "group", r"model\.norm"),
    ("model__dtype", "float16", r"model\.dtype"),
])
def test_bad_sizes_raise_naming_the_field(field, value, pattern):
  with pytest.raises(ConfigError, match=pattern):
    _resolved_with(**{field: value})


def test_config_error_is_a_value_error():
  assert issubclass(scaling.ConfigError, ValueError)
