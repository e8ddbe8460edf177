"""The training side of the data: device arrays, batch orders, eval chunks.

The whole ``SequenceDataset`` fits on the device, so there is no streaming
pipeline: the host computes row indices (a class-stratified order per epoch,
fixed-size padded chunks for evaluation) and the jitted functions gather the
rows on device (``gather``).
"""
from __future__ import annotations

import hashlib
import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from cardiac_jax import parallel
from cardiac_jax import schedules as schedules_lib


def load_dataset(config: ml_collections.ConfigDict) -> Any:
  """The (cached) ``SequenceDataset`` of ``config.data``."""
  # Imported here: the data layer pulls in scanpy-sized dependencies that a
  # run given an in-memory dataset never needs.
  from cardiac_jax.data import dataset as dataset_lib  # pylint: disable=g-import-not-at-top
  return dataset_lib.build_dataset(config.data)


def data_key(ds: Any) -> str:
  """The dataset's cache key, or a content hash for datasets built in memory."""
  key = (getattr(ds, "meta", None) or {}).get("cache_key")
  if key:
    return str(key)
  h = hashlib.sha1()
  for a in (ds.x, ds.y, ds.mask, ds.split):
    h.update(np.ascontiguousarray(a).tobytes())
  return "sha1:" + h.hexdigest()


def device_arrays(x: np.ndarray, y: np.ndarray, mask: np.ndarray,
                  targets: np.ndarray | None = None) -> dict[str, jax.Array]:
  """The model's inputs and labels as float32/int32 arrays on every device.

  ``targets``: optional (N, C) soft labels (``SequenceDataset.targets``); the
  steps then train on them instead of the one-hot of ``y``.
  """
  arrays = {"x": np.asarray(x, np.float32), "y": np.asarray(y, np.int32),
            "mask": np.asarray(mask, np.float32)}
  if targets is not None:
    arrays["targets"] = np.asarray(targets, np.float32)
  return parallel.place(arrays)


def gather(data: dict[str, jax.Array], idx: jax.Array) -> dict[str, jax.Array]:
  """Rows ``idx`` of every device-resident array (inside jit: a batch)."""
  return {k: jnp.take(v, idx, axis=0) for k, v in data.items()}


def stratified_order(labels: np.ndarray, batch_size: int, seed: int,
                     epoch: int) -> np.ndarray:
  """(steps, batch_size) positions into ``labels``: shuffled, classes in proportion.

  Each class is shuffled and its members spread evenly over [0, 1) (member k
  of n_c at (k + u_c) / n_c, u_c a random phase); sorting all members by that
  key interleaves the classes so any run of ``batch_size`` consecutive
  positions holds each class within about one of its share. The remainder is
  dropped (``schedules.steps_per_epoch``); the random phase and shuffle make a
  different remainder every epoch. Deterministic from (seed, epoch).
  """
  labels = np.asarray(labels)
  rng = np.random.default_rng([int(seed), int(epoch)])
  keys = np.empty(len(labels), np.float64)
  for c in np.unique(labels):
    members = np.flatnonzero(labels == c)
    members = members[rng.permutation(len(members))]
    keys[members] = (np.arange(len(members)) + rng.random()) / len(members)
  order = np.lexsort((rng.random(len(labels)), keys))
  steps = schedules_lib.steps_per_epoch(len(labels), batch_size)
  return order[:steps * batch_size].reshape(steps, batch_size)


def eval_chunks(positions: np.ndarray, chunk_size: int) -> list[tuple[jax.Array, jax.Array]]:
  """Fixed-size (rows, weights) chunks covering ``positions`` exactly once.

  The last chunk is padded with row ``positions[0]`` at weight 0, so every
  chunk has one shape (one compilation) and padding never counts. The chunk
  size is rounded up to a multiple of the device count (chunks are split
  over the data-parallel mesh).
  """
  chunk_size = parallel.round_up(chunk_size)
  positions = np.asarray(positions, np.int32)
  n = len(positions)
  n_chunks = max(1, math.ceil(n / chunk_size))
  idx = np.full(n_chunks * chunk_size, positions[0] if n else 0, np.int32)
  idx[:n] = positions
  weight = np.zeros(n_chunks * chunk_size, np.float32)
  weight[:n] = 1.0
  return [parallel.place_batches((idx[i * chunk_size:(i + 1) * chunk_size],
                                  weight[i * chunk_size:(i + 1) * chunk_size]))
          for i in range(n_chunks)]


def chunk_size(config: ml_collections.ConfigDict, n: int) -> int:
  """Eval chunk size for ``n`` sequences: ``train.eval_batch_size``, at most ``n``."""
  return max(1, min(int(config.train.eval_batch_size), n))
