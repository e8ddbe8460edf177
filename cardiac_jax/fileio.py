"""Atomic file writes: the one place for "temp file, then ``os.replace``".

Reports, study tables, plots, configs, caches and fitted preprocessors are read
by notebooks and resumed runs while other processes may still be writing them;
writing to a temporary name in the same folder and renaming it over the target
means a reader sees the old file or the new one, never half of one. A failed
write leaves no temporary behind. In a multi-process run every process computes
the same results and only the first one writes (``is_primary``).
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import pathlib
import sys
import uuid
from typing import Any, Callable, Iterator

PathLike = str | os.PathLike


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[pathlib.Path]:
  """Yields a temp path next to ``path``; renames it over ``path`` if the block succeeds.

  The parent folder is created if needed. On an exception the temp file is
  removed and ``path`` is left as it was.
  """
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
  try:
    yield tmp
    os.replace(tmp, path)
  finally:
    tmp.unlink(missing_ok=True)


def is_primary() -> bool:
  """False on every process but the first of a ``jax.distributed`` run.

  The processes hold identical (replicated) results, so one writer is enough,
  and it keeps appended files such as ``metrics.jsonl`` free of duplicates.
  jax is not imported here: a process that never imported it is primary.
  """
  jax = sys.modules.get("jax")
  if jax is None or not jax.distributed.is_initialized():
    return True
  return jax.process_index() == 0


def atomic_write_bytes(path: PathLike, data: bytes) -> pathlib.Path:
  """Writes ``data`` to ``path`` atomically (only on the primary process); returns the path."""
  if not is_primary():
    return pathlib.Path(path)
  with atomic_path(path) as tmp:
    tmp.write_bytes(data)
  return pathlib.Path(path)


def atomic_write_text(path: PathLike, text: str) -> pathlib.Path:
  """Writes ``text`` (UTF-8) to ``path`` atomically; returns the path."""
  return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: PathLike, obj: Any,
                      default: Callable[[Any], Any] | None = None) -> pathlib.Path:
  """Writes ``obj`` as indented, key-sorted JSON atomically; returns the path."""
  return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=default))


def save_figure(fig: Any, path: PathLike, dpi: int = 110) -> pathlib.Path:
  """Writes a matplotlib figure as PNG atomically; closes it if pyplot manages it.

  Works for pyplot figures and for bare ``Figure`` objects alike; pyplot is
  never imported here (so the global backend is left alone), but a figure it
  created is closed so that loops of plots do not accumulate open figures.
  """
  buf = io.BytesIO()
  # A figure with a layout engine already fits its canvas: a tight bbox would lay it
  # out and draw it twice (~0.2 s of a run's three report plots).
  tight = None if fig.get_layout_engine() is not None else "tight"
  fig.savefig(buf, format="png", dpi=dpi, bbox_inches=tight)
  pyplot = sys.modules.get("matplotlib.pyplot")
  if pyplot is not None:
    pyplot.close(fig)     # a no-op for figures pyplot does not manage
  return atomic_write_bytes(path, buf.getvalue())


def atomic_write_h5ad(adata: Any, path: PathLike) -> pathlib.Path:
  """Writes an AnnData as ``.h5ad`` atomically (a reader never sees half a file)."""
  path = pathlib.Path(path)
  with atomic_path(path) as tmp:
    adata.write_h5ad(tmp)
  return path
