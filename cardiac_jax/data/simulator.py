"""Embedded simulator of iPSC -> cardiac differentiation data (single-cell and spatial).

The project's default data source; it writes AnnData with the schema of GSE175634 so
that the same ingest code runs on simulated and real data.

Generative model (single cells):
  1. Gene programmes (``make_programmes``, shared by both simulators): a log expression
     profile per population, built as a random walk along the lineage IPSC -> MES -> CMES
     -> PROG -> {CM, CF} (plus an endoderm-like UNK branch off MES), with real marker
     genes, housekeeping genes, per-gene negative-binomial dispersion and a few
     fate-priming genes.
  2. Latent trajectory: each cell gets a day, a stage drawn from that day's composition
     and a continuous coordinate ``t`` (stage index + offset within +-0.5); its label is
     the nearest population. Its transcriptome sits at ``t + asynchrony noise``, and the
     expected profile linearly mixes the two adjacent programmes, so boundary cells are
     mixtures. Past PROG the branch is CM or CF, decided by a per-cell fate latent
     (``fate_bias``, logistic around a donor-specific CM efficiency) that is also weakly
     expressed in PROG through the priming genes.
  3. Donors: a gene-level log shift per donor (batch effect), a library-size factor and a
     CM/CF efficiency.
  4. Counts: Poisson-gamma (negative binomial) around library size x profile, sampled in
     chunks of cells into CSR so memory stays bounded for 230K cells.

Spatial sections (``simulate_spatial``): a Visium-like hexagonal grid over an elliptical
tissue with a CM myocardium, a CF-rich epicardial rim, CF streaks and a PROG/CMES niche;
each spot sums ``~cells_per_spot`` cells drawn from smooth spatial composition fields and
the same programmes, sampled at spot depth.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

from absl import logging
import anndata
import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy import stats

from cardiac_jax.config_lib import DAYS, POPULATIONS
from cardiac_jax.data.errors import DataError

# Programme rows: the six classes, then the endoderm-like UNK cluster.
PROGRAMME_NAMES = POPULATIONS + ("UNK",)
_IPSC, _MES, _CMES, _PROG, _CM, _CF, _UNK = range(7)

MARKERS = {
    "IPSC": ("POU5F1", "NANOG", "SOX2", "LIN28A"),
    "MES": ("MIXL1", "TBXT", "EOMES"),
    "CMES": ("MESP1", "PDGFRA", "KDR"),
    "PROG": ("ISL1", "NKX2-5", "GATA4", "HAND1"),
    "CM": ("TNNT2", "MYL7", "ACTC1", "MYH6", "NPPA"),
    "CF": ("COL3A1", "COL1A1", "POSTN", "TCF21", "DCN"),
    "UNK": ("SOX17", "FOXA2"),
}
HOUSEKEEPING = ("ACTB", "GAPDH", "MALAT1", "EEF1A1", "TMSB4X", "RPLP0", "RPS27A", "B2M",
                "RPL13", "RPS12", "RPS18", "RPL41", "TPT1", "FTL", "FTH1", "HSP90AB1",
                "PTMA", "NPM1")
_HOUSEKEEPING_SHARE = 0.3   # of a cell's UMIs over the simulated genes, as in real 10x data
# Weakly expressed in PROG in proportion to the fate latent: + leans CM, - leans CF.
PRIMING = {"TBX5": 1.0, "MYL4": 1.0, "IRX4": 1.0, "HEY2": 1.0,
           "WT1": -1.0, "TBX18": -1.0, "ALDH1A2": -1.0, "SEMA3D": -1.0}

# Fraction of each day's cells per stage: IPSC, MES, CMES, PROG, terminal (CM|CF), UNK.
_DAY_COMPOSITION = np.array([
    [0.97, 0.03, 0.00, 0.00, 0.00, 0.00],   # day0
    [0.20, 0.78, 0.00, 0.00, 0.00, 0.02],   # day1
    [0.00, 0.65, 0.27, 0.02, 0.00, 0.06],   # day3
    [0.00, 0.07, 0.30, 0.53, 0.03, 0.07],   # day5
    [0.00, 0.00, 0.04, 0.45, 0.45, 0.06],   # day7
    [0.00, 0.00, 0.00, 0.09, 0.86, 0.05],   # day11
    [0.00, 0.00, 0.00, 0.04, 0.92, 0.04],   # day15
])
UNK_STAGE = _DAY_COMPOSITION.shape[1] - 1   # stage index of the UNK column above
T_MAX = 4.5               # latent coordinate of the most mature terminal cells
_CM_FRACTION = 0.32       # CM among terminal cells overall (21.4K CM vs 44.6K CF)
ASYNCHRONY = 0.3          # sd of the transcriptome's position around the annotated one
SPOT_PITCH = 100.0        # um between neighbouring Visium spot centres


@dataclasses.dataclass(frozen=True)
class GeneProgrammes:
  """Deterministic expression programmes shared by the single-cell and spatial simulators.

  Attributes:
    gene_names: (g,) unique gene names; the named markers come first.
    populations: row names of ``proportions`` (the six classes, then UNK).
    proportions: (7, g) float64 expected fraction of a cell's UMIs per gene (rows sum to 1).
    dispersion: (g,) negative-binomial dispersion phi (variance = mu + phi mu^2).
    priming: (g,) float64, +1 for CM-priming genes, -1 for CF-priming genes, else 0.
    markers: population -> its marker gene names.
    library_factor: (7,) relative library size per population (CM are large cells).
  """
  gene_names: np.ndarray
  populations: tuple[str, ...]
  proportions: np.ndarray
  dispersion: np.ndarray
  priming: np.ndarray
  markers: dict[str, tuple[str, ...]]
  library_factor: np.ndarray

  @property
  def n_genes(self) -> int:
    return len(self.gene_names)


def named_genes() -> list[str]:
  """Marker, housekeeping and priming gene names, in the order they lead ``gene_names``."""
  names = list(HOUSEKEEPING)
  for pop in PROGRAMME_NAMES:
    names += MARKERS[pop]
  return names + list(PRIMING)


def make_programmes(n_genes: int = 2000, seed: int = 0) -> GeneProgrammes:
  """Builds the lineage's gene programmes; the same (n_genes, seed) gives the same genes."""
  named = named_genes()
  if n_genes < len(named) + 10:
    raise DataError(f"n_genes={n_genes} is too small: the simulator needs at least "
                    f"{len(named) + 10} genes (markers, housekeeping and priming genes plus "
                    f"background); pass a larger n_genes.")
  rng = np.random.default_rng(np.random.SeedSequence([seed, 7919]))
  n_bg = n_genes - len(named)
  width = max(4, len(str(n_bg - 1)))
  gene_names = np.array(named + [f"GENE{i:0{width}d}" for i in range(n_bg)])
  col = {g: i for i, g in enumerate(gene_names)}

  # Background log expression: most genes are lowly expressed, a long right tail.
  base = rng.normal(-2.0, 2.4, n_genes)
  # Lineage random walk: sparse log-fold steps between adjacent populations.
  def step(frac: float, scale: float) -> np.ndarray:
    return rng.normal(0.0, scale, n_genes) * (rng.random(n_genes) < frac)

  log = np.empty((7, n_genes))
  log[_IPSC] = base + step(0.15, 0.9)
  log[_MES] = log[_IPSC] + step(0.12, 0.9)
  log[_CMES] = log[_MES] + step(0.12, 0.9)
  log[_PROG] = log[_CMES] + step(0.12, 0.9)
  log[_CM] = log[_PROG] + step(0.15, 1.0)
  log[_CF] = log[_PROG] + step(0.15, 1.0)
  log[_UNK] = log[_MES] + step(0.15, 1.0)

  hk = [col[g] for g in HOUSEKEEPING]
  # Markers: low background, high in their population, tailing into neighbours at a
  # fraction of the peak (e.g. NKX2-5 and GATA4 stay on in CM).
  spill = {
      "IPSC": {_MES: 0.15}, "MES": {_IPSC: 0.03, _CMES: 0.15, _UNK: 0.3},
      "CMES": {_MES: 0.08, _PROG: 0.15, _CF: 0.05}, "PROG": {_CMES: 0.05, _CM: 0.4, _CF: 0.05},
      "CM": {_PROG: 0.03}, "CF": {_PROG: 0.02, _CMES: 0.03}, "UNK": {_MES: 0.03}}
  peak = {"CM": (7.5, 8.5), "CF": (6.5, 8.0)}
  for p, pop in enumerate(PROGRAMME_NAMES):
    for gene in MARKERS[pop]:
      j = col[gene]
      low = rng.uniform(-4.0, -3.0)
      log[:, j] = low + rng.normal(0, 0.2, 7)
      log[p, j] = low + rng.uniform(*peak.get(pop, (5.0, 6.5)))
      for q, f in spill[pop].items():
        log[q, j] = np.logaddexp(log[q, j], log[p, j] + np.log(f))
  # Priming genes: moderate in PROG, strong in the fate they prime.
  for gene, sign in PRIMING.items():
    j = col[gene]
    log[:, j] = rng.uniform(-3.0, -2.0) + rng.normal(0, 0.2, 7)
    log[_CMES, j] += 1.0
    log[_PROG, j] += 2.0
    log[_CM if sign > 0 else _CF, j] += 3.5

  prop = np.exp(log - log.max(axis=1, keepdims=True))
  prop[:, hk] = 0.0
  prop *= (1.0 - _HOUSEKEEPING_SHARE) / prop.sum(axis=1, keepdims=True)
  # Housekeeping genes: a fixed large share, nearly constant across populations.
  hk_share = (rng.dirichlet(np.full(len(hk), 2.0))[None, :]
              * np.exp(rng.normal(0, 0.1, (7, len(hk)))))
  prop[:, hk] = _HOUSEKEEPING_SHARE * hk_share / hk_share.sum(axis=1, keepdims=True)
  # Dispersion: lowly expressed genes are noisier (phi ~ 0.1 .. 1.5).
  mean_log = np.log(prop.mean(axis=0))
  rank = np.argsort(np.argsort(mean_log)) / (n_genes - 1)
  dispersion = np.exp(np.log(1.5) + (np.log(0.1) - np.log(1.5)) * rank
                      + rng.normal(0, 0.3, n_genes))
  priming = np.zeros(n_genes)
  priming[[col[g] for g in PRIMING]] = list(PRIMING.values())
  library_factor = np.array([1.0, 0.9, 0.9, 1.0, 1.4, 1.1, 0.8])
  return GeneProgrammes(gene_names=gene_names, populations=PROGRAMME_NAMES,
                        proportions=prop, dispersion=dispersion, priming=priming,
                        markers={k: tuple(v) for k, v in MARKERS.items()},
                        library_factor=library_factor)


# --------------------------------------------------------------------------- counts


def sample_counts(mean_block: Callable[[int, int], np.ndarray], n_rows: int,
                   dispersion: np.ndarray, rng: np.random.Generator,
                   chunk: int = 4096) -> sp.csr_matrix:
  """Draws negative-binomial counts chunk by chunk into one int32 CSR matrix.

  ``mean_block(start, stop)`` returns the dense expected counts of rows [start, stop);
  only one chunk is ever dense, so memory is bounded by the chunk and the sparse result.
  """
  shape = (1.0 / dispersion).astype(np.float32)
  scale = dispersion.astype(np.float32)
  data, indices, indptr = [], [], [np.zeros(1, np.int64)]
  nnz = 0
  for start in range(0, n_rows, chunk):
    stop = min(start + chunk, n_rows)
    mu = mean_block(start, stop)
    gamma = rng.standard_gamma(shape, size=mu.shape, dtype=np.float32)
    gamma *= scale
    counts = rng.poisson(mu * gamma)
    rows, cols = np.nonzero(counts)
    data.append(counts[rows, cols].astype(np.int32))
    indices.append(cols.astype(np.int32))
    indptr.append(nnz + np.cumsum(np.bincount(rows, minlength=stop - start)))
    nnz += len(rows)
  # Concatenate one array at a time and drop its pieces, so the peak stays near 1.5x
  # the final matrix instead of 2x.
  index_dtype = np.int32 if nnz < np.iinfo(np.int32).max else np.int64
  data_all = np.concatenate(data)
  data.clear()
  indices_all = np.concatenate(indices).astype(index_dtype, copy=False)
  indices.clear()
  indptr_all = np.concatenate(indptr).astype(index_dtype, copy=False)
  return sp.csr_matrix((data_all, indices_all, indptr_all), shape=(n_rows, len(dispersion)))


def lognormal_factor(rng: np.random.Generator, sd: float, size: int) -> np.ndarray:
  """Multiplicative noise with mean 1 (log-normal, log sd ``sd``): library sizes, capture."""
  return np.exp(rng.normal(-0.5 * sd**2, sd, size))


def visium_xy(array_row: np.ndarray, array_col: np.ndarray) -> np.ndarray:
  """Spot centres in um of a Visium-like hex grid (100 um pitch, odd rows shifted half a
  pitch), from ``array_row`` / ``array_col``; (n, 2) float64 starting at the origin."""
  return SPOT_PITCH * np.stack([array_col + 0.5 * (array_row % 2),
                                array_row * np.sqrt(3) / 2], axis=1)


# --------------------------------------------------------------------------- cells


@dataclasses.dataclass(frozen=True)
class Donors:
  """iPSC lines: what differs between them in every simulator of cells.

  Attributes:
    share: (d,) fraction of the cells from each line (unequal, as pooled collections are).
    shift: (d, g) gene-level log shift (batch effect, with a few eQTL-like large ones).
    factor: (d,) library-size factor.
    cm_logit: (d,) logit of the line's CM efficiency (the centre of its fate latents).
  """
  share: np.ndarray
  shift: np.ndarray
  factor: np.ndarray
  cm_logit: np.ndarray


def make_donors(n_donors: int, n_genes: int, rng: np.random.Generator) -> Donors:
  """Draws the lines' sizes, batch shifts, library factors and CM efficiencies."""
  share = rng.dirichlet(np.full(n_donors, 8.0))
  shift = rng.normal(0.0, 0.1, (n_donors, n_genes))
  eqtl = rng.random((n_donors, n_genes)) < 0.05
  shift[eqtl] += rng.normal(0.0, 0.6, eqtl.sum())
  factor = np.exp(rng.normal(0.0, 0.15, n_donors))
  cm_logit = np.log(_CM_FRACTION / (1 - _CM_FRACTION)) + rng.normal(0.0, 1.0, n_donors)
  return Donors(share=share, shift=shift, factor=factor, cm_logit=cm_logit)


def sample_stages(day: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Stage per cell (0..4 = IPSC..terminal, ``UNK_STAGE``) from its day's composition."""
  cum = np.cumsum(_DAY_COMPOSITION, axis=1)
  cum /= cum[:, -1:]
  stage = (rng.random(len(day))[:, None] > cum[day]).sum(axis=1)
  return np.minimum(stage, UNK_STAGE)


def _composition(n_cells: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """Day and stage per cell from the per-day composition table (days equally sampled)."""
  day = rng.integers(0, len(DAYS), n_cells)
  return day, sample_stages(day, rng)


def _offset_shape(day: np.ndarray, stage: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Beta(a, b) shape of a cell's offset within its stage (sampling and ``label_ceiling``).

  Skewed by the day's relative position among the days on which the stage occurs,
  so e.g. day1 MES is less advanced than day3.
  """
  present = _DAY_COMPOSITION > 0                     # (days, stages)
  first = np.argmax(present, axis=0)
  last = present.shape[0] - 1 - np.argmax(present[::-1], axis=0)
  span = np.maximum(last - first, 1)
  r = np.clip((day - first[stage]) / span[stage], 0.0, 1.0)
  return 1.2 + 1.5 * r, 1.2 + 1.5 * (1.0 - r)


def latent_trajectory(day: np.ndarray, stage: np.ndarray,
                      rng: np.random.Generator) -> np.ndarray:
  """Continuous coordinate t = stage + offset, the offset Beta-distributed on [-0.5, 0.5]."""
  offset = rng.beta(*_offset_shape(day, stage)) - 0.5
  return np.minimum(stage, _PROG + 1) + offset


def day_latent_mean() -> np.ndarray:
  """(len(DAYS),) mean latent coordinate t of each day's lineage (non-UNK) cells.

  The reference clock of the differentiation: a simulator that moves cells through
  time (the clonal one) paces them along it so that its days look like these days.
  """
  days = np.arange(len(DAYS))[:, None]
  stages = np.arange(UNK_STAGE)[None, :]
  a, b = _offset_shape(days, stages)
  centre = np.minimum(stages, _PROG + 1) + a / (a + b) - 0.5
  weight = _DAY_COMPOSITION[:, :UNK_STAGE]
  return (weight * centre).sum(axis=1) / weight.sum(axis=1)


def cell_library(donors: Donors, donor: np.ndarray, mean_library_size: float,
                 rng: np.random.Generator) -> np.ndarray:
  """Per-cell UMI depth before the population's size factor: log-normal x the donor's."""
  return mean_library_size * lognormal_factor(rng, 0.45, len(donor)) * donors.factor[donor]


def population_labels(t: np.ndarray, branch: np.ndarray, is_unk: np.ndarray) -> np.ndarray:
  """Annotated population: the nearest one to t; past PROG the cell's branch (CM | CF).

  Returns int64 indices into ``PROGRAMME_NAMES``.
  """
  label = np.clip(np.rint(t), 0, _PROG + 1).astype(np.int64)
  label = np.where(label > _PROG, branch, label)
  return np.where(is_unk, _UNK, label)


def sample_expression(prog: GeneProgrammes, donors: Donors, donor: np.ndarray,
                      t_expr: np.ndarray, branch: np.ndarray, fate: np.ndarray,
                      library: np.ndarray, is_unk: np.ndarray, unk_mix: np.ndarray,
                      priming_strength: float, rng: np.random.Generator) -> sp.csr_matrix:
  """Counts of cells given their latents: the one expression model of every cell simulator.

  The profile linearly mixes the two programmes adjacent to ``t_expr`` (past PROG the
  cell's ``branch``; UNK cells mix MES and UNK by ``unk_mix``), shifted by the donor's
  batch effect, with the priming genes tilted by ``tanh(fate / 2)`` from CMES to PROG,
  scaled to the cell's library and the population's size; then negative-binomial noise.

  Args:
    prog: the gene programmes.
    donors: the lines; ``donor`` (n,) indexes them.
    donor: (n,) int donor index per cell.
    t_expr: (n,) transcriptome position on the latent coordinate.
    branch: (n,) ``PROGRAMME_NAMES`` index (CM or CF) mixed in past PROG.
    fate: (n,) fate latent (+ leans CM) that tilts the priming genes.
    library: (n,) depth from ``cell_library``.
    is_unk: (n,) bool, cells of the endoderm-like UNK branch.
    unk_mix: (n,) weight of the UNK programme in UNK cells.
    priming_strength: log-fold scale of the priming genes' fate signal.
    rng: the counts' generator.

  Returns:
    (n, g) int32 CSR counts.
  """
  s = np.clip(t_expr, 0.0, _PROG + 1.0)
  lo = np.minimum(np.floor(s), _PROG).astype(np.int64)
  w = s - lo
  hi = np.where(lo + 1 > _PROG, branch, lo + 1)
  lo = np.where(is_unk, _MES, lo)
  hi = np.where(is_unk, _UNK, hi)
  w = np.where(is_unk, unk_mix, w)
  library = library * ((1 - w) * prog.library_factor[lo] + w * prog.library_factor[hi])
  prime_amp = priming_strength * np.tanh(fate / 2) * np.clip(s - 2.0, 0.0, 1.0)
  prime_amp[is_unk] = 0.0

  prime_cols = np.flatnonzero(prog.priming)
  donor_mult = np.exp(donors.shift).astype(np.float32)
  prop = prog.proportions.astype(np.float32)

  def mean_block(a: int, b: int) -> np.ndarray:
    wb = w[a:b, None].astype(np.float32)
    m = (1 - wb) * prop[lo[a:b]] + wb * prop[hi[a:b]]
    m *= donor_mult[donor[a:b]]
    prime = np.exp(prime_amp[a:b, None] * prog.priming[prime_cols])
    m[:, prime_cols] *= prime.astype(np.float32)
    m *= (library[a:b] / m.sum(axis=1)).astype(np.float32)[:, None]
    return m

  return sample_counts(mean_block, len(t_expr), prog.dispersion, rng)


def simulate_cells(n_cells: int = 30_000, n_genes: int = 2_000, n_donors: int = 19,
                   seed: int = 0, programme_seed: int = 0,
                   asynchrony: float = ASYNCHRONY, priming_strength: float = 0.6,
                   mean_library_size: float = 2_000.0) -> anndata.AnnData:
  """Simulates a GSE175634-like time course of single cells (raw UMI counts).

  Args:
    n_cells: cells to simulate.
    n_genes: genes (named markers and housekeeping genes first, then GENExxxx).
    n_donors: iPSC lines; each has a batch shift, a library factor and a CM efficiency.
    seed: seed of the cells (days, latents, donors, counts).
    programme_seed: seed of the gene programmes (shared with ``simulate_spatial``).
    asynchrony: sd of the transcriptome's latent position around the annotated one; the
      main knob of how separable the populations are.
    priming_strength: log-fold scale of the CM/CF fate signal carried by PROG cells.
    mean_library_size: mean UMIs per cell over the simulated genes.

  Returns:
    AnnData with int32 CSR counts in X; obs diffday, type, individual, dpt_pseudotime,
    fate_bias, latent_time; simulation parameters in uns["simulator"].
  """
  if n_cells < 1 or n_donors < 1:
    raise DataError(f"n_cells={n_cells} and n_donors={n_donors} must both be >= 1.")
  if asynchrony < 0 or mean_library_size <= 0:
    raise DataError(f"asynchrony={asynchrony} must be >= 0 and mean_library_size="
                    f"{mean_library_size} > 0; pass the defaults (0.3, 2000) if unsure.")
  started = time.perf_counter()
  prog = make_programmes(n_genes, programme_seed)
  ss = np.random.SeedSequence([seed, 104729])
  donor_rng, latent_rng, count_rng = (np.random.default_rng(s) for s in ss.spawn(3))

  # Donors: unequal sizes, gene-level batch shift, library factor, CM efficiency.
  donors = make_donors(n_donors, n_genes, donor_rng)

  # Latents per cell.
  day, stage = _composition(n_cells, latent_rng)
  donor = latent_rng.choice(n_donors, n_cells, p=donors.share)
  t = latent_trajectory(day, stage, latent_rng)
  fate = donors.cm_logit[donor] + latent_rng.logistic(0.0, 1.0, n_cells)
  is_unk = stage == UNK_STAGE
  t_expr = t + latent_rng.normal(0.0, asynchrony, n_cells)
  library = cell_library(donors, donor, mean_library_size, latent_rng)
  unk_mix = latent_rng.uniform(0.5, 1.0, n_cells)

  # Labels: nearest population of the annotated coordinate; the branch from the fate.
  branch = np.where(fate > 0, _CM, _CF)
  label = population_labels(t, branch, is_unk)
  counts = sample_expression(prog, donors, donor, t_expr, branch, fate, library, is_unk,
                             unk_mix, priming_strength, count_rng)

  width = max(6, len(str(n_cells - 1)))
  obs = pd.DataFrame({
      "diffday": pd.Categorical.from_codes(day, categories=list(DAYS)),
      "type": pd.Categorical.from_codes(label, categories=list(PROGRAMME_NAMES)),
      "individual": pd.Categorical.from_codes(
          donor, categories=[f"ind{i + 1:0{max(2, len(str(n_donors)))}d}"
                             for i in range(n_donors)]),
      "dpt_pseudotime": np.clip(t_expr / T_MAX, 0.0, 1.0),
      "fate_bias": fate.astype(np.float32),
      "latent_time": t.astype(np.float32),
  }, index=pd.Index([f"cell{i:0{width}d}" for i in range(n_cells)]))
  adata = anndata.AnnData(X=counts, obs=obs, var=pd.DataFrame(index=prog.gene_names))
  adata.uns["simulator"] = {
      "kind": "cells", "n_cells": int(n_cells), "n_genes": int(n_genes),
      "n_donors": int(n_donors), "seed": int(seed), "programme_seed": int(programme_seed),
      "asynchrony": float(asynchrony), "priming_strength": float(priming_strength),
      "mean_library_size": float(mean_library_size)}
  logging.info("simulated %d cells x %d genes in %.1f s (%.1f%% zeros)", n_cells, n_genes,
               time.perf_counter() - started, 100 * (1 - counts.nnz / (n_cells * n_genes)))
  return adata


# --------------------------------------------------------------------------- ceiling
#
# A cell's label is its stage (past PROG: CM or CF by the sign of its fate latent).
# Everything observable about it - its counts, library, donor, every other cell and
# hence any walk through it - depends on that label only through its day, its
# transcriptome position t_expr and its fate sign. The Bayes rule on those three
# is therefore the best any classifier of a cell, or of a path ending at it, can do.


def latent_position_density(day: int, stage: int, grid: np.ndarray,
                            asynchrony: float = ASYNCHRONY,
                            n_offsets: int = 1_001) -> np.ndarray:
  """Density of a cell's transcriptome position t_expr, given its day and stage.

  t_expr = stage + Beta offset - 0.5 + N(0, asynchrony^2), the offset's shape being
  ``_offset_shape``'s (the one the cells are sampled with); the Beta is integrated on
  a midpoint grid of ``n_offsets`` points.

  Args:
    day: index into ``DAYS``.
    stage: 0..4 (IPSC, MES, CMES, PROG, terminal).
    grid: (G,) t_expr values.
    asynchrony: as ``simulate_cells``; > 0.
    n_offsets: integration points of the offset.

  Returns:
    (G,) float64 density values.
  """
  if asynchrony <= 0:
    raise DataError(f"latent_position_density needs asynchrony > 0, got {asynchrony} (a point "
                    "mass has no density).")
  a, b = _offset_shape(np.asarray(day), np.asarray(stage))
  u = (np.arange(n_offsets) + 0.5) / n_offsets                    # Beta support (0, 1)
  weight = stats.beta.pdf(u, a, b) / n_offsets
  centre = min(int(stage), _PROG + 1) + u - 0.5
  grid = np.asarray(grid, np.float64)
  return stats.norm.pdf(grid[:, None], centre[None, :], asynchrony) @ weight


def _class_evidence(cm_fraction: float, asynchrony: float,
                    grid: np.ndarray) -> np.ndarray:
  """p(day, t_expr, fate sign | class), (2 signs [+, -], days, 6 classes, grid).

  Classes as POPULATIONS (IPSC, MES, CMES, PROG, CM, CF), each with prior 1/6:
  sequence anchors are drawn per class, so that is the anchors' class prior.
  Days are sampled equally, so P(day | stage) is the composition column's share.
  """
  if not 0.0 < cm_fraction < 1.0:
    raise DataError(f"cm_fraction must be in (0, 1), got {cm_fraction}.")
  comp = _DAY_COMPOSITION[:, :_PROG + 2]                          # no UNK
  p_day = comp / comp.sum(axis=0, keepdims=True)
  n_days = comp.shape[0]
  stage_density = np.zeros((n_days, _PROG + 2, grid.size))
  for d in range(n_days):                  # 7 x 5 numerical convolutions
    for s in range(_PROG + 2):
      if comp[d, s] > 0:
        stage_density[d, s] = p_day[d, s] * latent_position_density(d, s, grid, asynchrony)
  evidence = np.zeros((2, n_days, len(POPULATIONS), grid.size))
  for sign, p_sign in ((0, cm_fraction), (1, 1.0 - cm_fraction)):
    evidence[sign, :, :_PROG + 1] = p_sign * stage_density[:, :_PROG + 1]
    evidence[sign, :, _CM if sign == 0 else _CF] = stage_density[:, _PROG + 1]
  return evidence


def _bayes_table(cm_fraction: float, asynchrony: float,
                 step: float = 2e-3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(grid, evidence, winner): the t_expr grid, ``_class_evidence`` on it and the Bayes
  rule's class per (sign, day, grid point) - what ``label_ceiling`` integrates and
  ``bayes_labels`` looks up."""
  pad = 6.0 * asynchrony
  grid = np.arange(-0.5 - pad, _PROG + 1.5 + pad + step, step)
  evidence = _class_evidence(cm_fraction, asynchrony, grid)
  return grid, evidence, evidence.argmax(axis=2)


def label_ceiling(cm_fraction: float, asynchrony: float = ASYNCHRONY) -> dict[str, Any]:
  """Accuracy of the Bayes rule on (day, t_expr, fate sign) over class-balanced cells.

  An upper bound, in expectation, on any classifier of this simulator's cells or of
  walks ending at them (see the comment above).

  Args:
    cm_fraction: P(fate > 0) among the cells (set by the simulated donors).
    asynchrony: as ``simulate_cells``.

  Returns:
    {"per_class": {population: accuracy}, "balanced": their mean}.
  """
  grid, evidence, winner = _bayes_table(cm_fraction, asynchrony)   # winner: (2, days, grid)
  hit = np.take_along_axis(evidence, winner[:, :, None, :], axis=2)[:, :, 0]
  dz = grid[1] - grid[0]
  per_class = np.zeros(len(POPULATIONS))
  np.add.at(per_class, winner.ravel(), hit.ravel() * dz)
  return {"per_class": dict(zip(POPULATIONS, per_class.round(6).tolist())),
          "balanced": float(per_class.mean())}


def bayes_labels(day: np.ndarray, t_expr: np.ndarray, fate_positive: np.ndarray,
                 cm_fraction: float, asynchrony: float = ASYNCHRONY) -> np.ndarray:
  """The Bayes rule of ``label_ceiling`` applied to given cells.

  Args:
    day: (n,) index into ``DAYS``.
    t_expr: (n,) transcriptome positions (``obs["dpt_pseudotime"] * T_MAX``: the
      clipping changes no decision).
    fate_positive: (n,) bool, ``obs["fate_bias"] > 0``.
    cm_fraction: P(fate > 0) among the cells.
    asynchrony: as ``simulate_cells``.

  Returns:
    (n,) int64 index into ``POPULATIONS`` of each cell's most probable class.
  """
  grid, _, winner = _bayes_table(cm_fraction, asynchrony)
  at = np.clip(np.rint((np.asarray(t_expr, np.float64) - grid[0]) / (grid[1] - grid[0])),
               0, grid.size - 1).astype(np.int64)
  sign = np.where(np.asarray(fate_positive, bool), 0, 1)
  return winner[sign, np.asarray(day, np.int64), at]


# --------------------------------------------------------------------------- spatial


def _hex_tissue(n_spots: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """Visium-like hex grid (100 um pitch) over an elliptical section with a cavity.

  Returns (array_row_col int (n, 2), normalised coordinates (n, 2) in about [-1, 1]);
  the grid is sized so that about ``n_spots`` spots fall on tissue.
  """
  pitch = SPOT_PITCH
  aspect = 1.25
  cavity = dict(centre=(0.15, 0.05), axes=(0.35, 0.35))
  tissue_fraction = 1.0 - cavity["axes"][0] * cavity["axes"][1]
  area = n_spots * pitch**2 * np.sqrt(3) / 2 / tissue_fraction
  b = np.sqrt(area / (np.pi * aspect))
  a = aspect * b
  n_rows = int(np.ceil(2 * b / (pitch * np.sqrt(3) / 2))) + 2
  n_cols = int(np.ceil(2 * a / pitch)) + 2
  row, col = np.meshgrid(np.arange(n_rows), np.arange(n_cols), indexing="ij")
  row, col = row.ravel(), col.ravel()
  x = pitch * (col + 0.5 * (row % 2)) - pitch * (n_cols - 1) / 2
  y = pitch * np.sqrt(3) / 2 * (row - (n_rows - 1) / 2)
  # A slightly irregular outline so sections differ between seeds.
  angle = np.arctan2(y / b, x / a)
  wobble = 1.0 + 0.04 * np.sin(3 * angle + rng.uniform(0, 2 * np.pi))
  u, v = x / a, y / b
  inside = (u**2 + v**2) <= wobble**2
  (cu, cv), (au, av) = cavity["centre"], cavity["axes"]
  inside &= ((u - cu) / au)**2 + ((v - cv) / av)**2 > 1.0
  return np.stack([row, col], 1)[inside], np.stack([x, y], 1)[inside] / np.array([a, b])


def smooth_field(uv: np.ndarray, rng: np.random.Generator, n_modes: int = 8,
                 max_freq: float = 3.0) -> np.ndarray:
  """A random low-frequency field (unit variance): makes neighbouring spots correlated."""
  freq = rng.uniform(-max_freq, max_freq, (n_modes, 2)) * np.pi
  phase = rng.uniform(0, 2 * np.pi, n_modes)
  return np.sqrt(2.0 / n_modes) * np.cos(uv @ freq.T + phase).sum(axis=1)


def _tissue_logits(uv: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Per-spot composition logits over the six populations from heart-like regions."""
  r = np.sqrt((uv**2).sum(axis=1))
  rim = 1.0 / (1.0 + np.exp(-(r - 0.91) / 0.02))          # epicardial rim
  streak = np.zeros(len(uv))
  for _ in range(3):                                       # fibrous streaks
    theta = rng.uniform(0, np.pi)
    normal = np.array([np.cos(theta), np.sin(theta)])
    along = uv @ np.array([-normal[1], normal[0]])
    d = uv @ normal - rng.uniform(-0.4, 0.4) - 0.06 * np.sin(6 * along + rng.uniform(0, 6.3))
    streak = np.maximum(streak, np.exp(-(d / 0.04)**2))
  phi = rng.uniform(0, 2 * np.pi)                          # progenitor niche in the wall
  centre = 0.62 * np.array([np.cos(phi), np.sin(phi)])
  niche = np.exp(-((uv - centre)**2).sum(axis=1) / (2 * 0.2**2))
  noise = [smooth_field(uv, rng) for _ in range(2)]
  logits = np.empty((len(uv), len(POPULATIONS)))
  logits[:, _IPSC] = -7.0
  logits[:, _MES] = -5.5 + 2.5 * niche
  logits[:, _CMES] = -4.0 + 5.5 * niche
  logits[:, _PROG] = -4.0 + 8.0 * niche
  logits[:, _CM] = 2.0 + 0.5 * noise[0] - 2.0 * rim
  logits[:, _CF] = -0.5 + 0.5 * noise[1] + 4.5 * rim + 4.5 * streak
  return logits


def simulate_spatial(n_spots: int = 6_000, n_genes: int = 2_000, cells_per_spot: int = 8,
                     seed: int = 0, programme_seed: int = 0,
                     mean_cell_umis: float = 1_200.0) -> anndata.AnnData:
  """Simulates a Visium-like heart section whose spots mix cells of the shared programmes.

  Args:
    n_spots: approximate number of on-tissue spots (the hex grid decides the exact count).
    n_genes: genes; the same (n_genes, programme_seed) as ``simulate_cells`` gives the
      same var_names and programmes.
    cells_per_spot: mean cells per spot (1 + Poisson(cells_per_spot - 1)).
    seed: seed of the section (layout, compositions, counts).
    programme_seed: seed of the gene programmes.
    mean_cell_umis: captured UMIs per cell, so spot depth is about cells x this.

  Returns:
    AnnData with int32 CSR counts; obs type (dominant population), n_cells, array_row,
    array_col; obsm spatial (um) and proportions (n, 6) in POPULATIONS order.
  """
  if n_spots < 10 or cells_per_spot < 1:
    raise DataError(f"n_spots={n_spots} must be >= 10 and cells_per_spot={cells_per_spot} "
                    ">= 1 for a spatial section.")
  started = time.perf_counter()
  prog = make_programmes(n_genes, programme_seed)
  ss = np.random.SeedSequence([seed, 15485863])
  layout_rng, cell_rng, count_rng = (np.random.default_rng(s) for s in ss.spawn(3))

  grid, uv = _hex_tissue(n_spots, layout_rng)
  n = len(uv)
  logits = _tissue_logits(uv, layout_rng)
  p = np.exp(logits - logits.max(axis=1, keepdims=True))
  p /= p.sum(axis=1, keepdims=True)
  n_cells = 1 + cell_rng.poisson(cells_per_spot - 1, n)
  cells = cell_rng.multinomial(n_cells, p)                  # (n, 6) cells per population
  proportions = cells / n_cells[:, None]
  dominant = proportions.argmax(axis=1)

  six = prog.proportions[:len(POPULATIONS)]
  umis = cells * prog.library_factor[:len(POPULATIONS)] * mean_cell_umis
  umis *= lognormal_factor(cell_rng, 0.3, n)[:, None]   # capture efficiency

  def mean_block(a: int, b: int) -> np.ndarray:
    return (umis[a:b] @ six).astype(np.float32)

  counts = sample_counts(mean_block, n, prog.dispersion, count_rng)
  xy = visium_xy(grid[:, 0], grid[:, 1])
  width = max(5, len(str(n - 1)))
  obs = pd.DataFrame({
      "type": pd.Categorical.from_codes(dominant, categories=list(POPULATIONS)),
      "n_cells": n_cells.astype(np.int32),
      "array_row": grid[:, 0].astype(np.int32),
      "array_col": grid[:, 1].astype(np.int32),
  }, index=pd.Index([f"spot{i:0{width}d}" for i in range(n)]))
  adata = anndata.AnnData(X=counts, obs=obs, var=pd.DataFrame(index=prog.gene_names))
  adata.obsm["spatial"] = xy.astype(np.float64)
  adata.obsm["proportions"] = proportions.astype(np.float32)
  adata.uns["simulator"] = {
      "kind": "spatial", "n_spots": int(n), "n_spots_requested": int(n_spots),
      "n_genes": int(n_genes), "cells_per_spot": int(cells_per_spot), "seed": int(seed),
      "programme_seed": int(programme_seed), "mean_cell_umis": float(mean_cell_umis),
      "population_order": ",".join(POPULATIONS)}
  logging.info("simulated %d spots x %d genes in %.1f s", n, n_genes,
               time.perf_counter() - started)
  return adata
