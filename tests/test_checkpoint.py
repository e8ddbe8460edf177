"""The orbax wrapper: latest-N + best-1, metadata, fallback, config fingerprints."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cardiac_jax import checkpoint as checkpoint_lib
from cardiac_jax import fingerprint as fingerprint_lib
from cardiac_jax import config_lib
from cardiac_jax.errors import ConfigError


def _state(value: float):
  return {"step": jnp.asarray(int(value), jnp.int32),
          "params": {"w": jnp.full((3, 2), value, jnp.float32), "b": jnp.arange(2.0) + value}}


def _abstract():
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), _state(0.0))


def test_keeps_latest_n_and_best_one(tmp_path):
  with checkpoint_lib.Checkpointer(str(tmp_path), keep=2) as ckpt:
    for epoch in range(1, 5):
      ckpt.save(epoch, _state(epoch), {"epoch": epoch, "note": "x"}, best=(epoch == 2))
    ckpt.wait()
    assert ckpt.latest.all_steps() == [3, 4]
    assert ckpt.best.all_steps() == [2]
    state, meta = ckpt.restore_latest(_abstract())
    assert meta == {"epoch": 4, "note": "x"}
    np.testing.assert_array_equal(state["params"]["w"], np.full((3, 2), 4.0))
    best, best_meta = ckpt.restore_best(_abstract())
    assert best_meta["epoch"] == 2 and int(best["step"]) == 2


def test_empty_workdir_restores_nothing(tmp_path):
  with checkpoint_lib.Checkpointer(str(tmp_path)) as ckpt:
    assert ckpt.restore_latest(_abstract()) is None
    with pytest.raises(checkpoint_lib.CheckpointError, match="train first"):
      ckpt.restore_best(_abstract())


def test_damaged_newest_checkpoint_falls_back_and_is_set_aside(tmp_path, caplog):
  with checkpoint_lib.Checkpointer(str(tmp_path), keep=3) as ckpt:
    for epoch in (1, 2):
      ckpt.save(epoch, _state(epoch), {"epoch": epoch}, best=True)
  newest = tmp_path / "checkpoints" / "latest" / "2" / "state"
  for path in newest.rglob("*"):
    if path.is_file():
      path.write_bytes(b"")                          # truncated files
  with checkpoint_lib.Checkpointer(str(tmp_path), keep=3) as ckpt:
    with caplog.at_level("WARNING"):
      state, meta = ckpt.restore_latest(_abstract())
    assert meta["epoch"] == 1 and int(state["step"]) == 1
    assert any("unreadable" in r.getMessage() for r in caplog.records)
    # The damaged epoch (and the best checkpoint newer than the resume point) moved
    # aside, so epoch 2 can be saved again.
    assert ckpt.latest.all_steps() == [1] and ckpt.best.all_steps() == []
    assert (tmp_path / "checkpoints" / "corrupt" / "latest" / "2").is_dir()
    ckpt.save(2, _state(2.0), {"epoch": 2}, best=True)


def test_all_checkpoints_unreadable_is_an_error(tmp_path):
  with checkpoint_lib.Checkpointer(str(tmp_path)) as ckpt:
    ckpt.save(1, _state(1.0), {"epoch": 1}, best=False)
  for path in (tmp_path / "checkpoints" / "latest" / "1" / "state").rglob("*"):
    if path.is_file():
      path.unlink()
  with checkpoint_lib.Checkpointer(str(tmp_path)) as ckpt:
    with pytest.raises(checkpoint_lib.CheckpointError, match="could be read"):
      ckpt.restore_latest(_abstract())


def test_fingerprint_ignores_resumable_fields_only():
  a = config_lib.preset("debug")
  fp = fingerprint_lib.fingerprint(a, "key1")
  b = config_lib.preset("debug")
  b.name = "other"
  b.train.num_epochs = 99
  b.train.progress_bar = True
  b.monitor.target_gap = 0.5
  assert fingerprint_lib.fingerprint(b, "key1") == fp
  b.train.learning_rate = 0.5
  b.model.num_heads = 8
  diff = fingerprint_lib.fingerprint_diff(fp, fingerprint_lib.fingerprint(b, "key2"))
  assert diff == ["data.cache_key: 'key1' -> 'key2'", "model.num_heads: 4 -> 8",
                  "train.learning_rate: 0.001 -> 0.5"]
  with pytest.raises(ConfigError, match=r"(?s)3 field.*model.num_heads.*--workdir"):
    fingerprint_lib.check_compatible(fp, fingerprint_lib.fingerprint(b, "key2"), "/w", "x")
  # A fingerprint read back from JSON compares equal (tuples become lists).
  assert fingerprint_lib.fingerprint_diff(json.loads(json.dumps(fp)), fp) == []


def test_config_file_is_written_on_a_fresh_start_only(tmp_path):
  config = config_lib.preset("debug")
  fp = fingerprint_lib.fingerprint(config, "k")
  assert fingerprint_lib.write_config_file(str(tmp_path), config, fp)
  config.model.width = 64
  assert not fingerprint_lib.write_config_file(
      str(tmp_path), config, fingerprint_lib.fingerprint(config, "k"))
  stored = fingerprint_lib.read_config_file(str(tmp_path))
  assert stored["fingerprint"] == fp and stored["config"]["model"]["width"] == 32
  assert not [f for f in os.listdir(tmp_path) if ".tmp" in f]


def test_fields_added_later_match_older_fingerprints_at_their_old_value():
  """A run stored before ``model.input_dropout`` existed resumes with it at 0, not at 0.2."""
  config = config_lib.preset("debug")
  config.update_from_flattened_dict({   # the behaviour of the code before the fields existed
      k: tuple(v) if isinstance(v, list) else v for k, v in fingerprint_lib.ADDED_FIELDS.items()})
  current = fingerprint_lib.fingerprint(config, "k")
  older = {k: v for k, v in current.items() if k not in fingerprint_lib.ADDED_FIELDS}
  assert "model.input_dropout" not in older
  assert fingerprint_lib.fingerprint_diff(older, current) == []
  config.model.input_dropout = 0.2
  assert fingerprint_lib.fingerprint_diff(older, fingerprint_lib.fingerprint(config, "k")) == [
      "model.input_dropout: 0.0 -> 0.2"]
