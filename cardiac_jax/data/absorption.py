"""Exact fate labels: the noise-free limit of the backward walks' visit counts,
and (``forward_absorption``) the absorption probabilities of a forward chain.

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

``forward_absorption`` asks the question the other way round, as CellRank does:
from a cell, where does a chain that moves forward in time end, CM or CF? Its
steps go to same-day neighbours or to the next day's cells whose previous-day
table holds the cell (the backward tables reversed, so no new search), and it
stops at the first terminal cell. The visit labels weigh a progenitor by how
much terminal mass flows back through it; the forward chain gives every cell
the probability of its own future, which is what a user asks.
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


def _forward_kernel(graph: sequences.WalkGraph, same_weight: float) -> sparse.csr_matrix:
  """Row-stochastic forward chain: ``same_weight`` to the same-day table, the rest spread
  over the next-day cells that hold the cell in their previous-day table (cells none holds
  stay within their day)."""
  n = graph.size
  back = _kernel(graph.prev, graph.prev_count)
  back = back.multiply(graph.has_prev[:, None]).tocsr()      # day 0's prev is its own day
  ahead = (back.T > 0).astype(np.float64).tocsr()
  out_degree = np.asarray(ahead.sum(axis=1)).ravel()
  has_next = out_degree > 0
  ahead = sparse.diags(np.where(has_next, 1.0 / np.maximum(out_degree, 1), 0.0)) @ ahead
  same = _kernel(graph.same, graph.same_count)
  w = np.where(has_next, same_weight, 1.0)
  return (sparse.diags(w) @ same + sparse.diags(1.0 - w) @ ahead).tocsr()


def forward_absorption(graph: sequences.WalkGraph, term_ids: Sequence[int],
                       same_weight: float = 0.5, tol: float = 1e-6,
                       max_steps: int = 5000) -> np.ndarray:
  """Probability that the forward chain from each item is absorbed in each terminal population.

  Args:
    graph: one split's ``temporal_graph``.
    term_ids: class ids of the terminal populations (the columns).
    same_weight: the chance of a same-day step for a cell that has a next day.
    tol: stop when no probability grows by more than this in a step.
    max_steps: at most this many steps (the probabilities grow monotonically
      towards their limit, so stopping early only undercounts).

  Returns:
    (graph.size, len(term_ids)) float64; terminal items are one-hot, items from
    which no terminal cell is reachable are zero.
  """
  if not 0.0 <= same_weight < 1.0:
    raise ValueError(f"same_weight must be in [0, 1), got {same_weight}")
  term_ids = np.asarray(term_ids)
  hit = (graph.labels[:, None] == term_ids[None, :]).astype(np.float64)
  absorbed = hit.any(axis=1)
  chain = sparse.diags((~absorbed).astype(np.float64)) @ _forward_kernel(graph, same_weight)
  probs = hit.copy()
  for _ in range(max_steps):
    new = chain @ probs + hit
    grown = float(np.max(new - probs, initial=0.0))
    probs = new
    if grown < tol:
      break
  return probs


def fate_probabilities(visits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Rows of ``visits`` normalised to sum to one, and the mask of rows with any mass."""
  total = visits.sum(axis=1)
  reached = total > 0
  probs = np.zeros_like(visits, dtype=np.float64)
  probs[reached] = visits[reached] / total[reached, None]
  return probs, reached
