"""CoSpar (Wang et al. 2022) as a clonal-fate peer, run in its own pinned venv.

  from cardiac_jax.studies import cospar_peer
  cospar_peer.ensure_venv()                 # once: ~/.cache/cardiac_jax/venvs/cospar-0.5.0
  out = cospar_peer.run_cospar(
      "bed.h5ad", time_key="day", state_key="cell_type", early_days=("d2", "d4"),
      fate_day="d14", fate_classes=("fateA", "fateB"), held_out_clones=val_and_test_clones,
      workdir="runs/cospar")
  names, scores, n = cospar_peer.clone_scores(out["probs"], out["clone"])

Why a venv of its own: cospar 0.5.0 pins ``anndata < 0.11`` and breaks with the
current scanpy / scikit-learn / pynndescent, so it can never share the
project's environment; it is never a dependency of cardiac_jax. `ensure_venv`
builds the venv once from `REQUIREMENTS` (every package pinned, each pin with
its reason), in a temp folder renamed into place, so a failed or interrupted
build leaves nothing half-made; `run_cospar` runs ``cospar_worker.py`` (shipped
beside this module, imported by nothing) with that venv's python, in a
subprocess whose wall seconds and peak RSS (``os.wait4``) are CoSpar's own.

No leakage: the held-out (validation / test) clones' barcodes are removed from
``X_clone`` here, before anything is written for CoSpar (`mask_clones`); their
cells stay as unlabelled state data (CellRank sees them the same way). The map
is inferred from the training clones only; it reaches the held-out cells
through CoSpar's state-similarity smoothing, so every early cell gets a fate
probability. Per early cell: the fate map (``cs.tl.fate_map``, ``method="sum"``:
P(cell -> cells of each fate class on the fate day)) normalised over the fate
classes; cells the map does not reach get the uniform distribution and
``informative=False``. The clone-level reading, the mean over a clone's early
cells observed up to a day, is `clone_scores` (ours, pure numpy).

Methods (``method=``), both measured on the same beds and splits (below):
- ``"multitime"`` (the default, chosen): ``cs.tmap.
  infer_Tmap_from_multitime_clones(later_time_point=fate_day)``, CoSpar's
  method: coherent, sparse maps from each early day to the fate day, smoothed
  over a kNN similarity diffused over all the cells it is given.
- ``"clonal"``: ``cs.tmap.infer_Tmap_from_clonal_info_alone(method="naive")``:
  clonal co-occurrence only, no state similarity. Cheap (4 CPU s, 0.6 GB at
  8.7K cells), but a cell without a training barcode (every held-out early
  cell) gets no transition at all: it reached 0 % of the held-out cells, AUC
  0.5 on every bed. Rejected for scoring held-out clones; it is the cost floor.
  It always gets the map's days only: with another day present cospar 0.5.0
  indexes its day subset with the whole data's cell ids (IndexError).

Cost, and the settings that make it affordable. CoSpar's similarity diffusion
densifies an N x N matrix (``hf.matrix_row_or_column_thresholding`` calls
``toarray``), so memory and time grow with the square of the cells it gets:
peak ~ 0.6 GB + 3.9e-8 GB x N^2, CPU ~ 10 s + 1.2e-6 s x N^2 (fitted on the
runs below). Hence the levers, all in `run_cospar`:
- ``smooth_array=(5,)`` (`TMAP_PRESETS["multitime"]`) instead of CoSpar's
  (15, 10, 5): 3x less CPU, 0.3 GB less at 5K cells, AUC 0.622 vs 0.620.
- ``map_days_only=True`` (default): only the early days' and the fate day's
  cells (intermediate days are no part of the map): -15 % cells, AUC 0.614.
- ``fate_day_fraction``: a seeded fraction of the fate-day cells (early cells
  all kept); off by default. At 0.5: AUC +0.03 at 5K cells, -0.04 at 10K,
  i.e. within the noise of 170-370 held-out clones (about +-0.03).
Measured with ``experiments/cospar_cost.py --early_days=d2,d4`` on lineage test
beds (`lineage_testbed`, 1 / 3 / 6 / 12 founders, seed 0; fate day = the last
day), 40 % of the clones held out (stratified, seed 0), one 2-core machine
shared with six other jobs (load ~7, ``nice -n 10``: wall times are inflated,
CPU seconds less so), Python 3.11, the venv of `REQUIREMENTS`. AUC: held-out
clones, mean P(fateB) over each clone's d2/d4 cells vs the majority of its
fate-day cells; the per-cell logistic regression of
`lineage_testbed.holdout_auc` on the same split for reference (one cell /
pooled):

  bed cells | CoSpar settings                     | cells given | wall s | CPU s | peak GB | AUC   | logreg
  1,658     | CoSpar defaults, all cells          | 1,658       |   59   |   17  | 0.60    | 0.601 | 0.597 / 0.603
  1,658     | smooth (5,), map days               | 1,418       |   47   |   14  | 0.54    | 0.596 | 0.597 / 0.603
  5,087     | CoSpar defaults, all cells          | 5,087       |  230   |  107  | 2.00    | 0.620 | 0.590 / 0.592
  5,087     | smooth (5,), all cells              | 5,087       |   79   |   36  | 1.66    | 0.622 |
  5,087     | smooth (5,), map days               | 4,350       |   46   |   28  | 1.31    | 0.614 |
  5,087     | smooth (5,), map days, fate 0.5     | 2,837       |   40   |   21  | 0.89    | 0.645 |
  10,371    | CoSpar defaults, all cells          | 10,371      | stopped above 6.8 GB RSS (our limit)
  10,371    | smooth (5,), map days               | 8,745       |  122   |   96  | 3.59    | 0.669 | 0.649 / 0.659
  10,371    | smooth (5,), map days, fate 0.5     | 5,761       |   51   |   37  | 1.96    | 0.633 |
  20,628    | smooth (5,), map days, fate 0.25    | 8,247       |  119   |   83  | 3.35    | 0.662 | 0.685 / 0.696

What 20K cells cost: all 20K given to CoSpar with its defaults ~16 GB (the
12.5 GB seen at 17K fits the same curve; its defaults on 10.4K cells passed
6.8 GB and were stopped); map days only (17.7K) ~13 GB and
~6 CPU min with smooth (5,); with ``fate_day_fraction=0.25`` (8.2K given) it
ran in 2 min and 3.4 GB. Use ``fate_day_fraction`` to keep the cells given
under ~11K (5 GB).
"""
from __future__ import annotations

import hashlib
import json
import os
import pathlib
import platform
import shutil
import subprocess
import sys
import time
import uuid
from typing import Any, Sequence

from absl import logging
import numpy as np
import scipy.sparse as sp

from cardiac_jax.data.errors import DataError

VENV_NAME = "cospar-0.5.0"
WORKER = pathlib.Path(__file__).with_name("cospar_worker.py")
MARKER = "cardiac_jax_venv.json"

# (requirement, why). Everything is pinned, so the venv is the one measured.
REQUIREMENTS: tuple[tuple[str, str], ...] = (
    ("cospar==0.5.0", "the peer: the last release (its docs and API as cited here)"),
    ("anndata==0.10.9", "cospar 0.5.0 requires anndata >=0.10,<0.11; the last 0.10 release"),
    ("scanpy==1.10.4", "cospar 0.5.0 breaks with the current scanpy; 1.10.4 is the one it ran "
     "with before in this project"),
    ("scikit-learn==1.5.2", "ran with scanpy 1.10.4 / pynndescent 0.5.13 before; the current one "
     "breaks that stack"),
    ("pynndescent==0.5.13", "scanpy's approximate kNN on large data (sc.pp.neighbors); the "
     "version that ran"),
    ("scipy==1.14.1", "under scipy 1.16 pynndescent's graphs are csr_array, without the getnnz "
     "scanpy calls (experiments/fate_benchmark.py); 1.14.1 ran"),
    ("numpy==2.2.6", "ran with scipy 1.14.1 and numba 0.68.1"),
    ("pandas==2.3.3", "cospar requires pandas <3"),
    ("numba==0.68.1", "scanpy / pynndescent / umap compile with it; supports numpy 2.2"),
    ("llvmlite==0.50.0", "numba 0.68.1's backend"),
    ("umap-learn==0.5.7", "scanpy's neighbour connectivities (fuzzy simplicial set) use it"),
    ("h5py==3.16.0", "anndata's file backend"),
    ("matplotlib==3.11.2", "cospar imports it at import time (cospar requires <4)"),
    ("statsmodels==0.14.6", "cospar requires >=0.14.2,<0.15"),
    ("gseapy==1.3.1", "cospar requires <2 (imported, unused here)"),
    ("leidenalg==0.10.2", "cospar requires >=0.10.2,<0.11 (imported, unused here)"),
    ("igraph==0.11.9", "leidenalg 0.10.2's graph library"),
    ("fastcluster==1.3.0", "cospar requires <2 (imported, unused here)"),
    ("tqdm==4.70.1", "cospar requires <5"),
    # Transitive, pinned as pip resolved the above on 2026-12-04 (Python 3.11, x86_64).
    ("array-api-compat==1.16.0", "transitive (anndata)"),
    ("certifi==2026.10.19.post1", "transitive (requests)"),
    ("charset-normalizer==3.5.3", "transitive (requests)"),
    ("cloudpickle==3.1.3", "transitive"),
    ("contourpy==1.3.3", "transitive (matplotlib)"),
    ("cycler==0.12.1", "transitive (matplotlib)"),
    ("fonttools==4.68.0", "transitive (matplotlib)"),
    ("idna==3.20", "transitive (requests)"),
    ("joblib==1.6.0", "transitive (scikit-learn)"),
    ("kiwisolver==1.5.1", "transitive (matplotlib)"),
    ("legacy-api-wrap==1.5", "transitive (scanpy)"),
    ("natsort==8.4.0", "transitive (anndata, scanpy)"),
    ("networkx==3.6.1", "transitive (scanpy)"),
    ("packaging==26.4", "transitive"),
    ("patsy==1.0.3", "transitive (statsmodels)"),
    ("pillow==13.0.0", "transitive (matplotlib)"),
    ("pyparsing==3.3.3", "transitive (matplotlib)"),
    ("python-dateutil==4.0.0", "transitive (pandas)"),
    ("pytz==2026.6", "transitive (pandas)"),
    ("requests==2.34.2", "transitive (gseapy)"),
    ("seaborn==0.13.2", "transitive (scanpy)"),
    ("session-info==1.0.1", "transitive (scanpy)"),
    ("stdlib-list==0.12.0", "transitive (session-info)"),
    ("texttable==1.7.2", "transitive (igraph)"),
    ("threadpoolctl==3.8.0", "transitive (scikit-learn)"),
    ("tzdata==2026.6", "transitive (pandas)"),
    ("urllib3==2.8.0", "transitive (requests)"),
)

# Settings of the transition-map inference (cs.tmap.infer_Tmap_from_multitime_clones
# argument names; knn = CoSpar_KNN). "default" is CoSpar's own; "multitime" is the one
# run_cospar uses unless told otherwise: one smoothing depth of 5 instead of the annealed
# (15, 10, 5), a third of the CPU at the same held-out AUC (module docstring).
TMAP_PRESETS: dict[str, dict[str, Any]] = {
    "default": dict(smooth_array=(15, 10, 5), knn=20, sparsity_threshold=0.1,
                    intraclone_threshold=0.05, trunca_threshold=(0.001, 0.01), max_iter_N=5,
                    epsilon_converge=0.05),
    "multitime": dict(smooth_array=(5,), knn=20, sparsity_threshold=0.1,
                      intraclone_threshold=0.05, trunca_threshold=(0.001, 0.01), max_iter_N=5,
                      epsilon_converge=0.05),
}
PREPROCESS = dict(n_pcs=40, hvg=dict(normalized_counts_per_cell=10_000, min_counts=3,
                                     min_cells=3, min_gene_vscore_pctl=85))
METHODS = ("multitime", "clonal")


# ---------------------------------------------------------------- the venv


def requirements() -> list[str]:
  """The pinned requirement strings, in install order."""
  return [r for r, _ in REQUIREMENTS]


def requirements_hash() -> str:
  return hashlib.sha256("\n".join(requirements()).encode()).hexdigest()[:16]


def venv_root(root: str | os.PathLike | None = None) -> pathlib.Path:
  """``root``, else $CARDIAC_JAX_CACHE/venvs, else ~/.cache/cardiac_jax/venvs."""
  if root:
    return pathlib.Path(root).expanduser()
  cache = os.environ.get("CARDIAC_JAX_CACHE", "") or "~/.cache/cardiac_jax"
  return pathlib.Path(cache).expanduser() / "venvs"


def venv_path(root: str | os.PathLike | None = None) -> pathlib.Path:
  return venv_root(root) / VENV_NAME


def venv_python(venv: str | os.PathLike) -> pathlib.Path:
  return pathlib.Path(venv) / "bin" / "python"


def venv_ready(venv: str | os.PathLike) -> bool:
  """True when ``venv`` was built by `ensure_venv` from today's `REQUIREMENTS`."""
  marker = pathlib.Path(venv) / MARKER
  if not marker.is_file() or not venv_python(venv).exists():
    return False
  try:
    return json.loads(marker.read_text()).get("requirements_hash") == requirements_hash()
  except (OSError, ValueError):
    return False


def _run(cmd: Sequence[str], log: pathlib.Path, what: str) -> None:
  with open(log, "a") as f:
    f.write(f"$ {' '.join(map(str, cmd))}\n")
    f.flush()
    proc = subprocess.run([str(c) for c in cmd], stdout=f, stderr=subprocess.STDOUT,
                          check=False)
  if proc.returncode != 0:
    tail = "".join(log.read_text().splitlines(keepends=True)[-15:])
    raise DataError(f"{what} failed (exit {proc.returncode}); last lines of {log}:\n{tail}\n"
                    "fix the cause (network to PyPI, disk space) and call ensure_venv again")


def ensure_venv(root: str | os.PathLike | None = None) -> pathlib.Path:
  """The CoSpar venv (``<root>/cospar-0.5.0``), built once if absent; returns its path.

  The build goes to a temp folder beside the target, which is renamed into
  place only after every pin installed and ``import cospar`` worked, with a
  marker holding the requirements' hash; a failure removes the temp folder. A
  concurrent build that wins the rename is used as is. The venv's python is
  the one running this (its base interpreter); call it as ``bin/python`` (the
  console scripts in bin/ keep the temp folder's name).
  """
  target = venv_path(root)
  if venv_ready(target):
    return target
  if target.exists():
    raise DataError(f"{target} exists but was not built by ensure_venv from the current "
                    f"requirements (no {MARKER} with hash {requirements_hash()}); remove it "
                    f"(rm -r {target}) and call ensure_venv again")
  target.parent.mkdir(parents=True, exist_ok=True)
  tmp = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
  log = target.with_name(f".{target.name}.build.log")
  log.write_text("")
  started = time.perf_counter()
  logging.info("building the CoSpar venv in %s (%d pinned packages; a few minutes)", tmp,
               len(REQUIREMENTS))
  try:
    _run([sys.executable, "-m", "venv", tmp], log, "creating the venv")
    py = venv_python(tmp)
    _run([py, "-m", "pip", "install", "--no-input", "--disable-pip-version-check",
          *requirements()], log, "pip install of the CoSpar pins")
    _run([py, "-c", "import cospar, anndata, scanpy; assert cospar.__version__ == '0.5.0'"],
         log, "importing cospar in the new venv")
    (tmp / MARKER).write_text(json.dumps({
        "requirements_hash": requirements_hash(), "requirements": requirements(),
        "python": platform.python_version(), "built_s": round(time.perf_counter() - started),
    }, indent=1))
    try:
      os.rename(tmp, target)
    except OSError:
      if not venv_ready(target):
        raise
      logging.info("another process built %s first; using it", target)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  logging.info("CoSpar venv ready: %s (%.0f s)", target, time.perf_counter() - started)
  return target


# ---------------------------------------------------------------- pure pieces


def clone_names_of(adata: Any, clone_obsm: str) -> np.ndarray:
  """Names of the ``obsm[clone_obsm]`` columns: ``uns["clone_names"]``, else "0", "1", ..."""
  n = adata.obsm[clone_obsm].shape[1]
  names = adata.uns.get("clone_names")
  if names is None:
    return np.asarray([str(i) for i in range(n)])
  names = np.asarray(names).astype(str)
  if len(names) != n:
    raise DataError(f"uns['clone_names'] has {len(names)} names for {n} columns of "
                    f"obsm[{clone_obsm!r}]; write one name per column")
  return names


def mask_clones(x_clone: Any, clone_names: Sequence[str],
                held_out: Sequence[str]) -> tuple[sp.csr_matrix, np.ndarray]:
  """``x_clone`` without the held-out clones' columns (every other entry unchanged).

  Args:
    x_clone: (cells, clones) 0/1 matrix, dense or sparse.
    clone_names: the name of each column.
    held_out: names of the clones CoSpar must not see (validation and test).

  Returns:
    (CSR matrix of the kept columns, their names). Cells of held-out clones keep
    their rows, now empty unless they carry a training barcode too.
  """
  clone_names = np.asarray(clone_names).astype(str)
  held = np.asarray(list(held_out)).astype(str)
  unknown = sorted(set(held.tolist()) - set(clone_names.tolist()))
  if unknown:
    raise DataError(f"held-out clones {unknown[:5]}{' ...' if len(unknown) > 5 else ''} are "
                    "not columns of the clone matrix; pass names from uns['clone_names']")
  keep = ~np.isin(clone_names, held)
  return sp.csr_matrix(x_clone)[:, np.flatnonzero(keep)], clone_names[keep]


def clone_of_cells(x_clone: Any, clone_names: Sequence[str]) -> np.ndarray:
  """Each cell's clone name ("" without a barcode; the first column for several)."""
  csr = sp.csr_matrix(x_clone)
  csr.eliminate_zeros()
  names = np.asarray(clone_names).astype(str)
  out = np.full(csr.shape[0], "", dtype=object)
  has = np.diff(csr.indptr) > 0
  out[has] = names[csr.indices[csr.indptr[:-1][has]]]
  return out.astype(str)


def normalise_fate_values(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Fate-map values (n, K) -> probabilities over the K fates; uniform where all are 0."""
  values = np.nan_to_num(np.asarray(values, np.float64), nan=0.0).clip(min=0.0)
  total = values.sum(axis=1, keepdims=True)
  informative = total[:, 0] > 0
  probs = np.where(informative[:, None], values / np.where(total > 0, total, 1.0),
                   1.0 / values.shape[1])
  return probs.astype(np.float32), informative


def clone_scores(cell_probs: np.ndarray, clone_of_cell: Sequence[str], *,
                 cell_time: np.ndarray | None = None, up_to: float | None = None,
                 clones: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray,
                                                                np.ndarray]:
  """A clone's reading: the mean of its early cells' fate probabilities.

  Args:
    cell_probs: (n, K) per-cell probabilities.
    clone_of_cell: (n,) clone names ("" = no clone, ignored).
    cell_time: (n,) time index of each cell; with ``up_to``, only cells with
      ``cell_time <= up_to`` count (the clone observed up to that day).
    clones: the clones to report, in this order (NaN rows for clones without
      counted cells); default: every clone with a counted cell, sorted.

  Returns:
    (clone names, (n_clones, K) mean probabilities, (n_clones,) cells counted).
  """
  probs = np.asarray(cell_probs, np.float64)
  names = np.asarray(clone_of_cell).astype(str)
  if probs.ndim != 2 or len(names) != len(probs):
    raise DataError(f"cell_probs {probs.shape} and clone_of_cell ({len(names)},) must be "
                    "(n, K) and (n,) for the same cells")
  use = names != ""
  if up_to is not None:
    if cell_time is None:
      raise DataError("up_to needs cell_time (each cell's time index)")
    use &= np.asarray(cell_time) <= up_to
  present, inverse = np.unique(names[use], return_inverse=True)
  k = probs.shape[1]
  sums = np.zeros((len(present), k))
  np.add.at(sums, inverse, probs[use])
  counts = np.bincount(inverse, minlength=len(present))
  if clones is None:
    return present, sums / np.maximum(counts, 1)[:, None], counts
  clones = np.asarray(list(clones)).astype(str)
  where = {c: i for i, c in enumerate(present)}
  out = np.full((len(clones), k), np.nan)
  n = np.zeros(len(clones), np.int64)
  for j, c in enumerate(clones):
    i = where.get(c)
    if i is not None:
      out[j], n[j] = sums[i] / counts[i], counts[i]
  return clones, out, n


def cells_for_cospar(days: np.ndarray, early_days: Sequence[str], fate_day: str, *,
                     map_days_only: bool = False, fate_day_fraction: float = 1.0,
                     seed: int = 0) -> np.ndarray:
  """Which cells CoSpar gets (bool): every early cell, and the fate day thinned if asked."""
  if not 0.0 < fate_day_fraction <= 1.0:
    raise DataError(f"fate_day_fraction={fate_day_fraction} must lie in (0, 1]")
  days = np.asarray(days).astype(str)
  given = np.ones(len(days), bool)
  if map_days_only:
    given &= np.isin(days, [*early_days, fate_day])
  if fate_day_fraction < 1.0:
    draw = np.random.default_rng(seed).random(len(days))
    given &= (days != fate_day) | (draw < fate_day_fraction)
  return given


# ---------------------------------------------------------------- the run


def _worker_input(adata: Any, x_clone: sp.csr_matrix, days: np.ndarray, state: np.ndarray,
                  path: pathlib.Path) -> None:
  """The worker's input as a plain npz (no pickle, no anndata version skew)."""
  from cardiac_jax.data import ingest   # pylint: disable=g-import-not-at-top
  counts = sp.csr_matrix(adata.X)
  ingest.check_counts(counts, "X")
  np.savez(path, x_data=counts.data.astype(np.float32), x_indices=counts.indices,
           x_indptr=counts.indptr, x_shape=np.asarray(counts.shape),
           c_data=x_clone.data.astype(np.float32), c_indices=x_clone.indices,
           c_indptr=x_clone.indptr, c_shape=np.asarray(x_clone.shape),
           obs_names=np.asarray(adata.obs_names).astype(str),
           var_names=np.asarray(adata.var_names).astype(str),
           time=days.astype(str), state=state.astype(str))


def _run_worker(python: pathlib.Path, args: Sequence[str], log: pathlib.Path,
                timeout_s: float | None) -> dict[str, float]:
  """The worker in a subprocess; its wall and CPU seconds and peak RSS (MB) from ``os.wait4``.

  CPU seconds are reported beside wall seconds because on a shared machine the
  wall time grows with the other processes' load; the CPU time does much less.
  """
  env = dict(os.environ, PYTHONNOUSERSITE="1", MPLBACKEND="Agg")
  env.pop("PYTHONPATH", None)        # nothing of the project's environment leaks in
  started = time.perf_counter()
  with open(log, "w") as f:
    proc = subprocess.Popen([str(python), str(WORKER), *args], stdout=f,
                            stderr=subprocess.STDOUT, env=env)
    deadline = None if timeout_s is None else started + timeout_s
    while True:
      pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
      if pid:
        break
      if deadline is not None and time.perf_counter() > deadline:
        proc.kill()
        _, status, usage = os.wait4(proc.pid, 0)
        raise DataError(f"CoSpar ran past timeout_s={timeout_s:g} and was stopped; see {log}; "
                        "use a lighter preset (settings=TMAP_PRESETS[...]) or fewer cells")
      time.sleep(0.2)
  proc.returncode = os.waitstatus_to_exitcode(status)
  seconds = time.perf_counter() - started
  if proc.returncode != 0:
    tail = "".join(log.read_text().splitlines(keepends=True)[-20:])
    raise DataError(f"the CoSpar worker failed (exit {proc.returncode}); last lines of {log}:\n"
                    f"{tail}")
  return {"wall_s": seconds, "cpu_s": usage.ru_utime + usage.ru_stime,
          "peak_rss_mb": usage.ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10)}


def run_cospar(adata_path: str | os.PathLike, *, time_key: str, state_key: str,
               clone_obsm: str = "X_clone", early_days: Sequence[str], fate_day: str,
               fate_classes: Sequence[str], held_out_clones: Sequence[str],
               workdir: str | os.PathLike, method: str = "multitime",
               settings: dict[str, Any] | None = None, map_days_only: bool = True,
               fate_day_fraction: float = 1.0, seed: int = 0, time_order: Sequence[str] = (),
               venv: str | os.PathLike | None = None,
               timeout_s: float | None = None) -> dict[str, Any]:
  """CoSpar's fate probabilities for every early cell, from the training clones only.

  Args:
    adata_path: h5ad with raw counts in X, ``obs[time_key]``, ``obs[state_key]``
      and ``obsm[clone_obsm]`` (cells x clones, names in ``uns["clone_names"]``).
    time_key, state_key, clone_obsm: where the day, the cell state and the clones are.
    early_days: the days whose cells are scored (maps from each to the fate day).
    fate_day: the day whose cells' states define the fates.
    fate_classes: the fate states, e.g. ("CM", "CF").
    held_out_clones: names of the clones whose barcodes CoSpar must not see.
    workdir: where the worker's input, output, CoSpar's matrices and the log go.
    method: "multitime" or "clonal" (module docstring).
    settings: overrides of ``TMAP_PRESETS[method]`` (multitime only).
    map_days_only: hand CoSpar only the early days' and the fate day's cells
      (the similarity it diffuses is over all cells it gets: O(cells^2) memory).
    fate_day_fraction: hand CoSpar this seeded fraction of the fate-day cells
      (the early cells are always all there); the other cost lever.
    seed: the seed of that subsample.
    time_order: every day in order (() = `ingest.order_time_labels`'s order).
    venv: the CoSpar venv (default: `ensure_venv()`, built if absent).
    timeout_s: stop the worker after this many seconds (DataError).

  Returns:
    dict: ``obs_names``, ``cell_index`` (rows in the h5ad), ``day``, ``clone``
    (from the unmasked clone matrix, "" for none) of the early cells;
    ``probs`` (n_early, K) float32 over ``fate_classes``, rows summing to 1;
    ``informative`` (bool: the map reached the cell); ``wall_s``, ``cpu_s``,
    ``peak_rss_mb`` of the worker; ``steps`` (its seconds per step); ``method``,
    ``settings``, ``n_cells`` (handed to CoSpar), ``n_cells_input``,
    ``n_train_clones``, ``n_held_out_clones``, ``log``.
  """
  from cardiac_jax.data import ingest   # pylint: disable=g-import-not-at-top
  if method not in METHODS:
    raise DataError(f"method {method!r} is not one of {METHODS}")
  tmap = dict(TMAP_PRESETS["multitime"], **(settings or {}))
  unknown = sorted(set(tmap) - set(TMAP_PRESETS["default"]))
  if unknown:
    raise DataError(f"unknown CoSpar settings {unknown}; use keys of TMAP_PRESETS['default']: "
                    f"{sorted(TMAP_PRESETS['default'])}")
  adata = ingest.load_h5ad(adata_path)
  for key, what in ((time_key, "time_key"), (state_key, "state_key")):
    if key not in adata.obs.columns:
      raise DataError(f"obs has no column {key!r} ({what}); present: {list(adata.obs.columns)}")
  if clone_obsm not in adata.obsm:
    raise DataError(f"obsm has no {clone_obsm!r} (the clone matrix); present: "
                    f"{list(adata.obsm)}; pass clone_obsm=")
  time_labels = adata.obs[time_key].astype(str).to_numpy()
  state = adata.obs[state_key].astype(str).to_numpy()
  order = ingest.order_time_labels(time_labels, tuple(time_order))
  early_days, fate_classes = [str(d) for d in early_days], [str(c) for c in fate_classes]
  missing = [d for d in [*early_days, fate_day] if d not in set(time_labels)]
  if missing:
    raise DataError(f"days {missing} have no cells in obs[{time_key!r}] (days: {list(order)})")
  if order.index(fate_day) <= max(order.index(d) for d in early_days):
    raise DataError(f"fate_day {fate_day!r} must come after every early day {early_days}")
  on_fate_day = set(state[time_labels == fate_day])
  if not set(fate_classes) <= on_fate_day or len(fate_classes) < 2:
    raise DataError(f"fate_classes {fate_classes} must be >= 2 states present on {fate_day} "
                    f"(present: {sorted(on_fate_day)})")
  names = clone_names_of(adata, clone_obsm)
  x_full = sp.csr_matrix(adata.obsm[clone_obsm])
  x_train, train_names = mask_clones(x_full, names, held_out_clones)
  if method == "clonal" and not map_days_only:
    # cospar 0.5.0's infer_Tmap_from_clonal_info_alone(later_time_point=...) indexes its
    # subset of the map's days with cell ids of the whole data (IndexError in fate_map when
    # another day is present): hand it the map's days only.
    logging.info("method='clonal': handing CoSpar the early and fate days only")
    map_days_only = True
  given = cells_for_cospar(time_labels, early_days, fate_day, map_days_only=map_days_only,
                           fate_day_fraction=fate_day_fraction, seed=seed)
  if not set(fate_classes) <= set(state[given & (time_labels == fate_day)]):
    raise DataError(f"fate_day_fraction={fate_day_fraction} leaves no fate-day cell of some of "
                    f"{fate_classes}; raise it")
  workdir = pathlib.Path(workdir).resolve()
  workdir.mkdir(parents=True, exist_ok=True)
  _worker_input(adata[given], x_train[given], time_labels[given], state[given],
                workdir / "cospar_input.npz")
  present = set(time_labels[given])     # CoSpar wants the order of exactly the days it gets
  params = dict(workdir=str(workdir), method=method, tmap=tmap, early_days=early_days,
                fate_day=str(fate_day), fate_classes=fate_classes,
                time_order=[d for d in order if d in present],
                fate_method="sum", **PREPROCESS)
  (workdir / "cospar_params.json").write_text(json.dumps(params, indent=1))
  python = venv_python(venv if venv else ensure_venv())
  if not python.exists():
    raise DataError(f"no python at {python}; build the venv with cospar_peer.ensure_venv()")
  output = workdir / "cospar_output.npz"
  output.unlink(missing_ok=True)
  log = workdir / "cospar_worker.log"
  logging.info("CoSpar (%s) on %d of %d cells, %d training clones (%d held out)", method,
               int(given.sum()), adata.n_obs, len(train_names), len(names) - len(train_names))
  cost = _run_worker(python, [f"--input={workdir / 'cospar_input.npz'}",
                              f"--params={workdir / 'cospar_params.json'}",
                              f"--output={output}"], log, timeout_s)
  with np.load(output, allow_pickle=False) as z:
    early_names, day, values = z["obs_names"], z["day"], z["values"]
    steps = json.loads(str(z["steps"]))
  row = {n: i for i, n in enumerate(np.asarray(adata.obs_names).astype(str))}
  cell_index = np.asarray([row[n] for n in early_names], np.int64)
  probs, informative = normalise_fate_values(values)
  logging.info("CoSpar: %d early cells (%d reached by the map) in %.0f s, peak %.0f MB",
               len(cell_index), int(informative.sum()), cost["wall_s"], cost["peak_rss_mb"])
  return {"obs_names": early_names, "cell_index": cell_index, "day": day,
          "clone": clone_of_cells(x_full, names)[cell_index], "probs": probs,
          "informative": informative, "fate_classes": tuple(fate_classes), "method": method,
          "settings": tmap if method == "multitime" else {}, "steps": steps,
          "n_cells": int(given.sum()), "n_cells_input": int(adata.n_obs),
          "map_days_only": bool(map_days_only), "fate_day_fraction": float(fate_day_fraction),
          "n_train_clones": int(len(train_names)),
          "n_held_out_clones": int(len(names) - len(train_names)), "log": str(log), **cost}
