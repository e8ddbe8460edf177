"""Test-wide settings: strict rank promotion, a private dataset cache, CPU only; fakes."""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")

# The modules that take longest (measured on 2 cores, two workers), longest first.
# setup.cfg runs the suite on two pytest-xdist workers, one file at a time each, in
# collection order (--dist loadfile --no-loadscope-reorder): starting these first keeps
# one long file from running alone at the end. Only the order of files changes; a
# file's own tests keep theirs. A module not listed runs after them, in the usual order.
LONGEST_FIRST = ("test_parallel.py", "test_experiments.py", "test_members.py", "test_train.py",
                 "test_ceiling.py", "test_fate.py", "test_predict.py", "test_seed_benchmark.py",
                 "test_notebooks.py", "test_main.py", "test_regions.py", "test_clonal.py",
                 "test_models.py", "test_cospar_peer.py")


def pytest_collection_modifyitems(items):
  """Puts the files of ``LONGEST_FIRST`` first (a stable sort: nothing else moves)."""
  rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


# Programs that compile at least this long are kept in the session's persistent
# compilation cache (the package keeps those of 0.5 s; the tests compile the same small
# programs again in many runs).
MIN_CACHED_COMPILE_SECONDS = 0.1


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
  """Keeps tests away from the user's dataset cache (and from each other's runs).

  The compiled programs of this session's own processes go to one persistent
  compilation cache of the session, shared by its xdist workers (their base temp
  folders' parent), so that a program compiled by one worker is not compiled again
  by the other; ``compile_cache.enable`` keeps a directory already chosen. Processes
  the tests start (CLI runs, ``test_parallel``) still use ``$CARDIAC_JAX_CACHE/jax``.
  """
  old = os.environ.get("CARDIAC_JAX_CACHE")
  os.environ["CARDIAC_JAX_CACHE"] = str(tmp_path_factory.mktemp("cache"))
  root = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):
    root = root.parent
  old_jax = (jax.config.jax_compilation_cache_dir,
             jax.config.jax_persistent_cache_min_compile_time_secs)
  jax.config.update("jax_compilation_cache_dir", str(root / "jax_compilation_cache"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_CACHED_COMPILE_SECONDS)
  yield
  jax.config.update("jax_compilation_cache_dir", old_jax[0])
  jax.config.update("jax_persistent_cache_min_compile_time_secs", old_jax[1])
  if old is None:
    os.environ.pop("CARDIAC_JAX_CACHE", None)
  else:
    os.environ["CARDIAC_JAX_CACHE"] = old


class FakeBar:
  """Records what the code tells its progress bar (``cardiac_jax.progress.bar``)."""

  def __init__(self, total, **kwargs):
    self.total, self.kwargs, self.n, self.stages, self.closed = total, kwargs, 0, [], False

  def set_postfix_str(self, text):
    self.stages.append(text)

  def update(self, k):
    self.n += k

  def close(self):
    self.closed = True


@pytest.fixture(name="progress_bars")
def _progress_bars(monkeypatch):
  """Every progress bar made during the test, as a FakeBar, in order."""
  from cardiac_jax import progress  # pylint: disable=g-import-not-at-top
  bars = []

  def fake_bar(total, **kwargs):
    bars.append(FakeBar(total, **kwargs))
    return bars[-1]

  monkeypatch.setattr(progress, "bar", fake_bar)
  return bars
