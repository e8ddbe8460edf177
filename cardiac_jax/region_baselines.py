"""Baselines of the spatial-regions task, on the SAME spots, graph and splits as the model.

Why: a region is decided by a spot's neighbourhood, so the yardsticks are the
ways the field already reads a neighbourhood. Each is fitted on the training
spots, tunes its one setting on the validation spots and is scored on the test
spots; the graph is the model's (``data.regions.split_adjacency``: 6 hex
neighbours, never across sections or splits), so a test spot's features never
see a training spot.

- ``logreg_spot``: logistic regression on the spot's own PCs (the per-spot
  classifier: what a sequence must beat to have earned its place).
- ``logreg_rings``: the same on the spot's PCs concatenated with the mean PCs of
  its neighbours 1, 2 and 3 hops away (``ring_means``; the neighbourhood
  aggregation behind CellCharter, Varrone et al. 2024).
- ``smoothed_spot``: ``logreg_spot``'s probabilities averaged over the spots
  within r hops (r = 1, 2 or 3 on validation): label smoothing on the graph.
- ``gnn``: a graph neural network in Flax (GraphSAGE-style mean aggregation, 2
  or 3 message-passing layers on validation), trained on the full training
  graph, its weights taken at the epoch of best validation accuracy (early
  stopping): the standard model for this task (e.g. STELLAR, SpaGCN's family).

Every function is pure (arrays in, arrays out); the GNN's epochs run as one
jitted ``lax.scan``.
"""
from __future__ import annotations

import functools
import time
from typing import Any, Sequence

from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy.sparse as sp
import threadpoolctl

from cardiac_jax import baselines
from cardiac_jax.data import splits as splits_lib

BASELINES = ("logreg_spot", "logreg_rings", "smoothed_spot", "gnn")
DESCRIPTIONS = {
    "logreg_spot": "logistic regression on the spot's own PCs (per-spot classifier)",
    "logreg_rings": ("logistic regression on the spot's PCs and the mean PCs of its "
                     "neighbours at 1, 2 and 3 hops (CellCharter-style aggregation)"),
    "smoothed_spot": ("per-spot logistic regression probabilities averaged over the spots "
                      "within r hops (r chosen on validation)"),
    "gnn": ("graph neural network (Flax, GraphSAGE mean aggregation, 2-3 layers chosen on "
            "validation), full-graph training, weights of the best validation epoch"),
}
RINGS = 3                   # ring means at hops 1..RINGS
SMOOTH_HOPS = (1, 2, 3)
GNN_LAYERS = (2, 3)
GNN_WIDTH = 64
GNN_DROPOUT = 0.5
# The standard full-graph recipe (Kipf & Welling 2017; Hamilton et al. 2017's GraphSAGE
# examples): lr 0.01, weight decay 5e-4, dropout 0.5, 200 epochs; not tuned here.
GNN_LEARNING_RATE = 1e-2
GNN_WEIGHT_DECAY = 5e-4
GNN_EPOCHS = 200


# ---------------------------------------------------------------- graph features


def hop_reach(adj: sp.csr_matrix, max_hops: int) -> list[sp.csr_matrix]:
  """0/1 matrices of the spots within h hops (the spot itself included), h = 0..max_hops."""
  n = adj.shape[0]
  step = (adj + sp.identity(n, format="csr")).astype(bool).astype(np.float32).tocsr()
  reach = [sp.identity(n, dtype=np.float32, format="csr")]
  for _ in range(max_hops):
    nxt = (reach[-1] @ step).tocsr()
    nxt.data[:] = 1.0
    reach.append(nxt)
  return reach


def row_mean(m: sp.csr_matrix) -> sp.csr_matrix:
  """``m`` with every non-empty row scaled to sum to 1 (a mean over its entries)."""
  total = np.asarray(m.sum(axis=1)).ravel()
  return (sp.diags(np.where(total > 0, 1.0 / np.maximum(total, 1e-12), 0.0)) @ m).tocsr()


def ring_means(x: np.ndarray, adj: sp.csr_matrix, rings: int = RINGS) -> np.ndarray:
  """(n, rings * F): the mean of ``x`` over the spots exactly h hops away, h = 1..rings.

  A spot with nobody at hop h (a section's edge, a lone spot) gets zeros there,
  the training mean of standardised features.
  """
  reach = hop_reach(adj, rings)
  return np.concatenate([row_mean(reach[h] - reach[h - 1]) @ x for h in range(1, rings + 1)],
                        axis=1).astype(np.float32)


def standardise(x: np.ndarray, train: np.ndarray) -> np.ndarray:
  """``x`` scaled with the mean / std of the TRAINING rows only."""
  mean = x[train].mean(axis=0)
  std = x[train].std(axis=0)
  return ((x - mean) / np.where(std > 0, std, 1.0)).astype(np.float32)


# ---------------------------------------------------------------- GNN


def neighbour_table(adj: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
  """(n, K) int32 neighbours of each spot (K = the largest degree; padded with the spot
  itself) and (n, K) float32 weights 1 / degree (0 on padding): the mean over a spot's
  neighbours as a gather, cheaper on a CPU than a scatter over the edges."""
  adj = sp.csr_matrix(adj)
  degree = np.diff(adj.indptr)
  k = max(int(degree.max(initial=0)), 1)
  n = adj.shape[0]
  table = np.repeat(np.arange(n, dtype=np.int32)[:, None], k, axis=1)
  valid = np.arange(k)[None, :] < degree[:, None]
  table[valid] = adj.indices
  weights = np.where(valid, 1.0 / np.maximum(degree, 1)[:, None], 0.0).astype(np.float32)
  return table, weights


class SpotGNN(nn.Module):
  """GraphSAGE-style: h <- relu(W_self h + W_nbr mean_neighbours(h)), then a linear head."""
  num_classes: int
  width: int = GNN_WIDTH
  layers: int = 2
  dropout: float = GNN_DROPOUT

  @nn.compact
  def __call__(self, x: jax.Array, neighbours: jax.Array, weights: jax.Array, *,
               train: bool) -> jax.Array:
    h = x
    for i in range(self.layers):
      h = nn.Dropout(self.dropout, deterministic=not train)(h)
      agg = jnp.einsum("nk,nkf->nf", weights, h[neighbours])    # mean over the neighbours
      h = nn.relu(nn.Dense(self.width, name=f"self_{i}")(h)
                  + nn.Dense(self.width, use_bias=False, name=f"nbr_{i}")(agg))
    h = nn.Dropout(self.dropout, deterministic=not train)(h)
    return nn.Dense(self.num_classes, name="head")(h)


@functools.partial(jax.jit, static_argnames=("model", "epochs"))
def train_gnn(rng: jax.Array, x: jax.Array, neighbours: jax.Array, weights: jax.Array,
              y: jax.Array, train_w: jax.Array, val_w: jax.Array, *,
              model: SpotGNN, epochs: int) -> tuple[Any, jax.Array, jax.Array]:
  """Full-graph training; returns (params of the best validation epoch, best val acc, epoch).

  One jitted scan over the epochs: each epoch is one AdamW step on the training
  nodes' loss, then an eval-mode pass scoring the validation nodes; the best
  parameters so far (validation accuracy, ties to the earlier epoch) ride in the
  carry, so early stopping costs no host round trip.
  """
  init_rng, drop_rng = jax.random.split(rng)
  params = model.init(init_rng, x, neighbours, weights, train=False)["params"]
  tx = optax.adamw(GNN_LEARNING_RATE, weight_decay=GNN_WEIGHT_DECAY)
  n_train, n_val = jnp.sum(train_w), jnp.sum(val_w)

  def loss_fn(p, key):
    logits = model.apply({"params": p}, x, neighbours, weights, train=True,
                         rngs={"dropout": key})
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    return jnp.sum(losses * train_w) / n_train

  def epoch(carry, i):
    p, opt, best_p, best_acc, best_epoch = carry
    grads = jax.grad(loss_fn)(p, jax.random.fold_in(drop_rng, i))
    updates, opt = tx.update(grads, opt, p)
    p = optax.apply_updates(p, updates)
    logits = model.apply({"params": p}, x, neighbours, weights, train=False)
    acc = jnp.sum((jnp.argmax(logits, -1) == y) * val_w) / n_val
    better = acc > best_acc
    best_p = jax.tree.map(lambda a, b: jnp.where(better, a, b), p, best_p)
    return (p, opt, best_p, jnp.where(better, acc, best_acc),
            jnp.where(better, i, best_epoch)), None

  init = (params, tx.init(params), params, jnp.asarray(-1.0), jnp.asarray(-1))
  (_, _, best_p, best_acc, best_epoch), _ = jax.lax.scan(epoch, init, jnp.arange(epochs))
  return best_p, best_acc, best_epoch


def gnn_probabilities(x: np.ndarray, adj: sp.csr_matrix, y: np.ndarray, split: np.ndarray,
                      num_classes: int, seed: int, layers: int,
                      epochs: int = GNN_EPOCHS) -> tuple[np.ndarray, dict[str, Any]]:
  """Class probabilities of every spot from a GNN trained on the training spots."""
  neighbours, weights = neighbour_table(adj)
  model = SpotGNN(num_classes=num_classes, layers=layers)
  args = (jnp.asarray(x, jnp.float32), jnp.asarray(neighbours), jnp.asarray(weights))
  params, val_acc, best_epoch = train_gnn(
      jax.random.key(seed), *args, jnp.asarray(np.maximum(y, 0), jnp.int32),
      jnp.asarray(split == 0, jnp.float32), jnp.asarray(split == 1, jnp.float32),
      model=model, epochs=int(epochs))
  logits = model.apply({"params": params}, *args, train=False)
  return (np.asarray(jax.nn.softmax(logits, axis=-1)),
          {"layers": layers, "best_epoch": int(best_epoch) + 1, "val_acc": float(val_acc)})


# ---------------------------------------------------------------- the baselines


def _rows(split: np.ndarray) -> dict[str, np.ndarray]:
  rows = {name: np.flatnonzero(split == sid) for name, sid in splits_lib.SPLIT_IDS.items()}
  empty = [name for name, r in rows.items() if r.size == 0]
  if empty:
    raise ValueError(f"no spot in split(s) {empty}; region baselines need all three")
  return rows


def _logreg(x: np.ndarray, labels: np.ndarray, rows: dict[str, np.ndarray],
            seed: int) -> tuple[dict[str, Any], np.ndarray]:
  """``baselines.logreg`` on spot features; probabilities of the val and test spots."""
  selected, pred = baselines.logreg({s: x[r] for s, r in rows.items()},
                                    {s: labels[r] for s, r in rows.items()}, seed)
  probs = np.full((x.shape[0], int(labels.max()) + 1), np.nan, np.float32)
  for s in ("val", "test"):
    probs[rows[s]] = pred[f"{s}_probs"]
  return selected, probs


def run_baselines(pcs: np.ndarray, labels: np.ndarray, split: np.ndarray,
                  adj: sp.csr_matrix, class_names: Sequence[str], *, seed: int = 0,
                  names: Sequence[str] = BASELINES, gnn_epochs: int = GNN_EPOCHS,
                  max_threads: int | None = baselines.MAX_THREADS
                  ) -> tuple[dict[str, dict[str, Any]], dict[str, np.ndarray]]:
  """Fits, tunes and scores the named baselines on the spots of one split assignment.

  Args:
    pcs: (n, F) spot features (the model's PCs).
    labels: (n,) region per spot.
    split: (n,) split id per spot (``splits.UNUSED`` spots are ignored).
    adj: (n, n) the spot graph within splits (``data.regions.split_adjacency``).
    class_names: region names.
    seed: random state of the fits.
    names: a subset of ``BASELINES``.
    gnn_epochs: the GNN's epochs (its weights are those of the best validation epoch).
    max_threads: BLAS / OpenMP thread cap for scikit-learn.

  Returns:
    ({name: {"description", "selected", "val_acc", "test_acc", "val_macro_f1",
    "test_macro_f1", "per_class_acc" (test), "seconds"}},
    {name: (n, C) probabilities, NaN rows outside val and test}).
  """
  unknown = [n for n in names if n not in BASELINES]
  if unknown:
    raise ValueError(f"unknown region baselines {unknown}; choose from {BASELINES}")
  split = np.asarray(split)
  labels = np.asarray(labels, np.int64)
  rows = _rows(split)
  used = split >= 0
  x = standardise(np.asarray(pcs, np.float32), rows["train"])
  x[~used] = 0.0
  num_classes = len(class_names)
  results, probs = {}, {}
  with threadpoolctl.threadpool_limits(max_threads):
    for name in names:
      start = time.perf_counter()
      if name == "logreg_spot":
        selected, p = _logreg(x, labels, rows, seed)
      elif name == "logreg_rings":
        feats = np.concatenate([x, ring_means(x, adj)], axis=1)
        selected, p = _logreg(standardise(feats, rows["train"]), labels, rows, seed)
      elif name == "smoothed_spot":
        if "logreg_spot" in probs:
          spot_selected, spot = {"C": results["logreg_spot"]["selected"]["C"]}, probs["logreg_spot"]
        else:
          spot_selected, spot = _logreg(x, labels, rows, seed)
        reach = hop_reach(adj, max(SMOOTH_HOPS))
        filled = np.nan_to_num(spot)
        candidates = {h: row_mean(reach[h]) @ filled for h in SMOOTH_HOPS}
        val = rows["val"]
        hops = max(SMOOTH_HOPS, key=lambda h: (np.mean(
            np.argmax(candidates[h][val], 1) == labels[val]), -h))
        selected, p = {**spot_selected, "hops": hops}, candidates[hops]
      else:
        fits = [gnn_probabilities(x, adj, labels, split, num_classes, seed, k, gnn_epochs)
                for k in GNN_LAYERS]
        p, selected = max(fits, key=lambda f: f[1]["val_acc"])
      scores = {s: baselines.score(labels[rows[s]], np.argmax(p[rows[s]], axis=1), class_names)
                for s in ("val", "test")}
      results[name] = {
          "description": DESCRIPTIONS[name], "selected": selected,
          "val_acc": scores["val"]["acc"], "test_acc": scores["test"]["acc"],
          "val_macro_f1": scores["val"]["macro_f1"],
          "test_macro_f1": scores["test"]["macro_f1"],
          "per_class_acc": scores["test"]["per_class_acc"],
          "seconds": time.perf_counter() - start,
      }
      probs[name] = np.where(used[:, None], p, np.nan).astype(np.float32)
      logging.info("region baseline %s (%s): val %.4f test %.4f (%.1f s)", name, selected,
                   results[name]["val_acc"], results[name]["test_acc"],
                   results[name]["seconds"])
  return results, probs


def best_on_val(results: dict[str, dict[str, Any]]) -> str:
  """The baseline with the highest validation accuracy (ties: the earlier in ``BASELINES``)."""
  rank = {n: i for i, n in enumerate(BASELINES)}
  return max(sorted(results, key=lambda n: rank.get(n, len(rank))),
             key=lambda n: results[n]["val_acc"])
