"""The sequence classifier: a pre-norm Transformer encoder over cell sequences.

Hidden (masked) steps are excluded everywhere they could leak into the result:
as attention keys, from the BatchNorm statistics and from the pooled summary.
Parameters are float32; activations use the compute dtype; BatchNorm
statistics, the head, the logits (and so the softmax and loss) are float32.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp
import ml_collections
import numpy as np

from cardiac_jax.errors import ConfigError

NORMS = ("batch", "layer")
POOLINGS = ("mean", "last", "mean_last")
POSITIONS = ("learned", "none")
DTYPES = ("auto", "float32", "bfloat16")


def resolve_dtype(name: str) -> jnp.dtype:
  """Compute dtype for a config name.

  "auto" is bfloat16 on GPU/TPU, where it is native and halves memory traffic,
  and float32 on CPU, where bfloat16 is emulated and slower.
  """
  if name == "auto":
    return jnp.dtype(jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16)
  if name in ("float32", "bfloat16"):
    return jnp.dtype(name)
  raise ConfigError(f"model.dtype={name!r} is unknown; choose one of {DTYPES}.")


def dropout_rates(depth: int, lo: float, hi: float) -> tuple[float, ...]:
  """Per-block dropout rising linearly from ``lo`` (first) to ``hi`` (last block).

  Deeper blocks see more abstract, easier-to-memorise features, so they get
  the stronger regulariser. A single block uses ``lo``: with nothing deeper
  there is no progression to express and the milder rate is the safe default.
  """
  if depth <= 0:
    raise ConfigError(f"model.depth must be positive, got {depth}.")
  if depth == 1:
    return (float(lo),)
  return tuple(float(r) for r in np.linspace(lo, hi, depth))


def _norm(kind: str, dtype: Any, train: bool, name: str) -> Callable[[jax.Array, jax.Array], jax.Array]:
  """A norm layer as ``f(h, token_mask)``; BatchNorm takes stats over visible steps only.

  BatchNorm always reduces in float32 (flax's ``force_float32_reductions``) and
  keeps its running statistics in float32; only its output is in ``dtype``.
  """
  if kind == "batch":
    bn = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                      dtype=dtype, param_dtype=jnp.float32, name=name)
    return lambda h, token_mask: bn(h, mask=token_mask)
  ln = nn.LayerNorm(epsilon=1e-6, dtype=dtype, param_dtype=jnp.float32, name=name)
  return lambda h, token_mask: ln(h)


def _mix32(x: jax.Array) -> jax.Array:
  """A bijective 32-bit integer finaliser (Wellons' "lowbias32": full avalanche)."""
  x = x ^ (x >> 16)
  x = x * jnp.uint32(0x7FEB352D)
  x = x ^ (x >> 15)
  x = x * jnp.uint32(0x846CA68B)
  return x ^ (x >> 16)


def uniform16(rng: jax.Array, shape: Sequence[int]) -> jax.Array:
  """Uniform uint16 draws of ``shape``: two per 32-bit hash of a counter.

  Why not ``jax.random.bernoulli``: on CPU its threefry costs one 20-round
  hash per element, the largest non-matmul cost of a training step. Here
  ``rng`` (a normal JAX key, so the key derivation stays in the train loop)
  only seeds two words; each pair of draws is then its element counter passed
  twice through ``_mix32`` with those words in between (a few vector ops).
  The counter is built from per-axis iotas rather than a reshaped flat iota so
  that a batch-sharded mask is generated shard-locally under jit. Deterministic
  in ``rng`` and the same on every backend and device count.
  """
  *lead, last = shape
  half_shape = (*lead, (last + 1) // 2)
  counter = jnp.zeros(half_shape, jnp.uint32)
  stride = 1
  for axis in reversed(range(len(half_shape))):
    counter = counter + lax.broadcasted_iota(jnp.uint32, half_shape, axis) * jnp.uint32(stride)
    stride *= half_shape[axis]
  seed = jax.random.bits(rng, (2,), jnp.uint32)
  x = _mix32(_mix32(counter ^ seed[0]) + seed[1])
  draws = lax.bitcast_convert_type(x, jnp.uint16)            # (..., last/2, 2)
  return draws.reshape(*lead, 2 * half_shape[-1])[..., :last]


class Dropout(nn.Module):
  """Inverted dropout with masks from ``uniform16`` (see there for why).

  The keep probability is quantised to ``k / 65536`` (an error below 1e-5 for
  any rate) and kept values are scaled by exactly ``65536 / k``, so the layer
  stays unbiased. Draws its key from the "dropout" rng collection, like
  ``flax.linen.Dropout``.
  """
  rate: float
  deterministic: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if self.deterministic or self.rate == 0.0:
      return x
    keep = max(1, min(65536, int(round((1.0 - self.rate) * 65536))))
    if keep == 65536:
      return x
    kept = uniform16(self.make_rng("dropout"), x.shape) < jnp.uint16(keep)
    return jnp.where(kept, x * jnp.asarray(65536.0 / keep, x.dtype), jnp.zeros((), x.dtype))


class SelfAttention(nn.Module):
  """Multi-head self-attention with one fused QKV projection.

  One (W, 3, H, D) matmul instead of three keeps the CPU step cheaper; the
  softmax runs in float32 so bfloat16 logits cannot saturate it.
  """
  num_heads: int
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, h: jax.Array, attn_mask: jax.Array, *, train: bool) -> jax.Array:
    width = h.shape[-1]
    head_dim = width // self.num_heads
    qkv = nn.DenseGeneral((3, self.num_heads, head_dim), dtype=self.dtype,
                          param_dtype=jnp.float32, name="qkv")(h)
    # Heads moved ahead of the steps once, so both products below are plain batched
    # matmuls: XLA:CPU ran the "bqhd,bkhd->bhqk" form 2-3x slower (same result).
    q, k, v = (qkv[:, :, i].transpose(0, 2, 1, 3) for i in range(3))   # (B, H, L, D)
    q = q * jnp.asarray(head_dim**-0.5, self.dtype)
    logits = jnp.einsum("bhqd,bhkd->bhqk", q, k).astype(jnp.float32)
    logits = jnp.where(attn_mask, logits, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    if self.dropout_rate > 0.0:
      weights = Dropout(self.dropout_rate, deterministic=not train)(weights)
    out = jnp.einsum("bhqk,bhkd->bhqd", weights, v).transpose(0, 2, 1, 3)   # (B, L, H, D)
    return nn.DenseGeneral(width, axis=(-2, -1), dtype=self.dtype,
                           param_dtype=jnp.float32, name="out")(out)


class Block(nn.Module):
  """Pre-norm residual block: [norm → attention → dropout] + [norm → MLP → dropout]."""
  num_heads: int
  mlp_ratio: int
  dropout_rate: float
  attention_dropout: float
  norm: str
  dtype: Any

  @nn.compact
  def __call__(self, h, attn_mask, token_mask, *, train: bool):
    width = h.shape[-1]
    y = _norm(self.norm, self.dtype, train, "norm_attn")(h, token_mask)
    y = SelfAttention(self.num_heads, self.attention_dropout, self.dtype, name="attn")(
        y, attn_mask, train=train)
    h = h + Dropout(self.dropout_rate, deterministic=not train)(y)
    y = _norm(self.norm, self.dtype, train, "norm_mlp")(h, token_mask)
    y = nn.Dense(self.mlp_ratio * width, dtype=self.dtype, param_dtype=jnp.float32,
                 name="mlp_in")(y)
    y = nn.gelu(y)
    y = nn.Dense(width, dtype=self.dtype, param_dtype=jnp.float32, name="mlp_out")(y)
    return h + Dropout(self.dropout_rate, deterministic=not train)(y)


class SequenceClassifier(nn.Module):
  """Transformer encoder + masked mean pooling + linear head.

  Attributes:
    num_classes: output classes.
    length: maximum sequence length (rows of the position embedding).
    width: model width.
    depth: number of residual blocks.
    num_heads: attention heads (must divide ``width``).
    mlp_ratio: hidden width of the MLP as a multiple of ``width``.
    dropout_rates: one rate per block (see ``dropout_rates``); the last rate
      is also applied to the pooled summary before the head.
    attention_dropout: dropout on attention weights.
    input_dropout: dropout on the input features of every step (augmentation:
      the training paths share cells, so the blocks' dropout alone does not stop
      the model memorising them).
    feature_noise: training-only Gaussian noise on the expression features
      (every column but the last two, the day and the modality), in units of
      each feature's standard deviation over the batch's visible steps. Rare
      populations reuse few anchor cells many times; exact coordinates are then
      easy to memorise, a neighbourhood of them is not.
    step_dropout: training-only probability of hiding each visible step other
      than the last one (attention, norms and pooling all skip it): random
      sub-paths, so no single context step can be memorised.
    cell_head: a linear head on the last visible step's features, standardised
      with running statistics, added to the sequence logits. The model then
      contains a per-cell logistic regression and the Transformer learns what
      the path adds to it; in evaluation the sequence logits are scaled by the
      ``branch_gate`` variable (in "batch_stats"), which is chosen on the
      validation split after training, so the path counts only as far as it
      helps on held-out cells.
    branch_dropout: training-only probability of dropping the sequence branch's
      logits per example (with ``cell_head``), so the cell head must classify
      on its own and the sequence branch only corrects it.
    norm: "batch" (default; running stats in the "batch_stats" collection) or
      "layer".
    pooling: how the steps become one vector: "mean" over visible steps, "last"
      visible step, or "mean_last" (both, concatenated). The label is the
      population of the path's endpoint, so a plain mean dilutes the most
      informative step; "mean_last" keeps it and the path's context.
    positions: "learned" (a position embedding: a walk's steps are ordered) or
      "none" (the steps are a set, e.g. a clone's cells, whose order within a
      day means nothing; each step still carries its day feature).
    dtype: compute dtype; parameters stay float32.
  """
  num_classes: int
  length: int
  width: int
  depth: int
  num_heads: int
  mlp_ratio: int
  dropout_rates: Sequence[float]
  attention_dropout: float = 0.0
  input_dropout: float = 0.0
  feature_noise: float = 0.0
  step_dropout: float = 0.0
  cell_head: bool = False
  branch_dropout: float = 0.0
  norm: str = "batch"
  pooling: str = "mean_last"
  positions: str = "learned"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array, *, train: bool) -> jax.Array:
    """Maps ``x`` (B, L, F) with ``mask`` (B, L), 1 = visible, to float32 logits (B, C)."""
    if len(self.dropout_rates) != self.depth:
      raise ConfigError(f"{len(self.dropout_rates)} dropout rates for depth {self.depth}.")
    if self.norm not in NORMS:
      raise ConfigError(f"model.norm={self.norm!r} is unknown; choose one of {NORMS}.")
    if self.pooling not in POOLINGS:
      raise ConfigError(f"model.pooling={self.pooling!r} is unknown; choose one of {POOLINGS}.")
    if self.positions not in POSITIONS:
      raise ConfigError(f"model.positions={self.positions!r} is unknown; choose one of "
                        f"{POSITIONS}.")
    seq_len = x.shape[1]
    visible = mask > 0                                        # (B, L) bool
    # The cell head reads the clean last step: the noise below regularises the
    # sequence branch, a linear head needs no more than its weight decay.
    cell_x = pool(jnp.asarray(x, jnp.float32), visible, "last") if self.cell_head else None
    if train and self.step_dropout > 0.0:
      visible = drop_steps(self.make_rng("dropout"), visible, self.step_dropout)
    if train and self.feature_noise > 0.0:
      x = add_feature_noise(self.make_rng("dropout"), x, visible, self.feature_noise)
    token_mask = visible[:, :, None]                          # for BatchNorm stats
    attn_mask = visible[:, None, None, :]                     # (B, 1, 1, L) key padding

    x = Dropout(self.input_dropout, deterministic=not train)(x)
    h = nn.Dense(self.width, dtype=self.dtype, param_dtype=jnp.float32, name="embed")(x)
    h = _norm(self.norm, self.dtype, train, "norm_embed")(h, token_mask)
    if self.positions == "learned":
      pos = self.param("pos_embedding", nn.initializers.normal(0.02),
                       (self.length, self.width), jnp.float32)
      h = h + pos[None, :seq_len].astype(self.dtype)
    for i, rate in enumerate(self.dropout_rates):
      h = Block(self.num_heads, self.mlp_ratio, rate, self.attention_dropout, self.norm,
                self.dtype, name=f"block_{i}")(h, attn_mask, token_mask, train=train)
    h = _norm(self.norm, self.dtype, train, "norm_final")(h, token_mask)

    pooled = pool(h.astype(jnp.float32), visible, self.pooling)
    pooled = Dropout(self.dropout_rates[-1], deterministic=not train)(pooled)
    logits = nn.Dense(self.num_classes, dtype=jnp.float32, param_dtype=jnp.float32,
                      name="head")(pooled)
    if not self.cell_head:
      return logits
    # The sequence branch's weight in evaluation, chosen on validation after
    # training (train.select_branch_gate); 1 until then and always in training.
    gate = self.variable("batch_stats", "branch_gate", lambda: jnp.ones((), jnp.float32))
    if not train:
      logits = logits * gate.value
    if train and self.branch_dropout > 0.0:
      keep = Dropout(self.branch_dropout, name="branch_dropout")(
          jnp.ones((logits.shape[0], 1), jnp.float32))               # 0 or 1 / (1 - p)
      logits = logits * keep
    cell_x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                          use_bias=False, use_scale=False, dtype=jnp.float32,
                          param_dtype=jnp.float32, name="cell_norm")(cell_x)
    return logits + nn.Dense(self.num_classes, dtype=jnp.float32, param_dtype=jnp.float32,
                             name="cell_head")(cell_x)


def last_visible(visible: jax.Array) -> jax.Array:
  """(B,) index of each row's last visible step (L - 1 for a row with none)."""
  return visible.shape[1] - 1 - jnp.argmax(visible[:, ::-1], axis=1)


def drop_steps(rng: jax.Array, visible: jax.Array, rate: float) -> jax.Array:
  """Hides each visible step but the last with probability ``rate`` (random sub-paths)."""
  is_last = jnp.arange(visible.shape[1])[None, :] == last_visible(visible)[:, None]
  keep = jax.random.uniform(rng, visible.shape) >= rate
  return visible & (keep | is_last)


def add_feature_noise(rng: jax.Array, x: jax.Array, visible: jax.Array,
                      scale: float) -> jax.Array:
  """Gaussian noise on the expression columns (all but the day and modality), per
  feature in units of its standard deviation over the batch's visible steps."""
  n_expr = x.shape[-1] - 2
  w = visible[..., None].astype(jnp.float32)
  xf = x.astype(jnp.float32)[..., :n_expr]
  count = jnp.maximum(jnp.sum(w, axis=(0, 1)), 1.0)
  mean = jnp.sum(xf * w, axis=(0, 1)) / count
  std = jnp.sqrt(jnp.sum(jnp.square(xf - mean[None, None]) * w, axis=(0, 1)) / count)
  noise = jax.random.normal(rng, xf.shape, jnp.float32) * lax.stop_gradient(std[None, None])
  noise = noise * scale
  return jnp.asarray(x).at[..., :n_expr].add((noise * w).astype(x.dtype))


def pool(h: jax.Array, visible: jax.Array, pooling: str) -> jax.Array:
  """(B, L, W) -> (B, W) or (B, 2W) from visible steps only; all-hidden rows give zeros."""
  parts = []
  if pooling in ("mean", "mean_last"):
    count = jnp.maximum(jnp.sum(visible, axis=1, keepdims=True), 1).astype(h.dtype)
    parts.append(jnp.sum(jnp.where(visible[:, :, None], h, 0.0), axis=1) / count)
  if pooling in ("last", "mean_last"):
    picked = jnp.take_along_axis(h, last_visible(visible)[:, None, None], axis=1)[:, 0]
    parts.append(jnp.where(jnp.any(visible, axis=1, keepdims=True), picked, 0.0))
  return parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=-1)


def model_from_config(config: ml_collections.ConfigDict, num_classes: int,
                      length: int) -> SequenceClassifier:
  """Builds the classifier from a config already resolved by ``scaling.resolve_config``."""
  m = config.model
  return SequenceClassifier(
      num_classes=num_classes,
      length=length,
      width=m.width,
      depth=m.depth,
      num_heads=m.num_heads,
      mlp_ratio=m.mlp_ratio,
      dropout_rates=dropout_rates(m.depth, m.dropout_min, m.dropout_max),
      attention_dropout=m.attention_dropout,
      input_dropout=m.get("input_dropout", 0.0),
      feature_noise=m.get("feature_noise", 0.0),
      step_dropout=m.get("step_dropout", 0.0),
      cell_head=bool(m.get("cell_head", False)),
      branch_dropout=m.get("branch_dropout", 0.0),
      norm=m.norm,
      pooling=m.get("pooling", "mean_last"),
      positions=m.get("positions", "learned"),
      dtype=resolve_dtype(m.dtype),
  )


def count_params(params: Any) -> int:
  """Total number of scalar parameters in a pytree."""
  return int(sum(np.prod(p.shape) for p in jax.tree_util.tree_leaves(params)))
