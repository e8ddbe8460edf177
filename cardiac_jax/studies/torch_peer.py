"""The default sequence model and its training step in PyTorch, for ``bench_torch`` only.

Imported only where torch is installed (the ``torch`` extra: a venv of its own);
nothing in the package imports it. It is ``models.SequenceClassifier`` and
``steps.train_step`` with ``optim.make_optimizer``'s chain, layer for layer and
operation for operation, so the two frameworks time the same arithmetic:

=============================================  =============================================
JAX / Flax (cardiac_jax)                        here
=============================================  =============================================
``models.SequenceClassifier`` (norm "batch",    ``SequenceClassifier`` (the same options
pooling "mean_last", positions "learned",       only; anything else raises)
cell_head)
``_norm("batch")``: ``nn.BatchNorm(mask=...)``  ``MaskedBatchNorm``: mean and E[x^2] - mean^2
statistics over visible steps, momentum 0.9,    over visible steps (flax's fast variance),
eps 1e-5, running stats in float32              the same momentum, eps and running update
``Dropout`` (hashed uint16 masks, inverted)     ``F.dropout`` (torch's bernoulli, inverted):
                                                 the same expectation, another generator
``SelfAttention``: ``DenseGeneral`` W ->        ``nn.Linear(W, 3*H*D)``; q * D**-0.5;
(3, H, D); einsum scores; keys masked with      ``einsum`` scores; ``masked_fill`` with
finfo.min; softmax (float32); einsum values;    finfo.min; softmax; einsum values;
``DenseGeneral`` (H, D) -> W                     ``nn.Linear(H*D, W)``
``nn.gelu`` (tanh approximation)                ``F.gelu(approximate="tanh")``
``drop_steps``, ``add_feature_noise``,          the same formulas, torch's generator
``pool``, branch dropout, ``cell_norm``
(BatchNorm without scale/bias), ``cell_head``
``steps.cross_entropy`` (optax.smooth_labels)   ``cross_entropy``: (1 - a) one-hot + a / C
``optim.make_optimizer``: clip_by_global_norm   ``adamw_update``: the same chain written out
-> scale_by_adam -> add_decayed_weights          with ``torch._foreach_*`` (the kernels of
(kernels only, scheduled) -> scale_by_lr        torch.optim.AdamW's foreach path); lr, wd and
(scheduled)                                     smoothing are 0-d tensors per step
=============================================  =============================================

Parameter names follow Flax's tree (``block_0/attn/qkv/kernel`` ...), so
``load_flax_params`` copies a JAX initialisation in and the two give the same
eval-mode logits (``tests/test_bench_torch.py``, ``bench_torch``'s check).

``bench_torch`` runs the timing side as ``python -m cardiac_jax.studies.torch_peer SPEC
RESULT`` (``run_worker``: a JSON spec in, a JSON result out), a process of its own that
imports neither JAX nor Flax.
"""
from __future__ import annotations

import json
import sys
import time
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

_NEG = torch.finfo(torch.float32).min


class MaskedBatchNorm(nn.Module):
  """Flax's ``nn.BatchNorm(mask=...)`` in training and evaluation."""

  def __init__(self, width: int, affine: bool = True, momentum: float = 0.9,
               eps: float = 1e-5):
    super().__init__()
    self.momentum, self.eps = momentum, eps
    self.scale = nn.Parameter(torch.ones(width)) if affine else None
    self.bias = nn.Parameter(torch.zeros(width)) if affine else None
    self.register_buffer("mean", torch.zeros(width))
    self.register_buffer("var", torch.ones(width))

  def forward(self, h: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """``h`` (..., W); ``weight`` (..., 1) float, 1 = visible step (None = all)."""
    if self.training:
      dims = tuple(range(h.dim() - 1))
      if weight is None:
        mean, mean2 = h.mean(dims), (h * h).mean(dims)
      else:
        count = weight.sum(dims)
        mean, mean2 = (h * weight).sum(dims) / count, (h * h * weight).sum(dims) / count
      var = torch.clamp(mean2 - mean * mean, min=0.0)
      with torch.no_grad():
        self.mean.mul_(self.momentum).add_(mean.detach(), alpha=1 - self.momentum)
        self.var.mul_(self.momentum).add_(var.detach(), alpha=1 - self.momentum)
    else:
      mean, var = self.mean, self.var
    mul = torch.rsqrt(var + self.eps)
    if self.scale is not None:
      mul = mul * self.scale
    y = (h - mean) * mul
    return y + self.bias if self.bias is not None else y


class SelfAttention(nn.Module):
  """``models.SelfAttention`` with one fused QKV projection (``attention``: "einsum"
  mirrors the JAX code; "sdpa" is ``F.scaled_dot_product_attention``, same maths)."""

  def __init__(self, width: int, num_heads: int, attention: str = "einsum"):
    super().__init__()
    self.h, self.d, self.attention = num_heads, width // num_heads, attention
    self.qkv = nn.Linear(width, 3 * width)
    self.out = nn.Linear(width, width)

  def forward(self, h: torch.Tensor, key_visible: torch.Tensor) -> torch.Tensor:
    b, l, _ = h.shape
    qkv = self.qkv(h).view(b, l, 3, self.h, self.d)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]          # (B, L, H, D)
    mask = key_visible[:, None, None, :]                        # (B, 1, 1, L)
    if self.attention == "sdpa":
      out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                           v.transpose(1, 2), attn_mask=mask)
      out = out.transpose(1, 2)
    else:
      q = q * self.d**-0.5
      logits = torch.einsum("bqhd,bkhd->bhqk", q, k).masked_fill(~mask, _NEG)
      out = torch.einsum("bhqk,bkhd->bqhd", torch.softmax(logits, dim=-1), v)
    return self.out(out.reshape(b, l, self.h * self.d))


class Block(nn.Module):
  """``models.Block``: [norm -> attention -> dropout] + [norm -> MLP -> dropout]."""

  def __init__(self, width: int, num_heads: int, mlp_ratio: int, dropout_rate: float,
               attention: str):
    super().__init__()
    self.rate = dropout_rate
    self.norm_attn, self.norm_mlp = MaskedBatchNorm(width), MaskedBatchNorm(width)
    self.attn = SelfAttention(width, num_heads, attention)
    self.mlp_in = nn.Linear(width, mlp_ratio * width)
    self.mlp_out = nn.Linear(mlp_ratio * width, width)

  def forward(self, h, visible, weight):
    y = self.attn(self.norm_attn(h, weight), visible)
    h = h + F.dropout(y, self.rate, self.training)
    y = self.mlp_out(F.gelu(self.mlp_in(self.norm_mlp(h, weight)), approximate="tanh"))
    return h + F.dropout(y, self.rate, self.training)


def last_visible(visible: torch.Tensor) -> torch.Tensor:
  """``models.last_visible``: (B,) index of each row's last visible step."""
  return visible.shape[1] - 1 - torch.argmax(visible.flip(1).to(torch.int8), dim=1)


class SequenceClassifier(nn.Module):
  """``models.SequenceClassifier`` for the default options (see the module docstring)."""

  def __init__(self, *, num_classes: int, length: int, features: int, width: int,
               depth: int, num_heads: int, mlp_ratio: int, dropout_rates: Sequence[float],
               feature_noise: float, step_dropout: float, branch_dropout: float,
               attention: str = "einsum"):
    super().__init__()
    if len(dropout_rates) != depth:
      raise ValueError(f"{len(dropout_rates)} dropout rates for depth {depth}.")
    self.rates = tuple(float(r) for r in dropout_rates)
    self.feature_noise, self.step_dropout = feature_noise, step_dropout
    self.branch_dropout = branch_dropout
    self.embed = nn.Linear(features, width)
    self.norm_embed = MaskedBatchNorm(width)
    self.pos_embedding = nn.Parameter(0.02 * torch.randn(length, width))
    self.blocks = nn.ModuleList(
        Block(width, num_heads, mlp_ratio, r, attention) for r in self.rates)
    self.norm_final = MaskedBatchNorm(width)
    self.head = nn.Linear(2 * width, num_classes)
    self.cell_norm = MaskedBatchNorm(features, affine=False)
    self.cell_head = nn.Linear(features, num_classes)

  def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``x`` (B, L, F), ``mask`` (B, L) 1 = visible -> logits (B, C)."""
    b, l, _ = x.shape
    visible = mask > 0
    rows = torch.arange(b, device=x.device)
    cell_x = torch.where(visible.any(1, keepdim=True), x[rows, last_visible(visible)], 0.0)
    if self.training and self.step_dropout > 0.0:
      is_last = torch.arange(l, device=x.device)[None, :] == last_visible(visible)[:, None]
      keep = torch.rand(visible.shape, device=x.device) >= self.step_dropout
      visible = visible & (keep | is_last)
    weight = visible[:, :, None].to(x.dtype)
    if self.training and self.feature_noise > 0.0:
      x = add_feature_noise(x, weight, self.feature_noise)
    h = self.norm_embed(self.embed(x), weight) + self.pos_embedding[None, :l]
    for block in self.blocks:
      h = block(h, visible, weight)
    h = self.norm_final(h, weight)
    count = torch.clamp(weight.sum(1), min=1.0)
    mean = (h * weight).sum(1) / count
    last = torch.where(visible.any(1, keepdim=True), h[rows, last_visible(visible)], 0.0)
    pooled = F.dropout(torch.cat([mean, last], dim=-1), self.rates[-1], self.training)
    logits = self.head(pooled)
    if self.training and self.branch_dropout > 0.0:
      logits = logits * F.dropout(torch.ones(b, 1, device=x.device), self.branch_dropout)
    return logits + self.cell_head(self.cell_norm(cell_x))


def add_feature_noise(x: torch.Tensor, weight: torch.Tensor, scale: float) -> torch.Tensor:
  """``models.add_feature_noise``: noise on the expression columns (all but the last two)
  in units of each one's standard deviation over the batch's visible steps."""
  n_expr = x.shape[-1] - 2
  xf = x[..., :n_expr]
  count = torch.clamp(weight.sum((0, 1)), min=1.0)
  mean = (xf * weight).sum((0, 1)) / count
  std = torch.sqrt(((xf - mean) ** 2 * weight).sum((0, 1)) / count)
  noise = torch.randn_like(xf) * std * scale * weight
  return torch.cat([xf + noise, x[..., n_expr:]], dim=-1)


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor,
                  smoothing: torch.Tensor) -> torch.Tensor:
  """``steps.cross_entropy`` per example: against (1 - a) one-hot + a / C."""
  c = logits.shape[-1]
  targets = F.one_hot(labels.long(), c).to(logits.dtype) * (1 - smoothing) + smoothing / c
  return -(targets * torch.log_softmax(logits, dim=-1)).sum(-1)


def decayed(name: str) -> bool:
  """``optim.kernel_mask``: Dense kernels decay; biases, norms, positions do not."""
  return name.endswith("weight") and "norm" not in name


class AdamW:
  """``optim.make_optimizer``'s chain (without the optional parameter average):
  clip_by_global_norm -> scale_by_adam (eps outside the root) -> add_decayed_weights
  (kernels) -> scale by -lr. ``update`` returns (grad norm, update norm) as tensors."""

  def __init__(self, named_params: Sequence[tuple[str, torch.Tensor]], *, clip_norm: float,
               b1: float, b2: float, eps: float):
    self.params = [p for _, p in named_params]
    self.decay = [p for n, p in named_params if decayed(n)]
    self.decay_index = [i for i, (n, _) in enumerate(named_params) if decayed(n)]
    self.clip_norm, self.b1, self.b2, self.eps = clip_norm, b1, b2, eps
    self.m = [torch.zeros_like(p) for p in self.params]
    self.v = [torch.zeros_like(p) for p in self.params]
    self.count = torch.zeros(())

  @torch.no_grad()
  def update(self, lr: torch.Tensor, wd: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    grads = [p.grad for p in self.params]
    g_norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    if self.clip_norm > 0:
      grads = torch._foreach_mul(grads, torch.where(g_norm < self.clip_norm, 1.0,
                                                    self.clip_norm / g_norm))
    torch._foreach_lerp_(self.m, grads, 1 - self.b1)
    torch._foreach_mul_(self.v, self.b2)
    torch._foreach_addcmul_(self.v, grads, grads, value=1 - self.b2)
    self.count.add_(1)
    m_hat = torch._foreach_div(self.m, 1 - self.b1**self.count)
    v_hat = torch._foreach_div(self.v, 1 - self.b2**self.count)
    torch._foreach_sqrt_(v_hat)
    torch._foreach_add_(v_hat, self.eps)
    updates = torch._foreach_div(m_hat, v_hat)
    decay_updates = [updates[i] for i in self.decay_index]
    torch._foreach_add_(decay_updates, torch._foreach_mul(self.decay, wd))
    torch._foreach_mul_(updates, -lr)
    u_norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(updates)))
    torch._foreach_add_(self.params, updates)
    return g_norm, u_norm


def flax_name(name: str) -> str:
  """A torch parameter or buffer name -> its path in Flax's variables (``/``-joined)."""
  parts = name.replace("blocks.", "block_").split(".")
  leaf = parts[-1]
  path = parts[:-1]
  return "/".join(path + ["kernel" if leaf == "weight" else leaf])


def torch_layout(key: str, value: np.ndarray) -> np.ndarray:
  """A Flax variable (``key`` its path) in the layout of its torch tensor: kernels
  flattened to (in, out) (the attention's (W, 3, H, D) and (H, D, W) included) and
  transposed to ``nn.Linear``'s (out, in); biases flattened."""
  value = np.array(value, np.float32)                        # a writable copy
  if key.endswith("kernel"):
    flat = (value.reshape(-1, value.shape[-1]) if key.endswith("attn/out/kernel")
            else value.reshape(value.shape[0], -1))
    return np.ascontiguousarray(flat.T)
  return value.reshape(-1) if key.endswith("bias") else value


def load_flax_params(model: SequenceClassifier, flat: dict[str, np.ndarray]) -> None:
  """Copies Flax variables (``{"params/block_0/attn/qkv/kernel": array, ...}``, batch
  statistics under ``batch_stats/``) into ``model``; every torch tensor must be found."""
  state = model.state_dict()
  for name, tensor in state.items():
    is_stat = name.endswith((".mean", ".var"))
    key = ("batch_stats/" if is_stat else "params/") + flax_name(name)
    if key not in flat:
      raise KeyError(f"{name}: no {key} among the Flax variables")
    value = torch_layout(key, flat[key])
    if tuple(value.shape) != tuple(tensor.shape):
      raise ValueError(f"{name}: shape {tuple(tensor.shape)} vs Flax {key} {value.shape}")
    state[name] = torch.from_numpy(value)
  model.load_state_dict(state)


def build(spec: dict[str, Any], attention: str = "einsum") -> SequenceClassifier:
  """The model for a ``bench_torch.model_spec`` dict."""
  return SequenceClassifier(
      num_classes=spec["num_classes"], length=spec["length"], features=spec["features"],
      width=spec["width"], depth=spec["depth"], num_heads=spec["num_heads"],
      mlp_ratio=spec["mlp_ratio"], dropout_rates=spec["dropout_rates"],
      feature_noise=spec["feature_noise"], step_dropout=spec["step_dropout"],
      branch_dropout=spec["branch_dropout"], attention=attention)


def matmul_gflops(n: int, repeats: int = 5) -> float:
  """Best-of-``repeats`` GFLOP/s of a float32 n x n @ n x n product (torch's reference)."""
  a = torch.randn(n, n, generator=torch.Generator().manual_seed(0))
  a @ a
  best = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    a @ a
    best = min(best, time.perf_counter() - t0)
  return 2 * n**3 / best / 1e9


def make_step(model: SequenceClassifier, opt: AdamW, compiled: bool):
  """One training step as ``steps.train_step`` does it, metric sums kept on the device:
  forward in training mode, the mean smoothed loss's gradients, the optimizer update."""
  def loss_fn(x, mask, y, smoothing):
    logits = model(x, mask)
    loss = cross_entropy(logits, y, smoothing)
    return loss.mean(), loss.sum().detach(), (logits.argmax(-1) == y).sum().to(loss.dtype)

  forward = torch.compile(loss_fn) if compiled else loss_fn
  update = torch.compile(opt.update) if compiled else opt.update

  def step(x, mask, y, smoothing, lr, wd, sums):
    for p in opt.params:
      p.grad = None
    mean, loss_sum, correct = forward(x, mask, y, smoothing)
    mean.backward()
    g_norm, u_norm = update(lr, wd)
    sums += torch.stack([loss_sum, correct, g_norm, u_norm])
  return step


def run_worker(spec: dict[str, Any]) -> dict[str, Any]:
  """Times ``spec["mode"]`` ("torch_eager" | "torch_compile") on the spec's batches:
  ``warmup`` untimed calls, then ``repeats`` timed ones, each ``steps`` optimizer steps
  ending in one host sync (like one JAX epoch call)."""
  torch.set_num_threads(int(spec["threads"]))
  torch.manual_seed(int(spec.get("seed", 0)))
  inputs = np.load(spec["inputs"])
  model = build(spec["model"], spec.get("attention", "einsum"))
  load_flax_params(model, {k[len("var:"):]: inputs[k] for k in inputs.files
                           if k.startswith("var:")})
  x_all = torch.from_numpy(inputs["x"])
  mask_all, y_all = torch.from_numpy(inputs["mask"]), torch.from_numpy(inputs["y"]).long()
  idx = torch.from_numpy(inputs["idx"]).long()
  check = idx[0]
  model.eval()
  with torch.no_grad():
    logits = model(x_all[check], mask_all[check]).numpy()
  check_diff = float(np.max(np.abs(logits - inputs["eval_logits"])))
  model.train()

  opt = AdamW(list(model.named_parameters()), clip_norm=spec["clip_norm"], b1=spec["b1"],
              b2=spec["b2"], eps=spec["eps"])
  step = make_step(model, opt, spec["mode"] == "torch_compile")
  lr, wd, smoothing = (torch.from_numpy(inputs[k]) for k in ("lr", "wd", "smoothing"))
  steps, t = int(idx.shape[0]), 0

  def call():
    nonlocal t
    sums = torch.zeros(4)
    for s in range(steps):
      b = idx[s]
      step(x_all[b], mask_all[b], y_all[b], smoothing[t], lr[t], wd[t], sums)
      t += 1
    return sums.tolist()                                       # the one host sync

  mm_before = matmul_gflops(spec["matmul_n"])
  t0 = time.perf_counter()
  for _ in range(int(spec["warmup"])):
    call()
  warmup_s = time.perf_counter() - t0
  times, last = [], None
  for _ in range(int(spec["repeats"])):
    t0 = time.perf_counter()
    last = call()
    times.append(time.perf_counter() - t0)
  mm = max(mm_before, matmul_gflops(spec["matmul_n"]))
  return {"mode": spec["mode"], "times_s": times, "warmup_s": warmup_s,
          "matmul_gflops": mm, "eval_logits_max_abs_diff": check_diff,
          "last_call_sums": dict(zip(("loss", "correct", "grad_norm", "update_norm"), last)),
          "threads": torch.get_num_threads(), "torch": torch.__version__}


if __name__ == "__main__":
  with open(sys.argv[1]) as f:
    _result = run_worker(json.load(f))
  with open(sys.argv[2], "w") as f:
    json.dump(_result, f)
