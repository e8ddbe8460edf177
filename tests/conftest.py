"""Test-wide settings: strict rank promotion, a private dataset cache, CPU only."""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
  """Keeps tests away from the user's dataset cache (and from each other's runs)."""
  old = os.environ.get("CARDIAC_JAX_CACHE")
  os.environ["CARDIAC_JAX_CACHE"] = str(tmp_path_factory.mktemp("cache"))
  yield
  if old is None:
    os.environ.pop("CARDIAC_JAX_CACHE", None)
  else:
    os.environ["CARDIAC_JAX_CACHE"] = old
