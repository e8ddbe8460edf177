"""JAX's persistent compilation cache, on by default for the package's entry points.

Every process (a training run, a resume, each ``predict``) otherwise compiles the
same programs again: a debug run spends most of its wall compiling. JAX keys a
compiled program by its HLO, the backend and the flags, so a cached one is only
reused where it is exactly the same program (docs/performance.md measures it).
"""
from __future__ import annotations

import os
import pathlib

from absl import logging
import jax

# Programs that compile faster than this are not worth a file (JAX's default is 1 s,
# which skips most of the package's programs on a GPU and the small ones on a CPU).
MIN_COMPILE_SECONDS = 0.5
ENV_DISABLE = "CARDIAC_JAX_NO_COMPILE_CACHE"


def default_dir() -> pathlib.Path:
  """$CARDIAC_JAX_CACHE/jax, else ~/.cache/cardiac_jax/jax (beside the dataset cache)."""
  root = os.environ.get("CARDIAC_JAX_CACHE", "") or "~/.cache/cardiac_jax"
  return pathlib.Path(root).expanduser() / "jax"


def enable(path: str | os.PathLike | None = None) -> str | None:
  """Points JAX's persistent compilation cache at ``path`` (default ``default_dir()``).

  A directory the user already chose (``JAX_COMPILATION_CACHE_DIR`` or
  ``jax.config``) wins; ``CARDIAC_JAX_NO_COMPILE_CACHE=1`` turns it off. An
  unwritable directory only costs the speed-up, never the run.

  Returns:
    The cache directory in use, or None when off.
  """
  if os.environ.get(ENV_DISABLE, "") not in ("", "0"):
    return None
  current = jax.config.jax_compilation_cache_dir
  if current and path is None:
    return str(current)
  target = pathlib.Path(path) if path is not None else default_dir()
  try:
    target.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    logging.warning("compilation cache off: cannot create %s (%s); set "
                    "$CARDIAC_JAX_CACHE to a writable directory to reuse compiled programs.",
                    target, e)
    return None
  jax.config.update("jax_compilation_cache_dir", str(target))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
  return str(target)
