"""Exploration plots of the cells, walks and spatial spots behind a dataset.

Every plot function takes plain arrays, returns a ``matplotlib.figure.Figure``
and, given ``path``, also writes a PNG atomically (``fileio.save_figure``).
Figures are built with ``Figure`` + the Agg canvas, never through ``pyplot``:
nothing here changes the global backend or keeps figures alive in pyplot's
registry, so the module is safe in scripts, tests and notebooks alike (a
notebook shows a returned figure with ``display(fig)``).

``load_cells_and_features`` rebuilds what a notebook needs to look *under* a
``SequenceDataset``: the prepared cells/spots its ``source_index`` points into
and their PCA coordinates from the dataset's own cached, train-fitted
preprocessor.
"""
from __future__ import annotations

import os
from typing import Any, NamedTuple, Sequence

from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
import numpy as np

from cardiac_jax import fileio
from cardiac_jax.data import dataset as dataset_lib
from cardiac_jax.data import ingest
from cardiac_jax.data import preprocess
from cardiac_jax.data import sources
from cardiac_jax.data.errors import DataError

# Drawn at most this many background points per scatter (a 230K-cell embedding
# is unreadable and slow as a PNG; a fixed-seed subsample keeps the shape).
MAX_POINTS = 20_000


class ExplorationData(NamedTuple):
  """What the exploration notebook plots, consistent with ``dataset``.

  Attributes:
    dataset: the SequenceDataset of the config (from the cache when present).
    cells: the prepared Cells; ``dataset.source_index`` of modality-0 sequences
      indexes its rows.
    pcs: (n_cells, n_pcs) float32 cell coordinates from the train-fitted
      preprocessor (the same features as ``dataset.x[..., :n_pcs]``).
    spots: the prepared Spots (modality-1 ``source_index`` rows), or None when
      the config has no spatial data.
    preprocessor: the fitted Preprocessor saved next to the cached dataset.
  """
  dataset: dataset_lib.SequenceDataset
  cells: ingest.Cells
  pcs: np.ndarray
  spots: ingest.Spots | None
  preprocessor: preprocess.Preprocessor


def load_cells_and_features(config: Any) -> ExplorationData:
  """Builds (or loads) the dataset of ``config`` and the cells/spots under it.

  The dataset is built with the on-disk cache so that its fitted preprocessor
  is saved; the cells are then re-read and re-prepared exactly as the build did
  and projected with that preprocessor, so ``pcs[source_index]`` reproduces the
  sequences' features. Costs one extra load/simulation of the raw data.

  Args:
    config: a full config (``config_lib.preset(...)``) or its ``config.data``.

  Returns:
    ExplorationData.
  """
  data_cfg = config.data if "data" in config else config
  ds = dataset_lib.build_dataset(data_cfg, cache=True)
  _, pp_path = dataset_lib.cache_paths(data_cfg)
  pp = preprocess.Preprocessor.load(pp_path)
  cells = ingest.prepare_cells(sources.load_cells(data_cfg), data_cfg)
  pcs = np.asarray(pp.transform(cells.counts, cells.gene_names), np.float32)
  spots = None
  if data_cfg.spatial.enabled and int(data_cfg.sequences.spatial_total) > 0:
    spots = ingest.prepare_spots(sources.load_spots(data_cfg), data_cfg, cells.class_names)
  return ExplorationData(dataset=ds, cells=cells, pcs=pcs, spots=spots, preprocessor=pp)


def embedding_2d(pcs: np.ndarray) -> np.ndarray:
  """The first two principal components, as a 2-D embedding of the cells.

  Honest rather than pretty: these are the train-fitted PCA axes the model
  itself sees (ordered by explained variance), not a UMAP/t-SNE that would
  need its own fit and hyper-parameters. Populations that overlap here may
  still separate in the remaining components.
  """
  pcs = np.asarray(pcs)
  if pcs.ndim != 2 or pcs.shape[1] < 2:
    raise DataError(f"pcs must be (n, n_pcs >= 2), got shape {pcs.shape}; set "
                    "config.data.preprocess.n_pcs >= 2")
  return pcs[:, :2].astype(np.float32)


def category_colors(names: Sequence[str], cmap: str = "tab10") -> list[Any]:
  """One colour per category; qualitative maps by index, continuous ones spread over [0, 1]."""
  cm = colormaps[cmap]
  n = len(names)
  if getattr(cm, "N", 256) >= 256:     # continuous: spread the categories over the map
    return [cm(i / max(n - 1, 1)) for i in range(n)]
  return [cm(i % cm.N) for i in range(n)]


def example_rows(labels: np.ndarray, per_class: int = 1, seed: int = 0,
                 candidates: np.ndarray | None = None) -> np.ndarray:
  """Up to ``per_class`` row indices per label value, drawn reproducibly.

  Args:
    labels: (n,) int labels of the rows.
    per_class: rows drawn per label present.
    seed: the draw's seed.
    candidates: optional (n,) bool; only these rows are eligible (e.g. one modality).

  Returns:
    int64 row indices, grouped by ascending label.
  """
  labels = np.asarray(labels)
  ok = np.ones(labels.shape, bool) if candidates is None else np.asarray(candidates, bool)
  rng = np.random.default_rng(seed)
  chosen = []
  for c in np.unique(labels[ok]):
    pool = np.flatnonzero(ok & (labels == c))
    chosen.append(np.sort(rng.choice(pool, size=min(per_class, pool.size), replace=False)))
  return np.concatenate(chosen).astype(np.int64) if chosen else np.zeros(0, np.int64)


def most_confused(confusion: Sequence[Sequence[int]], class_names: Sequence[str],
                  top: int = 5) -> list[tuple[str, str, int, float]]:
  """The largest off-diagonal cells of a confusion matrix (rows = true, columns = predicted).

  Returns:
    Up to ``top`` tuples (true class, predicted class, count, fraction of the true
    class's sequences), largest count first; pairs with no errors are left out.
  """
  cm = np.asarray(confusion, np.int64)
  if cm.shape != (len(class_names), len(class_names)):
    raise DataError(f"confusion has shape {cm.shape}; expected ({len(class_names)},) * 2 for "
                    f"classes {list(class_names)}")
  off = cm.copy()
  np.fill_diagonal(off, 0)
  support = np.maximum(cm.sum(axis=1), 1)
  order = np.argsort(-off, axis=None, kind="stable")[:max(top, 0)]
  pairs = []
  for flat in order:
    i, j = np.unravel_index(flat, off.shape)
    if off[i, j] == 0:
      break
    pairs.append((class_names[i], class_names[j], int(off[i, j]), float(off[i, j] / support[i])))
  return pairs


def _new_figure(figsize: tuple[float, float]) -> tuple[Figure, Any]:
  fig = Figure(figsize=figsize)
  FigureCanvasAgg(fig)
  return fig, fig.add_subplot()


def _finish(fig: Figure, path: str | os.PathLike | None) -> Figure:
  if path is not None:
    fileio.save_figure(fig, path)
  return fig


def _check_rows(name: str, a: np.ndarray, n: int) -> None:
  if a.shape[0] != n:
    raise DataError(f"{name} has {a.shape[0]} rows but the coordinates have {n}; pass "
                    "arrays of the same cells")


def _subsample(n: int, max_points: int | None, seed: int = 0) -> np.ndarray:
  if max_points is None or n <= max_points:
    return np.arange(n)
  return np.sort(np.random.default_rng(seed).choice(n, size=max_points, replace=False))


def plot_embedding(coords2d: np.ndarray, labels: np.ndarray, class_names: Sequence[str],
                   title: str = "", *, cmap: str = "tab10", max_points: int | None = MAX_POINTS,
                   path: str | os.PathLike | None = None) -> Figure:
  """Cells in 2-D coloured by category: one scatter (and legend entry) per category present.

  Call it with population labels and ``class_names``, or with ``time_index`` and
  ``time_labels`` (and a sequential ``cmap`` such as "viridis") to colour by day.
  """
  coords2d, labels = np.asarray(coords2d), np.asarray(labels)
  _check_rows("labels", labels, coords2d.shape[0])
  keep = _subsample(coords2d.shape[0], max_points)
  colors = category_colors(class_names, cmap)
  fig, ax = _new_figure((6.5, 5.0))
  for c, name in enumerate(class_names):
    rows = keep[labels[keep] == c]
    if rows.size:
      ax.scatter(coords2d[rows, 0], coords2d[rows, 1], s=4, color=colors[c], alpha=0.6,
                 linewidths=0, label=f"{name} ({int(np.sum(labels == c))})", rasterized=True)
  ax.set(xlabel="PC 1", ylabel="PC 2", title=title or "Cells")
  ax.legend(markerscale=3, fontsize=8, loc="best", frameon=False)
  return _finish(fig, path)


def composition(time_index: np.ndarray, labels: np.ndarray, n_times: int,
                n_classes: int) -> np.ndarray:
  """(n_times, n_classes) fraction of each population per day (rows sum to 1, or 0 if empty)."""
  counts = np.zeros((n_times, n_classes), np.float64)
  np.add.at(counts, (np.asarray(time_index, np.int64), np.asarray(labels, np.int64)), 1.0)
  return counts / np.maximum(counts.sum(axis=1, keepdims=True), 1.0)


def plot_composition(time_index: np.ndarray, labels: np.ndarray, time_labels: Sequence[str],
                     class_names: Sequence[str], title: str = "", *,
                     path: str | os.PathLike | None = None) -> Figure:
  """Stacked bars: the fraction of each population on each day (one bar container per class)."""
  time_index, labels = np.asarray(time_index), np.asarray(labels)
  _check_rows("labels", labels, time_index.shape[0])
  frac = composition(time_index, labels, len(time_labels), len(class_names))
  colors = category_colors(class_names)
  fig, ax = _new_figure((7.0, 4.5))
  x = np.arange(len(time_labels))
  bottom = np.zeros(len(time_labels))
  for c, name in enumerate(class_names):
    ax.bar(x, frac[:, c], bottom=bottom, color=colors[c], label=name, width=0.8)
    bottom += frac[:, c]
  n_per_day = np.bincount(time_index, minlength=len(time_labels))
  ax.set_xticks(x, [f"{t}\n(n={n})" for t, n in zip(time_labels, n_per_day)], fontsize=8)
  ax.set(ylabel="fraction of cells", ylim=(0, 1), title=title or "Population composition per day")
  ax.legend(bbox_to_anchor=(1.01, 1), loc="upper left", fontsize=8, frameon=False)
  return _finish(fig, path)


def plot_trajectories(coords2d: np.ndarray, source_index_rows: np.ndarray, labels: np.ndarray,
                      class_names: Sequence[str], title: str = "", *,
                      background_labels: np.ndarray | None = None,
                      max_points: int | None = MAX_POINTS,
                      path: str | os.PathLike | None = None) -> Figure:
  """Example walks drawn over the embedding: one line per walk, start to anchor.

  Args:
    coords2d: (n_items, 2) coordinates of the cells (or spots) the walks index.
    source_index_rows: (n_walks, L) rows into ``coords2d``, forward in time; the
      last column is the anchor whose population is the walk's label.
    labels: (n_walks,) class id per walk (colours the line).
    class_names: names of the class ids.
    title: axes title.
    background_labels: optional (n_items,) class per item, drawn faintly in its
      colour behind the walks (grey when None).
    max_points: background subsample size.
    path: optional PNG path.

  Returns:
    The figure; its axes hold one Line2D per walk, then a circle-marker scatter
    of the starts and a star-marker scatter of the anchors.
  """
  coords2d = np.asarray(coords2d)
  rows = np.asarray(source_index_rows, np.int64)
  labels = np.asarray(labels)
  if rows.ndim != 2:
    raise DataError(f"source_index_rows must be (n_walks, L), got shape {rows.shape}")
  _check_rows("labels", labels, rows.shape[0])
  if rows.size and (rows.min() < 0 or rows.max() >= coords2d.shape[0]):
    raise DataError(f"source_index_rows point outside the {coords2d.shape[0]} coordinates; "
                    "pass the coordinates of the Cells (or Spots) the walks were built from")
  colors = category_colors(class_names)
  fig, ax = _new_figure((6.5, 5.0))
  keep = _subsample(coords2d.shape[0], max_points)
  if background_labels is None:
    ax.scatter(coords2d[keep, 0], coords2d[keep, 1], s=3, color="0.85", linewidths=0,
               rasterized=True)
  else:
    bg = np.asarray(background_labels)
    _check_rows("background_labels", bg, coords2d.shape[0])
    ax.scatter(coords2d[keep, 0], coords2d[keep, 1], s=3, linewidths=0, alpha=0.15,
               color=[colors[c] for c in bg[keep]], rasterized=True)
  seen = set()
  for walk_rows, y in zip(rows, labels):
    xy = coords2d[walk_rows]
    ax.plot(xy[:, 0], xy[:, 1], "-", color=colors[y], lw=1.4, alpha=0.9,
            label=None if y in seen else class_names[y])
    seen.add(int(y))
  if rows.size:
    starts, ends = coords2d[rows[:, 0]], coords2d[rows[:, -1]]
    ax.scatter(starts[:, 0], starts[:, 1], marker="o", s=25, facecolors="white",
               edgecolors=[colors[y] for y in labels], linewidths=1.2, zorder=3)
    ax.scatter(ends[:, 0], ends[:, 1], marker="*", s=140, color=[colors[y] for y in labels],
               edgecolors="black", linewidths=0.6, zorder=4)
  ax.set(xlabel="PC 1", ylabel="PC 2",
         title=title or "Example walks (o = first step, * = anchor)")
  ax.legend(fontsize=8, frameon=False, loc="best")
  return _finish(fig, path)


def plot_spatial(coords: np.ndarray, labels: np.ndarray, class_names: Sequence[str],
                 title: str = "", *, walk_rows: np.ndarray | None = None,
                 path: str | os.PathLike | None = None) -> Figure:
  """The spatial section: each spot coloured by its dominant population.

  One scatter per population present (equal aspect, so the tissue keeps its
  shape); optional ``walk_rows`` (n_walks, L) spot rows are drawn as black lines.
  """
  coords, labels = np.asarray(coords), np.asarray(labels)
  _check_rows("labels", labels, coords.shape[0])
  colors = category_colors(class_names)
  fig, ax = _new_figure((6.5, 6.0))
  for c, name in enumerate(class_names):
    rows = np.flatnonzero(labels == c)
    if rows.size:
      ax.scatter(coords[rows, 0], coords[rows, 1], s=10, color=colors[c], linewidths=0,
                 label=f"{name} ({rows.size})", rasterized=True)
  if walk_rows is not None:
    for r in np.asarray(walk_rows, np.int64):
      ax.plot(coords[r, 0], coords[r, 1], "-", color="black", lw=1.0)
  ax.set_aspect("equal")
  ax.set(xlabel="x", ylabel="y", title=title or "Spatial section: dominant population per spot")
  ax.legend(markerscale=2, fontsize=8, bbox_to_anchor=(1.01, 1), loc="upper left",
            frameon=False)
  return _finish(fig, path)


def plot_section_maps(coords: np.ndarray, panels: Sequence[tuple[str, np.ndarray,
                                                                   Sequence[str] | None]],
                      title: str = "", *, path: str | os.PathLike | None = None) -> Figure:
  """One section, side by side: each panel colours its spots by one value.

  Drawn as squidpy's ``spatial_scatter`` draws a section without its image:
  filled spots at ``obsm["spatial"]``, equal aspect, y pointing down (image
  coordinates). A panel is (title, values, class names): with class names the
  values are int codes into them (a legend; -1 = not predicted, light grey),
  without, numbers in [0, 1] on a colourbar (NaN light grey).
  """
  coords = np.asarray(coords, np.float64)
  n = coords.shape[0]
  fig = Figure(figsize=(5.2 * len(panels), 5.0), layout="constrained")
  FigureCanvasAgg(fig)
  axes = fig.subplots(1, len(panels), squeeze=False)[0]
  size = float(np.clip(4e4 / max(n, 1), 2.0, 40.0))
  for ax, (name, values, class_names) in zip(axes, panels):
    values = np.asarray(values)
    _check_rows(name, values, n)
    if class_names is not None:
      colors = category_colors(class_names)
      missing = values < 0
      if missing.any():
        ax.scatter(coords[missing, 0], coords[missing, 1], s=size, color="0.85",
                   linewidths=0, rasterized=True, label=f"not predicted ({int(missing.sum())})")
      for c, label in enumerate(class_names):
        rows = np.flatnonzero(values == c)
        if rows.size:
          ax.scatter(coords[rows, 0], coords[rows, 1], s=size, color=colors[c], linewidths=0,
                     rasterized=True, label=f"{label} ({rows.size})")
      ax.legend(markerscale=1.5, fontsize=7, loc="upper left", bbox_to_anchor=(0, -0.02),
                ncol=2, frameon=False)
    else:
      values = values.astype(np.float64)
      missing = ~np.isfinite(values)
      ax.scatter(coords[missing, 0], coords[missing, 1], s=size, color="0.85", linewidths=0,
                 rasterized=True)
      points = ax.scatter(coords[~missing, 0], coords[~missing, 1], c=values[~missing], s=size,
                          cmap="viridis", vmin=0.0, vmax=1.0, linewidths=0, rasterized=True)
      fig.colorbar(points, ax=ax, shrink=0.7)
    ax.set_aspect("equal")
    ax.invert_yaxis()
    ax.set(title=name, xticks=[], yticks=[])
  if title:
    fig.suptitle(title)
  return _finish(fig, path)


# ---------------------------------------------------------------- predictions on an AnnData


def embedding_2d_for(adata: Any, basis: str = "X_pca_cardiac_jax", *,
                     method: str = "auto", seed: int = 0) -> tuple[np.ndarray, str]:
  """2-D coordinates of ``adata.obsm[basis]`` and the method's name.

  UMAP when ``umap-learn`` is installed (``pip install -e ".[umap]"``) and
  ``method`` is "auto" or "umap", else the first two PCs (``embedding_2d``). The
  UMAP is stored under ``obsm[basis.replace("X_pca", "X_umap")]`` and reused.
  """
  if basis not in adata.obsm:
    raise DataError(f"obsm has no {basis!r} (keys: {list(adata.obsm)}); run "
                    "cardiac_jax.predict first or pass basis= of an existing embedding")
  if method not in ("auto", "umap", "pca"):
    raise ValueError(f"method must be 'auto', 'umap' or 'pca', got {method!r}")
  umap_key = basis.replace("X_pca", "X_umap") if "X_pca" in basis else basis + "_umap"
  if method != "pca":
    if umap_key in adata.obsm:
      return np.asarray(adata.obsm[umap_key])[:, :2], "UMAP"
    try:
      import umap  # pylint: disable=g-import-not-at-top
    except ImportError:
      if method == "umap":
        raise DataError("method='umap' needs umap-learn: pip install -e \".[umap]\"") from None
    else:
      coords = umap.UMAP(random_state=seed).fit_transform(np.asarray(adata.obsm[basis]))
      adata.obsm[umap_key] = np.asarray(coords, np.float32)
      return adata.obsm[umap_key], "UMAP"
  return embedding_2d(np.asarray(adata.obsm[basis])), "PC"


def plot_obs_embedding(adata: Any, color: str, *, basis: str = "X_pca_cardiac_jax",
                       method: str = "auto", title: str = "",
                       max_points: int | None = MAX_POINTS,
                       path: str | os.PathLike | None = None) -> Figure:
  """Cells in 2-D coloured by ``obs[color]``: categories as a legend, numbers as a colourbar."""
  if color not in adata.obs.columns:
    raise DataError(f"obs has no column {color!r} (columns: {list(adata.obs.columns)})")
  coords, name = embedding_2d_for(adata, basis, method=method)
  column = adata.obs[color]
  numeric = column.dtype.kind in "fiu" and not hasattr(column, "cat")
  if not numeric:
    values = column.astype("category")
    fig = plot_embedding(coords, values.cat.codes.to_numpy(),
                         [str(c) for c in values.cat.categories], title or color,
                         max_points=max_points)
  else:
    keep = _subsample(coords.shape[0], max_points)
    fig, ax = _new_figure((6.5, 5.0))
    points = ax.scatter(coords[keep, 0], coords[keep, 1], c=np.asarray(column)[keep], s=4,
                        cmap="viridis", linewidths=0, rasterized=True)
    fig.colorbar(points, ax=ax, label=color)
    ax.set(title=title or color)
  ax = fig.axes[0]
  ax.set(xlabel=f"{name} 1", ylabel=f"{name} 2")
  return _finish(fig, path)


def plot_obs_composition(adata: Any, time_key: str, label_key: str, *,
                         time_order: Sequence[str] | None = None, title: str = "",
                         path: str | os.PathLike | None = None) -> Figure:
  """Stacked bars: the fraction of each ``obs[label_key]`` category per ``obs[time_key]``.

  ``time_order`` defaults to the model's time labels present (from
  ``uns["cardiac_jax"]``) or the labels' own order (``ingest.order_time_labels``).
  """
  for key in (time_key, label_key):
    if key not in adata.obs.columns:
      raise DataError(f"obs has no column {key!r} (columns: {list(adata.obs.columns)})")
  times = adata.obs[time_key].astype(str).to_numpy()
  if time_order is None:
    time_order = ingest.order_time_labels(times)
  time_order = [str(t) for t in time_order]
  missing = sorted(set(times) - set(time_order))
  if missing:
    raise DataError(f"time labels {missing} are not in time_order {time_order}")
  labels = adata.obs[label_key].astype("category")
  position = {t: i for i, t in enumerate(time_order)}
  time_index = np.asarray([position[t] for t in times], np.int64)
  return plot_composition(time_index, labels.cat.codes.to_numpy(), time_order,
                          [str(c) for c in labels.cat.categories],
                          title or f"{label_key} per {time_key}", path=path)


def plot_predictions(adata: Any, out_dir: str | os.PathLike, *, key_added: str = "cardiac_jax",
                     time_key: str = "diffday", true_key: str = "",
                     method: str = "auto") -> dict[str, Any]:
  """The standard prediction PNGs into ``out_dir``; returns {name: path}.

  The embedding coloured by predicted label, by confidence and (when
  ``obs[true_key]`` exists) by the true label, and the per-day composition of
  the predictions.
  """
  import pathlib  # pylint: disable=g-import-not-at-top
  out = pathlib.Path(out_dir)
  basis = f"X_pca_{key_added}"
  label, confidence = f"{key_added}_label", f"{key_added}_confidence"
  paths = {"embedding_label": out / "embedding_predicted_label.png",
           "embedding_confidence": out / "embedding_confidence.png"}
  plot_obs_embedding(adata, label, basis=basis, method=method, title="Predicted population",
                     path=paths["embedding_label"])
  plot_obs_embedding(adata, confidence, basis=basis, method=method, title="Confidence",
                     path=paths["embedding_confidence"])
  if true_key and true_key in adata.obs.columns:
    paths["embedding_true"] = out / "embedding_true_label.png"
    plot_obs_embedding(adata, true_key, basis=basis, method=method,
                       title=f"True label ({true_key})", path=paths["embedding_true"])
  if time_key in adata.obs.columns:
    info = adata.uns.get(key_added, {})
    order = info.get("time_labels_present")
    if order is not None and not set(adata.obs[time_key].astype(str)) <= set(map(str, order)):
      order = None     # labels matched as numbers ("3.0" vs "3"): order the data's own
    paths["composition"] = out / "composition_predicted.png"
    plot_obs_composition(adata, time_key, label, path=paths["composition"],
                         time_order=None if order is None else list(order),
                         title="Predicted composition per day")
  return paths


def fate_summary(adata: Any, *, key_added: str = "cardiac_jax", time_key: str = "diffday",
                 population_key: str = "") -> Any:
  """Mean P(first terminal population) and cell count per (day, population) of the fated cells.

  A DataFrame with columns day, population, n, mean, q25, q75 (days in the
  model's order): whether progenitors commit as the days pass.
  """
  import pandas as pd  # pylint: disable=g-import-not-at-top
  info = adata.uns[key_added]
  if info.get("task") != "fate":
    raise DataError(f"uns[{key_added!r}] holds no fate predictions; predict with a fate model "
                    "(configs/fate.py) first")
  pop_key = population_key or info["params"]["population_key"]
  p = np.asarray(adata.obsm[info["keys"]["fate"]])[:, 0]
  keep = ~np.isnan(p)
  frame = pd.DataFrame({"day": adata.obs[time_key].astype(str).to_numpy()[keep],
                        "population": adata.obs[pop_key].astype(str).to_numpy()[keep],
                        "p": p[keep]})
  order = [t for t in info.get("model_time_labels", []) if t in set(frame["day"])]
  order = order or ingest.order_time_labels(frame["day"].to_numpy())
  out = frame.groupby(["day", "population"]).p.agg(
      n="size", mean="mean", q25=lambda s: s.quantile(0.25),
      q75=lambda s: s.quantile(0.75)).reset_index()
  out["day"] = pd.Categorical(out["day"], categories=list(order), ordered=True)
  pops = [p_ for p_ in info["pre_branch"] if p_ in set(out["population"])]
  out["population"] = pd.Categorical(out["population"], categories=pops, ordered=True)
  return out.sort_values(["day", "population"]).reset_index(drop=True)


def plot_fate(adata: Any, out_dir: str | os.PathLike, *, key_added: str = "cardiac_jax",
              time_key: str = "diffday", method: str = "auto",
              max_points: int | None = MAX_POINTS) -> dict[str, Any]:
  """The fate PNGs into ``out_dir``: the embedding by P(CM) and P(CM) per day and population.

  Cells without a fate (not pre-branch) are drawn in light grey beneath.
  Returns {name: path}.
  """
  import pathlib  # pylint: disable=g-import-not-at-top
  out = pathlib.Path(out_dir)
  info = adata.uns[key_added]
  name = info["fate_names"][0]
  p = np.asarray(adata.obsm[info["keys"]["fate"]])[:, 0]
  coords, method_name = embedding_2d_for(adata, f"X_pca_{key_added}", method=method)
  keep = _subsample(coords.shape[0], max_points)
  fated = keep[~np.isnan(p[keep])]
  rest = keep[np.isnan(p[keep])]
  fig, ax = _new_figure((6.5, 5.0))
  ax.scatter(coords[rest, 0], coords[rest, 1], c="0.93", s=2, linewidths=0, rasterized=True,
             label="no fate (not pre-branch)")
  points = ax.scatter(coords[fated, 0], coords[fated, 1], c=p[fated], s=4, cmap="coolwarm",
                      vmin=0.0, vmax=1.0, linewidths=0, rasterized=True)
  fig.colorbar(points, ax=ax, label=f"P({name})")
  ax.legend(loc="best", fontsize=7, markerscale=3)
  ax.set(title=f"Fate: P({name}) of pre-branch cells", xlabel=f"{method_name} 1",
         ylabel=f"{method_name} 2")
  paths = {"embedding_fate": out / f"embedding_p_{name}.png",
           "fate_by_day": out / f"p_{name}_by_day_population.png"}
  _finish(fig, paths["embedding_fate"])

  table = fate_summary(adata, key_added=key_added, time_key=time_key)
  days = list(table["day"].cat.categories)
  fig, ax = _new_figure((6.5, 4.0))
  pops = list(table["population"].cat.categories)
  for pop, color in zip(pops, category_colors(pops)):
    rows = table[table["population"] == pop]
    x = rows["day"].cat.codes.to_numpy()
    spread = np.clip([rows["mean"] - rows["q25"], rows["q75"] - rows["mean"]], 0.0, None)
    ax.errorbar(x, rows["mean"], yerr=spread, marker="o", color=color, label=pop, capsize=2)
  ax.set_xticks(range(len(days)), days)
  ax.set(ylim=(0, 1), ylabel=f"mean P({name}) (bars: quartiles)", xlabel=time_key,
         title=f"P({name}) per day and population")
  ax.legend(fontsize=8)
  _finish(fig, paths["fate_by_day"])
  return paths
