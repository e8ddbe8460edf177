"""Exact fate labels: the noise-free limit of the backward walks' visit counts.

The walk labels (``fate.path_visits``) count, per pre-branch cell, how many
sampled backward walks from CM and from CF cells pass through it. Their
sampling noise costs about 0.012 AUC (docs/results/fate.md). The walks are a
Markov chain whose kernel depends only on the step's target day (a function of
the anchor's day, ``sequences.step_times``) and the current cell's day, so the
EXPECTED visits are a short sequence of sparse matrix-vector products: for every
anchor day and terminal population, start one unit of mass on each of its
terminal cells and push it backwards through the same-day and previous-day
kNN tables with exactly the rule of ``sequences.walk`` (including a step that
keeps going back while the cell is later than the target day), adding the
mass on each cell at every step. Then P(CM | cell) = E_CM / (E_CM + E_CF).

This is the limit of visit counting WITH multiplicity (a walk that stays on a
cell for three steps counts three visits); ``fate.path_visits`` counts once per
walk, so the two differ slightly on cells that walks linger on. Cost: one
(n, 2) sparse product per step per anchor day, seconds at 230K cells.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import sparse

from cardiac_jax.data import sequences


def _kernel(table: np.ndarray, count: np.ndarray) -> sparse.csr_matrix:
  """Row-stochastic (n, n) matrix of a neighbour table: uniform over each row's valid entries
  (``sequences._pick`` draws among the first ``count`` columns)."""
  n, k = table.shape
  valid = np.arange(k)[None, :] < count[:, None]
  rows = np.broadcast_to(np.arange(n)[:, None], (n, k))[valid]
  vals = np.broadcast_to((1.0 / count)[:, None], (n, k))[valid]
  return sparse.csr_matrix((vals, (rows, table[valid])), shape=(n, n))


def expected_visits(graph: sequences.WalkGraph, term_ids: Sequence[int],
                    length: int) -> np.ndarray:
  """Expected visits of every item by one backward walk from every terminal item.

  Args:
    graph: one split's ``temporal_graph``.
    term_ids: class ids of the terminal populations (the columns).
    length: steps per walk, paced as ``sequences.step_times``.

  Returns:
    (graph.size, len(term_ids)) float64: per item and terminal population, the
    expected number of steps that walks from that population's cells spend on
    the item (the anchor's own step included), summed over the anchors.
  """
  term_ids = np.asarray(term_ids)
  n = graph.size
  # Transposed kernels: mass flows from a cell to the neighbours it steps to.
  back_t = _kernel(graph.prev, graph.prev_count).T.tocsr()
  same_t = _kernel(graph.same, graph.same_count).T.tocsr()
  visits = np.zeros((n, term_ids.size))
  start = (graph.labels[:, None] == term_ids[None, :]).astype(np.float64)   # (n, C)
  for day in np.unique(graph.time_index[start.any(axis=1)]):   # a handful of days
    mass = start * (graph.time_index == day)[:, None]
    visits += mass
    targets = sequences.step_times(np.asarray([day]), length)[0]
    for s in range(length - 2, -1, -1):
      later = ((graph.time_index > targets[s]) & graph.has_prev)[:, None]
      mass = back_t @ (mass * later) + same_t @ (mass * ~later)
      while np.any(mass * later):   # a step that skips several days keeps going back
        mass = back_t @ (mass * later) + mass * ~later
      visits += mass
  return visits


def fate_probabilities(visits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Rows of ``visits`` normalised to sum to one, and the mask of rows with any mass."""
  total = visits.sum(axis=1)
  reached = total > 0
  probs = np.zeros_like(visits, dtype=np.float64)
  probs[reached] = visits[reached] / total[reached, None]
  return probs, reached
