"""configs/: each file states its run; the quick variant; config_flags overrides."""
import os
import sys

from absl import flags
from ml_collections import config_flags
import pytest

from cardiac_jax import config_lib
from cardiac_jax import fingerprint
from cardiac_jax import scaling
from cardiac_jax.data import dataset as dataset_lib
from cardiac_jax.errors import ConfigError

SIZES = (("model", "width"), ("model", "depth"), ("train", "batch_size"),
         ("train", "num_epochs"))


def _sizes(config):
  return {field: config[section][field] for section, field in SIZES}


@pytest.mark.parametrize("name", config_lib.SCALES)
def test_scale_files_spell_out_their_bracket(name):
  """The sizes written in configs/<scale>.py are scaling.py's for that data size."""
  config = config_lib.preset(name)
  expected = scaling.adaptive_settings(config_lib.nominal_sequences(config))
  assert _sizes(config) == {"width": expected["width"], "depth": expected["depth"],
                            "batch_size": expected["batch_size"],
                            "num_epochs": expected["num_epochs"]}
  # Spelling them out resolves to what the adaptive placeholders gave.
  adaptive = config.copy_and_resolve_references()
  for section, field in SIZES:
    adaptive[section][field] = None
  n = config_lib.nominal_sequences(config)
  assert (scaling.resolve_config(adaptive, n).to_dict() ==
          scaling.resolve_config(config, n).to_dict())


def test_nominal_sequences_is_the_built_count():
  config = config_lib.preset("debug")
  assert len(dataset_lib.build_dataset(config.data).y) == config_lib.nominal_sequences(config)
  assert config_lib.nominal_sequences(config_lib.preset("scale1")) == 6_500


def test_base_leaves_sizes_to_the_brackets():
  config = config_lib.preset("base")
  assert all(v is None for v in _sizes(config).values())
  assert config.to_dict() == {**config_lib.base_config().to_dict(), "name": "base"}


def test_quick_keeps_scale_proportions():
  q = {s: config_lib.preset(s, "quick") for s in config_lib.SCALES}
  debug = config_lib.preset("debug")
  assert q["scale1"].data.to_dict() == debug.data.to_dict()    # scale1 quick == debug data
  per = [q[s].data.sequences.per_population for s in config_lib.SCALES]
  assert per == [40, 60, 80]
  for c in q.values():
    assert c.train.num_epochs == config_lib.QUICK_EPOCHS
    assert (c.model.width, c.model.depth, c.train.batch_size) == (32, 1, 16)
    assert config_lib.is_quick(c)
  assert q["scale3"].name == "scale3_quick" and not config_lib.is_quick(debug)
  assert config_lib.preset("scale3").data.sequences.per_population == 2_000
  # The name is not part of the fingerprint: a quick run and its reuse agree.
  assert "name" not in fingerprint.fingerprint(q["scale1"], "k")


def test_unknown_variant_and_preset():
  with pytest.raises(ConfigError, match="quick"):
    config_lib.preset("scale1", "tiny")
  with pytest.raises(ValueError, match="scale1"):
    config_lib.preset("scale9")


def test_config_flags_variant_then_overrides(monkeypatch):
  """``--config=configs/scale1.py:quick --config.train.num_epochs=12`` trains 12 epochs."""
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", flag_values=fv)
  path = os.path.join(str(config_lib.CONFIGS_DIR), "scale1.py")
  argv = ["prog", f"--config={path}:quick", "--config.train.num_epochs=12",
          "--config.model.norm=layer"]
  monkeypatch.setattr(sys, "argv", argv)   # config_flags reads the overrides from sys.argv
  fv(argv)
  config = fv.config
  assert config.train.num_epochs == 12 and config.model.norm == "layer"
  assert config.data.to_dict() == config_lib.preset("scale1", "quick").data.to_dict()


def test_multiscale_config_holds_each_scale():
  config = config_lib.preset("multiscale", "quick")
  assert list(config) == list(config_lib.SCALES)
  for s in config_lib.SCALES:
    assert config[s].to_dict() == config_lib.preset(s, "quick").to_dict()
