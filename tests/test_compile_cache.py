"""The persistent compilation cache: on by default, the user's choice wins, off on request."""
import jax
import pytest

from cardiac_jax import compile_cache


@pytest.fixture(name="no_dir")
def _no_dir():
  old = (jax.config.jax_compilation_cache_dir,
         jax.config.jax_persistent_cache_min_compile_time_secs)
  jax.config.update("jax_compilation_cache_dir", None)
  yield
  jax.config.update("jax_compilation_cache_dir", old[0])
  jax.config.update("jax_persistent_cache_min_compile_time_secs", old[1])


def test_default_dir_sits_beside_the_dataset_cache(no_dir, tmp_path, monkeypatch):
  monkeypatch.setenv("CARDIAC_JAX_CACHE", str(tmp_path))
  monkeypatch.delenv(compile_cache.ENV_DISABLE, raising=False)
  assert compile_cache.enable() == str(tmp_path / "jax")
  assert jax.config.jax_compilation_cache_dir == str(tmp_path / "jax")
  assert (tmp_path / "jax").is_dir()


def test_a_directory_already_chosen_wins(no_dir, tmp_path, monkeypatch):
  monkeypatch.setenv("CARDIAC_JAX_CACHE", str(tmp_path / "ours"))
  monkeypatch.delenv(compile_cache.ENV_DISABLE, raising=False)
  jax.config.update("jax_compilation_cache_dir", str(tmp_path / "theirs"))
  assert compile_cache.enable() == str(tmp_path / "theirs")
  assert not (tmp_path / "ours").exists()


def test_switched_off_and_unwritable_cost_only_the_speed(no_dir, tmp_path, monkeypatch):
  monkeypatch.setenv(compile_cache.ENV_DISABLE, "1")
  assert compile_cache.enable(tmp_path / "x") is None and not (tmp_path / "x").exists()
  monkeypatch.delenv(compile_cache.ENV_DISABLE)
  blocker = tmp_path / "file"
  blocker.write_text("")
  assert compile_cache.enable(blocker / "jax") is None
  assert jax.config.jax_compilation_cache_dir is None
