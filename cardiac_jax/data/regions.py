"""Spatial regions: walks over the spots of whole sections, each labelled by the region it ends in.

A region (compact vs trabecular myocardium, AV mesenchyme, epicardium...) is
decided by where a spot sits among its neighbours, not by its own few cells, so
the unit here is the SPOT and its sequence is the path of neighbouring spots
that leads to it. Pipeline (``build``, the builder of ``config.data.task =
"regions"``, ``configs/spatial.py``):

1. Sections (``load_sections``, ``read_sections``): an h5ad of spots (raw
   counts in X or a layer, ``obsm["spatial"]`` per section) with the section in
   ``obs[data.spatial.section_key]`` and the region in ``obs[region_key]``, or the
   embedded ``section_simulator``. Every bad input is one ``DataError`` naming
   the fix, raised before anything is written.
2. Split before any walk (``assign_splits``): ``data.spatial.split = "section"``
   holds whole sections out (``val_sections`` / ``test_sections``; when empty,
   ``default_sections``: a permutation of the sorted section names by
   ``data.split.seed``, the first ``max(1, round(S * test fraction))`` for test,
   the next ``max(1, round(S * val fraction))`` for validation, the rest for
   training); ``"tile"`` splits square tiles inside each section (one section is
   enough), with held-out spots next to another split left out as a buffer
   (``splits.buffer_spots``).
3. The preprocessing is fitted on TRAINING spots only and embeds every spot.
4. The spot graph (``split_graph``): the 6 nearest spots within 1.5 spot pitches
   (``sequences.spatial_graph``), among one split's spots only. Coordinates are
   put in spot pitches per section and the sections are laid side by side
   ``SECTION_GAP`` pitches apart (``pitch_coords``), so neighbours never cross
   sections, whatever their x/y.
5. Sequences (``walk_sources``, ``walk_features``): ``walks_per_spot`` random
   walks (``sequences.walk``) ENDING at each training spot, one ending at each
   validation / test spot; the label is the end spot's region. With
   ``data.spatial.restart`` > 0 a walk returns to its spot with that chance per
   step, so its steps sample the first few rings again and again instead of
   drifting away; with ``data.spatial.distance_feature`` a step's time feature is
   its distance to the end spot (a constant otherwise). The spot tables
   (``SequenceDataset.tables``: PCs, section, coordinates, region, split) let the
   report (``cardiac_jax.regions``) walk again from every held-out spot
   ``data.spatial.predict_walks`` times and average, as prediction on a new
   section does.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any, Sequence

from absl import logging
import numpy as np
import scipy.sparse as sp

from cardiac_jax.data import sequences
from cardiac_jax.data import splits
from cardiac_jax.data import stages as stages_lib
from cardiac_jax.data.errors import DataError

# Bump when the code changes what a given config.data builds (cache key).
CODE_VERSION = "regions-v2"
SPLIT_KINDS = ("tile", "section")
# Spot pitches between sections laid side by side: far beyond the graph's radius.
SECTION_GAP = 10.0
BLOCK_SPOTS = 4096         # anchors per walk block (fixes the rng streams)
# The time label of every spot (sections are formed tissue: ``sequences.SPATIAL_TIME``).
TIME_LABEL = "section"
FILTER_EMPTY = ("adata = adata[np.asarray(adata.X.sum(axis=1)).ravel() > 0].copy() "
                "(scanpy: sc.pp.filter_cells(adata, min_counts=1))")


@dataclasses.dataclass(frozen=True)
class Sections:
  """Spots of one or more sections, checked (``read_sections``).

  Attributes:
    counts: (n, g) float32 CSR raw counts.
    gene_names: (g,) str.
    obs_names: (n,) str, unique.
    section: (n,) int32 index into ``section_names``.
    section_names: the sections, sorted by name.
    coords: (n, 2) float32 x/y as given (per section).
    labels: (n,) int32 region index into ``class_names``.
    class_names: the regions, in label order.
  """
  counts: Any
  gene_names: np.ndarray
  obs_names: np.ndarray
  section: np.ndarray
  section_names: tuple[str, ...]
  coords: np.ndarray
  labels: np.ndarray
  class_names: tuple[str, ...]

  @property
  def n_spots(self) -> int:
    return int(self.section.size)


# ---------------------------------------------------------------- input


def load_sections(data_cfg: Any) -> Any:
  """The AnnData of ``config.data.spatial``: the section simulator or the h5ad at its path."""
  sp_cfg = data_cfg.spatial
  if sp_cfg.source == "simulator":
    from cardiac_jax.data import section_simulator  # pylint: disable=g-import-not-at-top
    return section_simulator.simulate_sections(
        n_sections=int(sp_cfg.n_sections), spots_per_section=int(sp_cfg.spots_per_section),
        n_genes=int(data_cfg.simulator.n_genes), seed=int(data_cfg.simulator.seed),
        programme_seed=int(sp_cfg.seed))
  if sp_cfg.source == "h5ad":
    if not sp_cfg.path:
      raise DataError("config.data.spatial.source is 'h5ad' but config.data.spatial.path is "
                      "empty; set it to the .h5ad of spots (--config.data.spatial.path=X.h5ad)")
    from cardiac_jax.data import ingest  # pylint: disable=g-import-not-at-top
    return ingest.load_h5ad(sp_cfg.path)
  raise DataError(f"config.data.spatial.source must be 'simulator' or 'h5ad', got "
                  f"{sp_cfg.source!r}")


def check_unique_names(obs_names: np.ndarray) -> None:
  """Spot names must be unique: predictions and maps are joined back by name."""
  names = np.asarray(obs_names).astype(str)
  uniq, counts = np.unique(names, return_counts=True)
  if uniq.size != names.size:
    repeated = uniq[counts > 1]
    raise DataError(f"{repeated.size} spot name(s) repeat (e.g. {repeated[:3].tolist()}), so "
                    "spots could not be told apart in the predictions; make them unique "
                    "first: adata.obs_names_make_unique()")


def section_column(adata: Any, section_key: str) -> tuple[np.ndarray, tuple[str, ...]]:
  """(int32 section index per spot, sorted section names) of ``obs[section_key]``."""
  from cardiac_jax.data import ingest  # pylint: disable=g-import-not-at-top
  values = ingest.obs_column(adata, section_key, "sections (config.data.spatial.section_key; "
                             "squidpy / Visium: library_id)")
  names, index = np.unique(values, return_inverse=True)
  return index.astype(np.int32), tuple(str(n) for n in names)


def read_sections(adata: Any, data_cfg: Any) -> Sections:
  """Checks a spatial AnnData for training and returns its ``Sections``.

  Raises a ``DataError`` naming the problem and the fix for: repeated spot
  names, an absent section or region column (or missing values in it), missing
  or NaN coordinates, counts that are not raw counts, spots with zero counts, a
  section of fewer than two spots. With explicit ``data.spatial.classes`` spots
  of other regions are dropped (logged).
  """
  from cardiac_jax.data import ingest  # pylint: disable=g-import-not-at-top
  sp_cfg = data_cfg.spatial
  if adata.n_obs == 0:
    raise DataError("the spatial data has no spots")
  obs_names = np.asarray(adata.obs_names).astype(str)
  check_unique_names(obs_names)
  section, section_names = section_column(adata, str(sp_cfg.section_key))
  region = ingest.obs_column(adata, str(sp_cfg.region_key),
                             "region labels (config.data.spatial.region_key)")
  coords = ingest.spot_coordinates(adata)
  matrix = ingest.spatial_counts(adata, data_cfg)
  totals = np.asarray(matrix.sum(axis=1)).ravel()
  empty = totals == 0
  if empty.any():
    raise DataError(f"{int(empty.sum())} of {adata.n_obs} spots have zero counts (e.g. "
                    f"{obs_names[empty][:3].tolist()}): they carry no expression to learn "
                    f"from; drop them before training: {FILTER_EMPTY}")
  classes = tuple(str(c) for c in sp_cfg.classes) or tuple(np.unique(region).tolist())
  keep = np.isin(region, classes)
  if not keep.any():
    raise DataError(f"no spot's region is one of config.data.spatial.classes={list(classes)}; "
                    f"regions present: {np.unique(region).tolist()[:20]}; fix the classes or "
                    "set them to () to take every region")
  if not keep.all():
    dropped, n_dropped = np.unique(region[~keep], return_counts=True)
    logging.info("regions: dropping %d spots whose region is not a class: %s",
                 int((~keep).sum()), dict(zip(dropped.tolist(), n_dropped.tolist())))
  rows = np.flatnonzero(keep)
  present, inverse = np.unique(region[rows], return_inverse=True)
  labels = np.asarray([classes.index(r) for r in present], np.int32)[inverse]
  out = Sections(counts=ingest.to_csr_float32(matrix, rows),
                 gene_names=np.asarray(adata.var_names).astype(str), obs_names=obs_names[rows],
                 section=section[rows], section_names=section_names, coords=coords[rows],
                 labels=np.asarray(labels, np.int32), class_names=classes)
  if len(np.unique(out.gene_names)) != out.gene_names.size:
    raise DataError("gene names (var_names) repeat; call adata.var_names_make_unique() first")
  per_section = np.bincount(out.section, minlength=len(section_names))
  small = [section_names[s] for s in np.flatnonzero((per_section > 0) & (per_section < 2))]
  if small:
    raise DataError(f"sections {small} have a single spot: a section needs neighbours; drop "
                    "them or fix config.data.spatial.section_key")
  logging.info("regions: %d spots x %d genes in %d sections, regions %s", out.n_spots,
               out.gene_names.size, int((per_section > 0).sum()), classes)
  return out


# ---------------------------------------------------------------- geometry


def pitch_coords(coords: np.ndarray, section: np.ndarray) -> np.ndarray:
  """Coordinates in spot pitches, each section shifted to its own place on the x axis.

  Each section is divided by its own spot pitch (``splits.spot_spacing``: the
  median nearest-neighbour distance; Visium's pixel coordinates differ per
  image) and moved right of the previous one with ``SECTION_GAP`` pitches in
  between, so one k-d tree over all spots never links two sections.

  Returns:
    (n, 2) float64.
  """
  coords = np.asarray(coords, np.float64)
  section = np.asarray(section)
  out = np.empty_like(coords)
  offset = 0.0
  for s in np.unique(section):     # a handful of sections
    rows = np.flatnonzero(section == s)
    xy = coords[rows]
    unit = (xy - xy.min(axis=0)) / splits.spot_spacing(xy)
    unit[:, 0] += offset
    out[rows] = unit
    offset = float(unit[:, 0].max()) + SECTION_GAP
  return out


def split_graph(unit_coords: np.ndarray, labels: np.ndarray, rows: np.ndarray
                ) -> sequences.WalkGraph:
  """The spot graph among ``rows`` (one split's spots): 6 neighbours within 1.5 pitches."""
  return sequences.spatial_graph(unit_coords, labels, rows, 1.0)


def walk_sources(unit_coords: np.ndarray, rows: np.ndarray, *, length: int, n_walks: int,
                 seed: int, stream: int = 0, restart: float = 0.0) -> np.ndarray:
  """``n_walks`` walks ending at each of ``rows``, among ``rows``' spots only.

  The walks run over ``split_graph(rows)`` in blocks of ``BLOCK_SPOTS`` anchors
  seeded per (seed, stream, block, walk), so a spot's walks do not depend on how
  many walks are drawn at once. Training, the report and ``predict`` all walk here.

  Returns:
    (n_walks, len(rows), length) int64 global rows; [..., -1] is the spot itself.
  """
  if n_walks < 1:
    raise DataError(f"n_walks must be >= 1, got {n_walks}")
  rows = np.asarray(rows, np.int64)
  graph = split_graph(unit_coords, np.zeros(len(unit_coords), np.int32), rows)
  out = np.empty((n_walks, rows.size, length), np.int64)
  for b, start in enumerate(range(0, rows.size, BLOCK_SPOTS)):
    local = np.arange(start, min(start + BLOCK_SPOTS, rows.size))
    for w in range(n_walks):
      out[w, local] = sequences.walk(graph, local, length,
                                     np.random.default_rng([seed, stream, b, w]),
                                     temporal=False, restart=restart)
  return out


def walk_features(pcs: np.ndarray, unit_coords: np.ndarray, src: np.ndarray, *,
                  distance: bool) -> np.ndarray:
  """(N, L, n_pcs + 2) features of walks ``src`` (N, L): each step's PCs, then its
  distance to the walk's end spot in spot pitches / (L - 1) (``distance``; else the
  constant ``sequences.SPATIAL_TIME``), then the spatial modality flag.

  Why the distance: a step 1 pitch from the spot is evidence about its region, one
  6 pitches away may lie across a boundary; a walk's step index says that only
  loosely (a random walk's reach grows like the square root of its steps).
  """
  if not distance:
    return sequences.assemble_features(pcs, src, sequences.SPATIAL_TIME, 1)
  xy = np.asarray(unit_coords, np.float32)
  d = np.linalg.norm(xy[src] - xy[src[:, -1:]], axis=-1) / max(src.shape[1] - 1, 1)
  return sequences.assemble_features(pcs, src, np.minimum(d, 1.0), 1)


def adjacency(graph: sequences.WalkGraph, n: int) -> sp.csr_matrix:
  """The graph's edges as a symmetric 0/1 (n, n) CSR over global rows (no self loops)."""
  local = np.repeat(np.arange(graph.size), graph.same_count)
  cols = graph.same[local, _ranks(graph.same_count)]
  a, b = graph.rows[local], graph.rows[cols]
  keep = a != b
  a, b = a[keep], b[keep]
  m = sp.csr_matrix((np.ones(2 * a.size), (np.concatenate([a, b]), np.concatenate([b, a]))),
                    shape=(n, n))
  m.data[:] = 1.0          # duplicates summed above: back to 0/1
  return m


def split_adjacency(unit_coords: np.ndarray, spot_split: np.ndarray) -> sp.csr_matrix:
  """The spot graph of every split at once, (n, n) 0/1: edges only within one split
  (and so within one section); ``splits.UNUSED`` spots have none."""
  n = len(spot_split)
  zeros = np.zeros(n, np.int32)
  out = sp.csr_matrix((n, n))
  for s in range(len(splits.SPLITS)):
    rows = np.flatnonzero(spot_split == s)
    if rows.size:
      out = out + adjacency(split_graph(unit_coords, zeros, rows), n)
  return out.tocsr()


def _ranks(count: np.ndarray) -> np.ndarray:
  """0 .. count[i] - 1 for each i, concatenated (the valid columns of a padded table)."""
  starts = np.repeat(np.cumsum(count) - count, count)
  return np.arange(int(count.sum())) - starts


# ---------------------------------------------------------------- splits


def default_sections(section_names: Sequence[str], fractions: Sequence[float],
                     seed: int) -> tuple[list[str], list[str]]:
  """(val sections, test sections) when the config names none: see the module docstring."""
  n = len(section_names)
  n_test = max(1, int(round(n * float(fractions[2]))))
  n_val = max(1, int(round(n * float(fractions[1]))))
  while n - n_test - n_val < 1 and n_val + n_test > 2:    # keep >= 1 training section
    if n_val >= n_test:
      n_val -= 1
    else:
      n_test -= 1
  order = np.random.default_rng(int(seed)).permutation(n)
  names = sorted(section_names)
  return ([names[i] for i in order[n_test:n_test + n_val]],
          [names[i] for i in order[:n_test]])


def _named_sections(value: Any, section_names: Sequence[str], field: str) -> list[str]:
  wanted = [str(v) for v in (value or ())]
  unknown = [w for w in wanted if w not in section_names]
  if unknown:
    raise DataError(f"config.data.spatial.{field} names sections {unknown} that are not in the "
                    f"data; sections present: {list(section_names)}")
  return wanted


def held_out_sections(section_names: Sequence[str], data_cfg: Any) -> dict[str, list[str]]:
  """{"train", "val", "test": section names} of a section split (explicit or default)."""
  sp_cfg = data_cfg.spatial
  names = list(section_names)
  if len(names) < 3:
    raise DataError(
        f"config.data.spatial.split='section' holds whole sections out for validation and "
        f"test, but the data has {len(names)} section(s) ({names}); use "
        "--config.data.spatial.split=tile to split tiles inside the section(s), or add "
        "sections (at least 3: train, val, test)")
  val = _named_sections(sp_cfg.val_sections, names, "val_sections")
  test = _named_sections(sp_cfg.test_sections, names, "test_sections")
  if not val and not test:
    val, test = default_sections(names, tuple(data_cfg.split.fractions),
                                 int(data_cfg.split.seed))
  elif not val or not test:
    default_val, default_test = default_sections(
        [n for n in names if n not in val + test], tuple(data_cfg.split.fractions),
        int(data_cfg.split.seed))
    val, test = val or default_val, test or default_test
  if set(val) & set(test):
    raise DataError(f"sections {sorted(set(val) & set(test))} are in both "
                    "config.data.spatial.val_sections and test_sections; name each once")
  train = [n for n in names if n not in val and n not in test]
  if not val or not test or not train:
    raise DataError(f"the section split leaves no section for "
                    f"{'training' if not train else 'validation' if not val else 'test'} "
                    f"(val {val}, test {test} of {names}); name fewer sections in "
                    "config.data.spatial.val_sections / test_sections")
  return {"train": train, "val": val, "test": test}


def assign_splits(sections: Sections, unit_coords: np.ndarray,
                  data_cfg: Any) -> tuple[np.ndarray, dict[str, Any]]:
  """Split id per spot (``splits.UNUSED`` for buffered spots) and a JSON-able summary.

  Raises:
    DataError: an unknown split kind, too few sections for a section split, or a
      region in validation / test that training lacks.
  """
  sp_cfg = data_cfg.spatial
  kind = str(sp_cfg.split)
  if kind not in SPLIT_KINDS:
    raise DataError(f"config.data.spatial.split={kind!r} is unknown; choose one of {SPLIT_KINDS}")
  names = sections.section_names
  info: dict[str, Any] = {"kind": kind}
  if kind == "section":
    held = held_out_sections(names, data_cfg)
    sid = {name: splits.SPLIT_IDS[part] for part, members in held.items() for name in members}
    spot_split = np.asarray([sid[n] for n in names], np.int8)[sections.section]
    info["sections"] = held
  else:
    tiles, first = np.zeros(sections.n_spots, np.int64), 0
    for s in np.unique(sections.section):      # tiles never straddle two sections
      rows = np.flatnonzero(sections.section == s)
      tiles[rows] = splits.spatial_tiles(unit_coords[rows], sp_cfg.tile_size, 1.0) + first
      first = int(tiles[rows].max()) + 1
    tiled = splits.split_spots(sections.labels, tiles, tuple(data_cfg.split.fractions),
                               int(data_cfg.split.seed))
    spot_split = splits.buffer_spots(unit_coords, tiled, float(sp_cfg.buffer_spacings), 1.0)
    info["buffered"] = {name: int(np.sum((tiled == s) & (spot_split == splits.UNUSED)))
                        for s, name in enumerate(splits.SPLITS)}
    info["sections"] = {name: sorted({names[i] for i in sections.section[tiled == s]})
                        for s, name in enumerate(splits.SPLITS)}
  check_split_regions(sections.labels, spot_split, sections.class_names, kind)
  return spot_split, info


def check_split_regions(labels: np.ndarray, spot_split: np.ndarray,
                        class_names: Sequence[str], kind: str = "section") -> None:
  """Every split needs spots, and every region needs training spots."""
  per = np.zeros((len(splits.SPLITS), len(class_names)), np.int64)
  used = spot_split >= 0
  np.add.at(per, (spot_split[used].astype(np.int64), labels[used].astype(np.int64)), 1)
  fix = ("name other sections in config.data.spatial.val_sections / test_sections (or "
         "another config.data.split.seed)" if kind == "section" else
         "use a smaller config.data.spatial.tile_size or another config.data.split.seed")
  for s, name in enumerate(splits.SPLITS):
    if per[s].sum() == 0:
      raise DataError(f"the {name} split has no spot; {fix}")
  unseen = [class_names[c] for c in np.flatnonzero(per[0] == 0)]
  if unseen:
    where = {class_names[c]: [splits.SPLITS[s] for s in (1, 2) if per[s, c]]
             for c in np.flatnonzero(per[0] == 0)}
    raise DataError(f"regions {unseen} have no training spot (present in {where}): a model "
                    f"cannot learn a region it never saw; {fix}, or leave them out of "
                    "config.data.spatial.classes")


# ---------------------------------------------------------------- build


def stages(data_cfg: Any) -> list[str]:
  """The stages ``build`` runs, in order (the progress bar's steps)."""
  return ["simulate" if data_cfg.spatial.source == "simulator" else "load", "prepare", "split",
          "preprocess_fit", "transform", "walks", "assemble"]


def build(data_cfg: Any, stage: stages_lib.Stages, preprocessor_path: pathlib.Path | None,
          key: str) -> dict[str, Any]:
  """The region sequences of ``config.data``: the fields of a ``SequenceDataset``."""
  from cardiac_jax.data import preprocess  # pylint: disable=g-import-not-at-top
  sp_cfg, seq_cfg = data_cfg.spatial, data_cfg.sequences
  length = int(seq_cfg.length)
  walks_per_spot = int(sp_cfg.walks_per_spot)
  if walks_per_spot < 1:
    raise DataError(f"config.data.spatial.walks_per_spot={walks_per_spot} must be >= 1")
  with stage("simulate" if sp_cfg.source == "simulator" else "load"):
    adata = load_sections(data_cfg)
  with stage("prepare"):
    sections = read_sections(adata, data_cfg)
    del adata
  with stage("split"):
    unit = pitch_coords(sections.coords, sections.section)
    spot_split, split_info = assign_splits(sections, unit, data_cfg)
  with stage("preprocess_fit"):
    pp = preprocess.fit_preprocessor(sections.counts, sections.gene_names,
                                     np.flatnonzero(spot_split == 0), data_cfg.preprocess)
  with stage("transform"):
    pcs = np.asarray(pp.transform(sections.counts, sections.gene_names), np.float32)
  class_names = sections.class_names
  parts = []
  with stage("walks"):
    for s, name in enumerate(splits.SPLITS):
      per_spot = walks_per_spot if name == "train" else 1
      rows = np.flatnonzero(spot_split == s)
      src = walk_sources(unit, rows, length=length, n_walks=per_spot,
                         seed=int(seq_cfg.seed), stream=s,
                         restart=float(sp_cfg.restart)).reshape(-1, length)
      parts.append((src, sections.labels[src[:, -1]], np.full(len(src), s, np.int8)))
      logging.info("regions: %s: %d walks ending at %d spots", name, len(src), rows.size)
  with stage("assemble"):
    src = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts]).astype(np.int32)
    split = np.concatenate([p[2] for p in parts])
    x = walk_features(pcs, unit, src, distance=bool(sp_cfg.distance_feature))
    n_pcs = pcs.shape[1]
    spots_per_split = {name: int(np.sum(spot_split == s)) for s, name in enumerate(splits.SPLITS)}
    task_info = {
        "section_key": str(sp_cfg.section_key), "region_key": str(sp_cfg.region_key),
        "classes": list(class_names), "split": split_info,
        "walk": {"length": length, "neighbours": sequences.SPATIAL_NEIGHBOURS,
                 "radius_pitches": sequences.SPATIAL_RADIUS, "section_gap": SECTION_GAP,
                 "walks_per_spot": walks_per_spot,
                 "restart": float(sp_cfg.restart),
                 "distance_feature": bool(sp_cfg.distance_feature)},
        "spots_per_split": spots_per_split,
    }
    meta = {
        "cache_key": key, "code_version": CODE_VERSION, "task": "regions",
        "task_info": task_info, "class_names": list(class_names),
        "time_labels": [TIME_LABEL], "n_pcs": int(n_pcs), "num_features": int(n_pcs + 2),
        "length": length, "n_spots": sections.n_spots,
        "sections": list(sections.section_names),
        "spots_per_split": spots_per_split,
        "spot_counts": splits.counts_table(sections.labels[spot_split >= 0],
                                           spot_split[spot_split >= 0], class_names),
        "counts": splits.counts_table(y, split, class_names),
        "spatial_time_feature": sequences.SPATIAL_TIME,
        "preprocessor": preprocessor_path.name if preprocessor_path is not None else "",
        "data_config": json.loads(json.dumps(data_cfg.to_dict(), default=str)),
    }
    tables = {"pcs": pcs, "section": sections.section,
              "section_names": np.asarray(sections.section_names, dtype=np.str_),
              "coords": sections.coords, "unit_coords": unit,
              "labels": sections.labels, "split": spot_split,
              "obs_names": sections.obs_names.astype(np.str_)}
    fields = dict(x=x, y=y, mask=np.ones(src.shape, np.float32), split=split,
                  modality=np.ones(y.size, np.int8), source_index=src,
                  class_names=class_names, meta=meta, tables=tables)
  if preprocessor_path is not None:
    with stage("save"):
      pp.save(preprocessor_path)
  return fields
