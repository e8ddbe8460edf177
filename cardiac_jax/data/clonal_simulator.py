"""Embedded simulator of a lineage-traced (LARRY / CellTag-like) cardiac time course.

Cells are barcoded early, grow, differentiate and are sampled destructively over
GSE175634's days; cells that share a barcode descend from one labelled cell (a clone).
The task it serves: predict a clone's fate (CM vs CF, its fate-day composition) from
its early cells. Its cells are drawn from the snapshot simulator's programmes, donors
and count model (``simulator``), so a clone's cells look like ``simulate_cells``'s.

Generative model:
  1. Programmes and donors: ``simulator.make_programmes`` and ``simulator.make_donors``
     (gene-level batch shift, library factor, CM efficiency per iPSC line).
  2. Barcoding: on ``barcode_day`` (day1) ``n_founders`` cells are drawn like that day's
     cells of ``simulate_cells`` (donor by line share, stage by the day's composition,
     latent coordinate t). A fraction ``unlabelled_fraction`` get no detectable barcode;
     their descendants are simulated alike but carry no clone.
  3. Clone-level latents, inherited by every descendant: a fate bias (the line's CM
     logit + Logistic(0, ``clone_fate_scale``)), a pace of differentiation (log-normal,
     sd ``pace_sd``) and a proliferation factor (log-normal, sd ``proliferation_sd``).
  4. Branching process in steps of ``dt`` days: a cell divides or dies at its
     population's rates (``_DIVISION``, ``_DEATH`` per day: fast early mesoderm, CHIR-era
     death, slow CMs), division scaled by its clone's factor and by confluence
     (1 - living / capacity), so the culture stays bounded; sizes spread heavy-tailed.
     Daughters inherit their mother's state: t, the fate latent (each daughter adds
     N(0, ``fate_drift``^2) while uncommitted, so subclones diverge a little), the branch.
  5. Differentiation: t advances at the clone's pace times the day's speed of the
     reference clock ``simulator.day_latent_mean`` (so each day's cells sit where that
     day's snapshot cells sit), relaxes towards the clock at rate ``synchrony`` (the
     culture's shared signals) and takes Brownian cell noise (``t_noise``). MES
     cells divert to the endoderm-like UNK branch at ``_UNK_RATE`` per day. When t first
     reaches PROG + 0.5 the cell commits to CM if its fate latent is > 0, else CF, and its
     descendants keep that branch.
  6. Destructive sampling: on each of ``sample_days`` every living cell is taken with
     probability ``sample_fraction`` and removed; the last day is the fate day, which
     ends the experiment (``fate_fraction``).
  7. Counts: each sampled cell's transcriptome sits at t + N(0, ``asynchrony``^2) and is
     drawn by ``simulator.sample_expression`` (programme mix, donor shift, priming genes
     tilted by the cell's own fate latent from CMES to PROG, negative-binomial noise).
     One early cell thus shows its clone's fate only through a noisy, drifted copy of the
     clone bias; pooling a clone's cells averages the noise; the clone bias is the ceiling.

Measured 2026-12-04 (default size, seeds 0 and 1; a logistic regression on 50 PCs of
log-normalised counts fitted on half the clones' cells up to the day, AUC of the clone's
majority fate on the other half): up to day7 one random cell 0.75-0.79, the clone's mean
log-odds 0.81-0.83, the clone bias 0.97-0.98; up to day11 0.83-0.85, 0.90-0.91, 0.97-0.98;
up to day3 / day5 (MES and CMES, little priming) 0.51-0.64 either way.
"""
from __future__ import annotations

import time
from typing import Sequence

from absl import logging
import anndata
import numpy as np
import pandas as pd
import scipy.sparse as sp

from cardiac_jax.config_lib import DAYS
from cardiac_jax.data import simulator
from cardiac_jax.data.errors import DataError

_POP = {name: i for i, name in enumerate(simulator.PROGRAMME_NAMES)}
_PROG, _CM, _CF = _POP["PROG"], _POP["CM"], _POP["CF"]
_COMMIT_T = _PROG + 0.5     # t at which a cell's nearest population becomes CM or CF
_DAY_NUMBERS = np.array([int(d.removeprefix("day")) for d in DAYS], np.float64)

# Per day, in PROGRAMME_NAMES order (IPSC, MES, CMES, PROG, CM, CF, UNK): pluripotent and
# early mesoderm cells cycle about daily and die under CHIR; iPSC-CMs barely divide.
_DIVISION = np.array([1.0, 1.0, 0.8, 0.7, 0.2, 0.3, 0.8])
_DEATH = np.array([0.25, 0.25, 0.1, 0.08, 0.03, 0.05, 0.1])
_UNK_RATE = 0.02            # per day, MES -> endoderm-like UNK
_MAX_GENERATION = 62        # the division path is kept in the bits of an int64
_CAPACITY_PER_CELL = 1.27   # culture capacity / (expected living cells per sampling day)
_FOUNDERS_PER_CELL = 0.6    # default founders per requested sampled cell


def _speed(day: float, clock: np.ndarray) -> float:
  """d t / d day of the reference clock on ``day`` (piecewise constant between days).

  The protocol's media changes drive the differentiation, so the speed depends on the
  day, not on where a cell is: cells ahead stay ahead without running away.
  """
  slope = np.diff(clock) / np.diff(_DAY_NUMBERS)
  return float(slope[np.clip(np.searchsorted(_DAY_NUMBERS, day, side="right") - 1, 0,
                             len(slope) - 1)])


def _check(n_cells: int, n_founders: int, n_donors: int, barcode: int,
           sample_idx: np.ndarray, fractions: np.ndarray, unlabelled_fraction: float,
           dt: float, scales: dict[str, float]) -> None:
  """Raises DataError naming the fix for arguments the process cannot run with."""
  if n_cells < 20 or n_founders < 1 or n_donors < 1:
    raise DataError(f"n_cells={n_cells} must be >= 20, n_founders={n_founders} and "
                    f"n_donors={n_donors} >= 1; pass larger sizes (defaults 20000, "
                    f"n_cells * {_FOUNDERS_PER_CELL}, 19).")
  if len(sample_idx) < 2 or np.any(np.diff(sample_idx) <= 0) or sample_idx[0] <= barcode:
    raise DataError(f"sample_days {[DAYS[i] for i in sample_idx]} must be at least two "
                    f"distinct days in increasing order, all after barcode_day {DAYS[barcode]} "
                    "(the last one is the fate day); e.g. ('day3', 'day5', 'day7', 'day11', "
                    "'day15').")
  if len(fractions) != len(sample_idx) or np.any(fractions <= 0) or np.any(fractions > 1):
    raise DataError(f"sample_fraction {fractions[:-1].tolist()} must be one value in (0, 1] or "
                    f"one per sampling day before the fate day ({len(sample_idx) - 1}), and "
                    f"fate_fraction={fractions[-1]} in (0, 1]; LARRY-like sampling takes "
                    "0.05-0.2.")
  if not 0.0 <= unlabelled_fraction < 1.0:
    raise DataError(f"unlabelled_fraction={unlabelled_fraction} must be in [0, 1): it is the "
                    "share of founders without a detectable barcode (e.g. 0.25).")
  if not 0.0 < dt <= 0.5:
    raise DataError(f"dt={dt} days must be in (0, 0.5] so that a step holds at most about "
                    "one division; pass 0.25.")
  bad = {k: v for k, v in scales.items() if not v >= 0}
  if bad:
    raise DataError(f"{bad} must be >= 0 (spreads and noise scales); pass 0 to switch one off.")


def _day_index(day: str, what: str) -> int:
  if day not in DAYS:
    raise DataError(f"{what}={day!r} is not a GSE175634 day; use one of {list(DAYS)}.")
  return DAYS.index(day)


def simulate_clones(n_cells: int = 20_000, n_genes: int = 2_000, n_donors: int = 19,
                    seed: int = 0, programme_seed: int = 0, *,
                    n_founders: int | None = None, barcode_day: str = "day1",
                    sample_days: Sequence[str] = ("day3", "day5", "day7", "day11", "day15"),
                    sample_fraction: float | Sequence[float] = 0.1, fate_fraction: float = 0.2,
                    unlabelled_fraction: float = 0.25, clone_fate_scale: float = 0.9,
                    fate_drift: float = 0.3, pace_sd: float = 0.12,
                    proliferation_sd: float = 0.3, t_noise: float = 0.15,
                    synchrony: float = 0.1,
                    asynchrony: float = simulator.ASYNCHRONY,
                    priming_strength: float = 0.6, mean_library_size: float = 2_000.0,
                    dt: float = 0.25) -> anndata.AnnData:
  """Simulates a barcoded, destructively sampled cardiac time course (raw UMI counts).

  Args:
    n_cells: about how many cells are sampled over all days; sets the culture capacity.
    n_genes: genes, as ``simulate_cells`` (same names and programmes for the same seeds).
    n_donors: iPSC lines, as ``simulate_cells``.
    seed: seed of the cells (founders, branching process, sampling, counts).
    programme_seed: seed of the gene programmes (shared with the snapshot simulator).
    n_founders: cells labelled on ``barcode_day``; None = 0.6 x n_cells, so that most
      clones are seen in a few cells on a few days, as in LARRY.
    barcode_day: day of lentiviral labelling.
    sample_days: days on which cells are taken (increasing); the last is the fate day.
    sample_fraction: share of the living cells taken on each sampling day before the
      fate day (one value or one per day).
    fate_fraction: share taken on the fate day, which ends the experiment.
    unlabelled_fraction: share of founders whose barcode is never detected.
    clone_fate_scale: Logistic scale of the clone's fate bias around its line's CM logit.
    fate_drift: sd of the fate latent's change at each division (before commitment).
    pace_sd: log-normal sd of the clone's pace of differentiation.
    proliferation_sd: log-normal sd of the clone's division-rate factor.
    t_noise: Brownian sd of t per sqrt(day) (cell-to-cell asynchrony within a clone).
    synchrony: per day, how fast a cell's t relaxes towards the day's reference (the
      culture's shared signals); keeps laggards from staying progenitors forever.
    asynchrony: sd of the transcriptome's position around t, as ``simulate_cells``.
    priming_strength: log-fold scale of the priming genes' fate signal.
    mean_library_size: mean UMIs per cell.
    dt: step of the branching process, in days.

  Returns:
    AnnData with int32 CSR counts in X and, per sampled cell, obs diffday, type,
    individual, dpt_pseudotime, clone ("" without a barcode); obsm["X_clone"] (CSR 0/1,
    cells x observed clones; names in uns["clone_names"]); parameters in uns["simulator"].
    Latents for tests only, never for a model: obs fate_bias, clone_fate_bias,
    latent_time, generation, founder and lineage_path (the division path's bits, the
    root's first: cell A is an ancestor of B iff same founder, fewer generations and
    B's path shifted right by the difference equals A's).
  """
  barcode = _day_index(barcode_day, "barcode_day")
  sample_idx = np.array([_day_index(d, "sample_days") for d in sample_days], np.int64)
  fractions = np.atleast_1d(np.asarray(sample_fraction, np.float64))
  if fractions.size == 1:
    fractions = np.repeat(fractions, max(len(sample_idx) - 1, 0))
  fractions = np.append(fractions, fate_fraction)
  n_founders = int(round(_FOUNDERS_PER_CELL * n_cells)) if n_founders is None else n_founders
  scales = dict(clone_fate_scale=clone_fate_scale, fate_drift=fate_drift, pace_sd=pace_sd,
                proliferation_sd=proliferation_sd, t_noise=t_noise, synchrony=synchrony,
                asynchrony=asynchrony)
  _check(n_cells, n_founders, n_donors, barcode, sample_idx, fractions, unlabelled_fraction,
         dt, scales)
  if mean_library_size <= 0:
    raise DataError(f"mean_library_size={mean_library_size} must be > 0; pass 2000 if unsure.")
  started = time.perf_counter()
  prog = simulator.make_programmes(n_genes, programme_seed)
  ss = np.random.SeedSequence([seed, 130_363])
  donor_rng, founder_rng, step_rng, count_rng = (np.random.default_rng(s) for s in ss.spawn(4))
  donors = simulator.make_donors(n_donors, n_genes, donor_rng)
  clock = simulator.day_latent_mean()
  # Capacity: the living culture that sampling ``fractions`` of on each day gives n_cells.
  capacity = _CAPACITY_PER_CELL * n_cells / fractions.sum()

  # Founders (step 2) and their clones' latents (step 3).
  f_day = np.full(n_founders, barcode)
  f_stage = simulator.sample_stages(f_day, founder_rng)
  f_donor = founder_rng.choice(n_donors, n_founders, p=donors.share)
  f_t = simulator.latent_trajectory(f_day, f_stage, founder_rng)
  clone_bias = donors.cm_logit[f_donor] + founder_rng.logistic(0.0, clone_fate_scale, n_founders)
  pace = np.exp(founder_rng.normal(0.0, pace_sd, n_founders))
  prolif = simulator.lognormal_factor(founder_rng, proliferation_sd, n_founders)
  barcoded = founder_rng.random(n_founders) >= unlabelled_fraction

  # Living cells: one entry per cell in each array.
  cells = {
      "founder": np.arange(n_founders, dtype=np.int64),
      "t": f_t.astype(np.float64),
      "fate": clone_bias.copy(),
      "branch": np.full(n_founders, -1, np.int64),        # -1 = not committed
      "unk": f_stage == simulator.UNK_STAGE,
      "generation": np.zeros(n_founders, np.int64),
      "path": np.zeros(n_founders, np.int64),
  }
  sampled: list[tuple[int, dict[str, np.ndarray]]] = []

  def take(mask: np.ndarray) -> dict[str, np.ndarray]:
    return {k: v[mask] for k, v in cells.items()}

  def current_branch(c: dict[str, np.ndarray]) -> np.ndarray:
    return np.where(c["branch"] >= 0, c["branch"], np.where(c["fate"] > 0, _CM, _CF))

  end = _DAY_NUMBERS[sample_idx[-1]]
  n_steps = int(round((end - _DAY_NUMBERS[barcode]) / dt))
  sample_at = {int(round((_DAY_NUMBERS[d] - _DAY_NUMBERS[barcode]) / dt)): (d, f)
               for d, f in zip(sample_idx, fractions)}
  peak = n_founders
  for step in range(n_steps + 1):
    if step in sample_at:                                   # step 6
      day, frac = sample_at[step]
      hit = step_rng.random(len(cells["t"])) < frac
      sampled.append((day, take(hit)))
      cells = take(~hit)
    if step == n_steps:
      break
    n = len(cells["t"])
    # Step 4: division and death at the population's rates.
    pop = simulator.population_labels(cells["t"], current_branch(cells), cells["unk"])
    confluence = max(0.0, 1.0 - n / capacity)
    p_div = 1.0 - np.exp(-_DIVISION[pop] * prolif[cells["founder"]] * confluence * dt)
    p_die = 1.0 - np.exp(-_DEATH[pop] * dt)
    u = step_rng.random((2, n))
    dies = u[0] < p_die
    divides = ~dies & (u[1] < p_div) & (cells["generation"] < _MAX_GENERATION)
    keep = ~dies & ~divides
    mothers = take(divides)
    daughters = {k: np.concatenate([v, v]) for k, v in mothers.items()}
    m = len(mothers["t"])
    daughters["generation"] += 1
    daughters["path"] = (daughters["path"] << 1) | np.repeat(np.array([0, 1], np.int64), m)
    drift = step_rng.normal(0.0, fate_drift, 2 * m)
    daughters["fate"] += np.where(daughters["branch"] < 0, drift, 0.0)
    cells = {k: np.concatenate([v[keep], daughters[k]]) for k, v in cells.items()}
    n = len(cells["t"])
    peak = max(peak, n)
    # Step 5: differentiation, UNK diversion, commitment.
    t = cells["t"]
    now = _DAY_NUMBERS[barcode] + (step + 0.5) * dt
    reference = np.interp(now, _DAY_NUMBERS, clock)
    t += ((pace[cells["founder"]] * _speed(now, clock) + synchrony * (reference - t)) * dt
          + step_rng.normal(0.0, t_noise * np.sqrt(dt), n))
    np.clip(t, -0.5, simulator.T_MAX, out=t)
    mes = (np.rint(t) == _POP["MES"]) & ~cells["unk"]
    cells["unk"] |= mes & (step_rng.random(n) < 1.0 - np.exp(-_UNK_RATE * dt))
    commit = (cells["branch"] < 0) & (t >= _COMMIT_T) & ~cells["unk"]
    cells["branch"][commit] = np.where(cells["fate"][commit] > 0, _CM, _CF)

  # Step 7: the sampled cells' transcriptomes.
  day = np.concatenate([np.full(len(c["t"]), d) for d, c in sampled])
  out = {k: np.concatenate([c[k] for _, c in sampled]) for k in cells}
  order = np.lexsort((step_rng.random(len(day)), day))      # by day, shuffled within
  day = day[order]
  out = {k: v[order] for k, v in out.items()}
  n_out = len(day)
  if n_out == 0:
    raise DataError(f"no cell was sampled (n_cells={n_cells}, n_founders={n_founders}); pass "
                    "a larger n_cells or sample_fraction.")
  donor = f_donor[out["founder"]]
  branch = current_branch(out)
  t_expr = out["t"] + count_rng.normal(0.0, asynchrony, n_out)
  library = simulator.cell_library(donors, donor, mean_library_size, count_rng)
  unk_mix = count_rng.uniform(0.5, 1.0, n_out)
  label = simulator.population_labels(out["t"], branch, out["unk"])
  counts = simulator.sample_expression(prog, donors, donor, t_expr, branch, out["fate"],
                                       library, out["unk"], unk_mix, priming_strength,
                                       count_rng)

  # Clones: barcoded founders with at least one sampled cell, in founder order.
  founder_barcoded = barcoded[out["founder"]]
  observed = np.unique(out["founder"][founder_barcoded])
  width = max(5, len(str(n_founders - 1)))
  clone_names = np.array([f"clone{f:0{width}d}" for f in observed], dtype=object)
  column = np.searchsorted(observed, out["founder"])
  rows = np.flatnonzero(founder_barcoded)
  x_clone = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, column[rows])),
                          shape=(n_out, len(observed)))
  clone = np.full(n_out, "", dtype=object)
  clone[rows] = clone_names[column[rows]]

  cell_width = max(6, len(str(n_out - 1)))
  obs = pd.DataFrame({
      "diffday": pd.Categorical.from_codes(day, categories=list(DAYS)),
      "type": pd.Categorical.from_codes(label, categories=list(simulator.PROGRAMME_NAMES)),
      "individual": pd.Categorical.from_codes(
          donor, categories=[f"ind{i + 1:0{max(2, len(str(n_donors)))}d}"
                             for i in range(n_donors)]),
      "dpt_pseudotime": np.clip(t_expr / simulator.T_MAX, 0.0, 1.0),
      "clone": clone,
      "fate_bias": out["fate"].astype(np.float32),
      "clone_fate_bias": clone_bias[out["founder"]].astype(np.float32),
      "latent_time": out["t"].astype(np.float32),
      "generation": out["generation"].astype(np.int32),
      "founder": out["founder"].astype(np.int32),
      "lineage_path": out["path"],
  }, index=pd.Index([f"cell{i:0{cell_width}d}" for i in range(n_out)]))
  adata = anndata.AnnData(X=counts, obs=obs, var=pd.DataFrame(index=prog.gene_names))
  adata.obsm["X_clone"] = x_clone
  adata.uns["clone_names"] = clone_names.astype(str)
  adata.uns["simulator"] = {
      "kind": "clones", "n_cells": int(n_cells), "n_sampled": int(n_out),
      "n_genes": int(n_genes), "n_donors": int(n_donors), "seed": int(seed),
      "programme_seed": int(programme_seed), "n_founders": int(n_founders),
      "n_barcoded": int(barcoded.sum()), "n_clones": int(len(observed)),
      "barcode_day": barcode_day, "sample_days": ",".join(DAYS[i] for i in sample_idx),
      "sample_fraction": ",".join(f"{f:g}" for f in fractions),
      "unlabelled_fraction": float(unlabelled_fraction), "capacity": float(capacity),
      "peak_living": int(peak), "dt": float(dt), "mean_library_size": float(mean_library_size),
      "priming_strength": float(priming_strength),
      **{k: float(v) for k, v in scales.items()},
      "division_per_day": ",".join(f"{r:g}" for r in _DIVISION),
      "death_per_day": ",".join(f"{r:g}" for r in _DEATH),
      "unk_per_day": float(_UNK_RATE),
      "population_order": ",".join(simulator.PROGRAMME_NAMES)}
  logging.info("simulated %d sampled cells of %d clones (%d founders, peak %d living) x %d "
               "genes in %.1f s", n_out, len(observed), n_founders, peak, n_genes,
               time.perf_counter() - started)
  return adata
