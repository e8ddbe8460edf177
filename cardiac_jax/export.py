"""The portable model: ``<workdir>/model/``, loadable without the training data or cache.

A run's checkpoints need the dataset (its shapes and fingerprint) to restore,
and the fitted preprocessor lives in the dataset cache; neither travels to a
collaborator's machine. ``export_model`` writes everything prediction needs
into one folder:

  model/variables.npz     params and batch_stats (the CHOSEN branch gate), flat
                          "/"-joined keys, no pickle
  model/preprocessor.npz  the training-fitted genes, scaling and PCA axes
  model/model.json        resolved config, class names, time labels (ordered),
                          feature layout, walk settings, provenance, content hash

``load_model`` reads it back into a ``Model`` with a jitted, chunked
``predict_sequences``. The training data's identity (cache key, path, size,
mtime) is recorded as information only, never checked. Weights are stored as
checkpoints store them (``members.to_storage``: no member axis for one model).

  cardiac-jax export --workdir=runs/scale1   # older workdirs (inference.export_workdir)
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import hashlib
import io
import json
import os
import pathlib
import shutil
import time
import uuid
from typing import Any

from absl import logging
from flax import traverse_util
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from cardiac_jax import compile_cache
from cardiac_jax import fileio
from cardiac_jax import members as members_lib
from cardiac_jax import models
from cardiac_jax import optim
from cardiac_jax.data.errors import DataError

# cardiac_jax.data.preprocess (anndata, scipy, sklearn) is imported where used, so
# that importing ``train`` (which hooks the export in) stays light.

MODEL_DIR = "model"
MODEL_JSON = "model.json"
VARIABLES_FILE = "variables.npz"
PREPROCESSOR_FILE = "preprocessor.npz"
FORMAT_VERSION = 1
# Sequences per jitted call of ``predict_sequences`` (one compilation; padded) when
# the model's config has no train.eval_batch_size.
PREDICT_CHUNK = 1024
# Chunks in flight at once: one small chunk leaves a CPU core idle inside XLA, and JAX
# releases the GIL while it runs (2 threads: 1.27x the walks/s of one, 2-core CPU).
PREDICT_THREADS = 2


# ---------------------------------------------------------------- export


def _flat_variables(state: Any) -> dict[str, np.ndarray]:
  variables = members_lib.to_storage(
      {"params": optim.eval_params(state.params, state.opt_state),
       "batch_stats": state.batch_stats})
  flat = traverse_util.flatten_dict(jax.device_get(variables), sep="/")
  return {k: np.asarray(v) for k, v in flat.items()}


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
  buffer = io.BytesIO()
  np.savez(buffer, **arrays)
  return buffer.getvalue()


def _content_hash(files: dict[str, bytes], info: dict[str, Any]) -> str:
  """sha256 over the weight and preprocessor bytes and the JSON, provenance and hash
  excluded: the same model exported twice (or from another folder) hashes the same."""
  info = {k: v for k, v in info.items() if k not in ("hash", "provenance")}
  h = hashlib.sha256()
  for name in sorted(files):
    h.update(name.encode())
    h.update(hashlib.sha256(files[name]).digest())
  h.update(json.dumps(info, sort_keys=True, default=str).encode())
  return h.hexdigest()


def _data_stamp(data_cfg: Any) -> dict[str, Any]:
  """Where the training data came from: information for provenance, never a gate."""
  if data_cfg.source != "h5ad":
    return {"source": str(data_cfg.source), "simulator": data_cfg.simulator.to_dict()}
  stamp: dict[str, Any] = {"source": "h5ad", "path": os.path.abspath(data_cfg.path)}
  try:
    st = os.stat(data_cfg.path)
    stamp.update(size=st.st_size, mtime=time.strftime("%Y-%m-%dT%H:%M:%S",
                                                      time.localtime(st.st_mtime)))
  except OSError:
    stamp["missing"] = True
  return stamp


def preprocessor_path(data_cfg: Any) -> pathlib.Path:
  """The cached preprocessor of ``config.data`` (next to the cached dataset)."""
  from cardiac_jax.data import dataset as dataset_lib  # pylint: disable=g-import-not-at-top
  return dataset_lib.cache_paths(data_cfg)[1]


def export_model(run: Any, state: Any, workdir: str | os.PathLike, *,
                 preprocessor: "preprocess.Preprocessor | None" = None) -> pathlib.Path:
  """Writes ``<workdir>/model/`` from a run and its best, gated state; returns the folder.

  Args:
    run: the ``train.Run`` (config, dataset meta, class names).
    state: the best checkpoint's state with the branch gate chosen on validation
      (``evaluation.select_branch_gate``), so predictions match the report.
    workdir: the run directory.
    preprocessor: the fitted preprocessor; read from the dataset cache when None.

  Raises:
    DataError: the cached preprocessor cannot be found (the message says how to
      rebuild it).

  The folder is written under a temporary name and renamed into place, so a
  reader sees the previous export or the new one, never half of one.
  """
  from cardiac_jax.data import preprocess  # pylint: disable=g-import-not-at-top
  if not fileio.is_primary():   # process 0 of a multi-process run writes it
    return pathlib.Path(workdir) / MODEL_DIR
  config, meta = run.config, dict(getattr(run.dataset, "meta", {}) or {})
  if preprocessor is None:
    path = preprocessor_path(config.data)
    if not path.is_file():
      raise DataError(
          f"no fitted preprocessor for this run at {path} (the dataset cache); rebuild it "
          f"with the run's config and the same CARDIAC_JAX_CACHE / config.data.cache_dir, e.g. "
          f"python -m cardiac_jax.main --config=<the run's config> --workdir={workdir} "
          "--mode=report (which rebuilds the dataset and re-exports), then export again.")
    preprocessor = preprocess.Preprocessor.load(path)
  time_labels = [str(t) for t in meta.get("time_labels", ())]
  if not time_labels:
    raise DataError("the run's dataset records no time labels (an in-memory dataset?); "
                    "export needs a dataset built by cardiac_jax.data.dataset.build_dataset.")
  n_pcs = int(preprocessor.n_pcs)
  if run.dataset.num_features != n_pcs + 2:
    raise DataError(f"the dataset has {run.dataset.num_features} features but the "
                    f"preprocessor gives {n_pcs} PCs (+2); the cached preprocessor belongs to "
                    "another dataset - delete the cache entry and rebuild.")
  flat = _flat_variables(state)
  gate = flat.get("batch_stats/branch_gate")
  files = {VARIABLES_FILE: _npz_bytes(flat)}
  buffer = io.BytesIO()
  preprocessor.save_to(buffer)
  files[PREPROCESSOR_FILE] = buffer.getvalue()
  info = {
      "format_version": FORMAT_VERSION,
      "config": json.loads(config.to_json_best_effort()),
      "class_names": [str(c) for c in run.dataset.class_names],
      "time_labels": time_labels,
      "n_pcs": n_pcs,
      "length": int(run.dataset.length),
      "num_features": int(run.dataset.num_features),
      "feature_layout": {"pcs": [0, n_pcs], "time": n_pcs, "modality": n_pcs + 1,
                         "time_feature": "time index / (len(time_labels) - 1)",
                         "modality_values": {"single_cell": 0, "spatial": 1}},
      "walks": {"k_neighbors": int(config.data.sequences.k_neighbors),
                "observed_fraction": float(config.data.sequences.observed_fraction),
                **({"train_cells_per_day": int(meta["train_cells_per_day"])}
                   if meta.get("train_cells_per_day") else {})},
      "branch_gate": None if gate is None else np.asarray(gate, np.float64).tolist(),
      "num_members": members_lib.num_members(config),
      "n_genes": int(len(preprocessor.gene_names)),
      "task": str(meta.get("task", "snapshot")),
      # A fate model (configs/fate.py): which populations get a fate, and from what.
      **({"fate": meta["fate"]} if meta.get("fate") else {}),
      # A unit task (clones, regions): what its predictor needs to rebuild sequences.
      **({"task_info": meta["task_info"]} if meta.get("task_info") else {}),
      "provenance": {"data_cache_key": str(meta.get("cache_key", "")),
                     "data": _data_stamp(config.data),
                     "workdir": os.path.abspath(workdir),
                     "exported": time.strftime("%Y-%m-%dT%H:%M:%S")},
  }
  info["hash"] = _content_hash(files, info)
  target = pathlib.Path(workdir) / MODEL_DIR
  tmp = target.with_name(f".{MODEL_DIR}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
  old = target.with_name(f".{MODEL_DIR}.{os.getpid()}.{uuid.uuid4().hex[:8]}.old")
  try:
    tmp.mkdir(parents=True)
    for name, data in files.items():
      (tmp / name).write_bytes(data)
    (tmp / MODEL_JSON).write_text(json.dumps(info, indent=2, sort_keys=True, default=str))
    if target.exists():
      os.replace(target, old)
    os.replace(tmp, target)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)
  logging.info("exported the model (hash %s...) to %s", info["hash"][:12], target)
  return target


def export_if_possible(run: Any, state: Any, workdir: str | os.PathLike) -> pathlib.Path | None:
  """``export_model`` for the end of a run: an in-memory dataset (no cache, no
  preprocessor) gets a log line instead of an error, so training never fails here."""
  try:
    return export_model(run, state, workdir)
  except DataError as e:
    logging.warning("model not exported: %s", e)
    return None


# ---------------------------------------------------------------- load


@functools.partial(jax.jit, static_argnames=("module", "num_members"))
def probabilities(variables: Any, x: jax.Array, mask: jax.Array, *, module: Any,
                  num_members: int) -> jax.Array:
  """Eval-mode probabilities of the members' ensemble (the mean of their probabilities);
  ``variables`` as stored (``members.to_storage``)."""
  def one(v, x, mask):
    return jax.nn.softmax(module.apply(v, x, mask, train=False).astype(jnp.float32), axis=-1)
  per_member = members_lib.over_members(one, num_members, "vmap", (0, None, None))
  return jnp.mean(per_member(members_lib.from_storage(variables, num_members), x, mask), axis=0)


@dataclasses.dataclass
class Model:
  """A loaded portable model (``load_model``)."""
  path: pathlib.Path
  config: ml_collections.ConfigDict
  class_names: tuple[str, ...]
  time_labels: tuple[str, ...]
  preprocessor: Any               # cardiac_jax.data.preprocess.Preprocessor
  variables: dict[str, Any]       # as stored: the member axis only for K > 1
  model: Any                      # the Flax module
  info: dict[str, Any]

  @property
  def hash(self) -> str:
    return str(self.info["hash"])

  @property
  def length(self) -> int:
    return int(self.info["length"])

  @property
  def num_members(self) -> int:
    """Models whose probabilities are averaged (train.num_members of the run)."""
    return int(self.info.get("num_members", 1))

  @property
  def k_neighbors(self) -> int:
    return int(self.info["walks"]["k_neighbors"])

  @property
  def predict_chunk(self) -> int:
    """Sequences per jitted call: the run's ``train.eval_batch_size``, as its evaluation.

    64 by default: on a 2-core CPU 2.3x the throughput of 1024-sequence chunks with
    a sixteenth of XLA's temporary memory (scale3 model, length 80).
    """
    return int(self.config.get("train", {}).get("eval_batch_size", None) or PREDICT_CHUNK)

  def predict_sequences(self, x: np.ndarray, mask: np.ndarray, *,
                        chunk: int | None = None) -> np.ndarray:
    """Class probabilities (N, C) in eval mode, in fixed-size padded chunks (one compile).

    ``chunk`` None = ``predict_chunk``.
    """
    chunk = self.predict_chunk if chunk is None else chunk
    x, mask = np.asarray(x, np.float32), np.asarray(mask, np.float32)
    expected = (self.length, int(self.info["num_features"]))
    if x.ndim != 3 or x.shape[1:] != expected or mask.shape != x.shape[:2]:
      raise DataError(f"sequences must be (N, {expected[0]}, {expected[1]}) with a (N, "
                      f"{expected[0]}) mask, got {x.shape} and {mask.shape}")
    n = x.shape[0]
    size = max(1, min(chunk, n))
    out = np.empty((n, len(self.class_names)), np.float32)

    def run(start: int) -> None:
      xs, ms = x[start:start + size], mask[start:start + size]
      pad = size - xs.shape[0]
      if pad:
        xs = np.concatenate([xs, np.zeros((pad,) + xs.shape[1:], np.float32)])
        ms = np.concatenate([ms, np.ones((pad,) + ms.shape[1:], np.float32)])
      p = probabilities(self.variables, xs, ms, module=self.model,
                        num_members=self.num_members)
      out[start:start + size - pad] = np.asarray(p)[:size - pad]

    starts = range(0, n, size)
    if len(starts) == 1 or PREDICT_THREADS == 1:
      for start in starts:
        run(start)
    else:   # chunks are independent: the same numbers in any order
      with concurrent.futures.ThreadPoolExecutor(PREDICT_THREADS) as pool:
        list(pool.map(run, starts))
    return out


def _model_dir(path: str | os.PathLike) -> pathlib.Path:
  path = pathlib.Path(path).expanduser()
  if (path / MODEL_DIR / MODEL_JSON).is_file() and not (path / MODEL_JSON).is_file():
    path = path / MODEL_DIR          # a workdir was given
  if not (path / MODEL_JSON).is_file():
    raise DataError(f"no exported model at {path} ({MODEL_JSON} missing); pass the "
                    f"<workdir>/{MODEL_DIR} folder of a finished run, or export an older "
                    "workdir with: cardiac-jax export --workdir=<workdir>")
  return path


def load_model(path: str | os.PathLike) -> Model:
  """Loads ``<workdir>/model`` (or the workdir) without the training data or the cache."""
  from cardiac_jax.data import preprocess  # pylint: disable=g-import-not-at-top
  compile_cache.enable()
  path = _model_dir(path)
  try:
    info = json.loads((path / MODEL_JSON).read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise DataError(f"{path / MODEL_JSON} is not readable JSON ({e}); the model folder is "
                    "damaged: copy the whole folder again, or re-export the run with "
                    "cardiac-jax export --workdir=<workdir>") from e
  if not isinstance(info, dict):
    raise DataError(f"{path / MODEL_JSON} holds no model description; copy the whole folder "
                    "again, or re-export the run with cardiac-jax export --workdir=<workdir>")
  absent = [name for name in (VARIABLES_FILE, PREPROCESSOR_FILE) if not (path / name).is_file()]
  if absent:
    raise DataError(f"the model folder {path} lacks {', '.join(absent)}; copy the whole folder "
                    "again, or re-export the run with cardiac-jax export --workdir=<workdir>")
  if int(info.get("format_version", -1)) != FORMAT_VERSION:
    raise DataError(f"{path} has model format {info.get('format_version')}, this code reads "
                    f"{FORMAT_VERSION}; re-export it with this version of cardiac_jax")
  files = {name: (path / name).read_bytes() for name in (VARIABLES_FILE, PREPROCESSOR_FILE)}
  stored = info.pop("hash", None)
  if stored != _content_hash(files, info):
    raise DataError(f"{path}: the files do not match the hash in {MODEL_JSON} (edited or "
                    "partly copied); copy the whole folder again or re-export it")
  info["hash"] = stored
  with np.load(io.BytesIO(files[VARIABLES_FILE]), allow_pickle=False) as z:
    flat = {k: jnp.asarray(z[k]) for k in z.files}
  variables = traverse_util.unflatten_dict(flat, sep="/")
  config = ml_collections.ConfigDict(info["config"])
  module = models.model_from_config(config, len(info["class_names"]), int(info["length"]))
  pp = preprocess.Preprocessor.load(path / PREPROCESSOR_FILE)
  return Model(path=path.resolve(), config=config, class_names=tuple(info["class_names"]),
               time_labels=tuple(info["time_labels"]), preprocessor=pp,
               variables=variables, model=module, info=info)
