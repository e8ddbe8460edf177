"""Adaptive model and training sizes, and validation of sizes that cannot work.

Small datasets overfit a large model quickly, so width, depth, batch size and
epochs grow with the number of sequences unless the config sets them.
"""
from __future__ import annotations

import ml_collections

from cardiac_jax import models
from cardiac_jax.errors import ConfigError

__all__ = ["ConfigError", "adaptive_settings", "resolve_config"]

SMALL_MAX = 2_000      # n < SMALL_MAX: small
LARGE_MIN = 5_000      # n > LARGE_MIN: large; SMALL_MAX <= n <= LARGE_MIN: medium

# (width, depth, batch_size, num_epochs) per bracket.
# Measured on scale1 (docs/results/recipe.md): with the anchor-aimed regularisers a
# width-64, depth-2 model (110K parameters) matches the design's original 160 x 3
# (952K) on validation at a fraction of the cost per epoch, and its best epoch
# comes late (38-40 of 40), so the regularisation ramps run their course.
_BRACKETS = {
    "small": (48, 2, 16, 40),
    "medium": (64, 2, 24, 40),
    "large": (64, 2, 32, 40),
}

# Where each adaptive setting lives in the config.
_FIELDS = {
    "width": ("model", "width"),
    "depth": ("model", "depth"),
    "batch_size": ("train", "batch_size"),
    "num_epochs": ("train", "num_epochs"),
}


def adaptive_settings(n_sequences: int) -> dict[str, int]:
  """Sizes for a dataset of ``n_sequences`` sequences (all splits).

  Brackets: n < 2,000 → small; 2,000 <= n <= 5,000 → medium (both ends
  inclusive); n > 5,000 → large.
  """
  if n_sequences < 0:
    raise ConfigError(f"n_sequences must be >= 0, got {n_sequences}.")
  if n_sequences < SMALL_MAX:
    bracket = "small"
  elif n_sequences <= LARGE_MIN:
    bracket = "medium"
  else:
    bracket = "large"
  return dict(zip(_FIELDS, _BRACKETS[bracket]))


def _nearest_divisor(width: int, target: int) -> int:
  divisors = [d for d in range(1, width + 1) if width % d == 0]
  return min(divisors, key=lambda d: (abs(d - target), d))


def _validate(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError naming the field and the fix for any unusable size."""
  m, t = config.model, config.train
  for name, value in (("model.width", m.width), ("model.depth", m.depth),
                      ("model.num_heads", m.num_heads), ("model.mlp_ratio", m.mlp_ratio),
                      ("train.batch_size", t.batch_size),
                      ("train.num_epochs", t.num_epochs)):
    if value <= 0:
      raise ConfigError(f"{name}={value} must be a positive integer.")
  if m.width % m.num_heads:
    raise ConfigError(
        f"model.num_heads={m.num_heads} does not divide model.width={m.width}; "
        f"use model.num_heads={_nearest_divisor(m.width, m.num_heads)} or a width "
        f"that is a multiple of {m.num_heads}.")
  for name, rate in (("model.dropout_min", m.dropout_min),
                     ("model.dropout_max", m.dropout_max),
                     ("model.attention_dropout", m.attention_dropout),
                     ("model.input_dropout", m.get("input_dropout", 0.0)),
                     ("model.step_dropout", m.get("step_dropout", 0.0)),
                     ("model.branch_dropout", m.get("branch_dropout", 0.0))):
    if not 0.0 <= rate < 1.0:
      raise ConfigError(f"{name}={rate} must be in [0, 1).")
  if t.get("average_epochs", 0.0) < 0.0:
    raise ConfigError(f"train.average_epochs={t.average_epochs} must be >= 0 "
                      "(0 = evaluate the trained weights, no average).")
  if m.get("feature_noise", 0.0) < 0.0:
    raise ConfigError(f"model.feature_noise={m.feature_noise} must be >= 0.")
  if m.norm not in models.NORMS:
    raise ConfigError(f"model.norm={m.norm!r} is unknown; choose one of {models.NORMS}.")
  if m.get("pooling", "mean_last") not in models.POOLINGS:
    raise ConfigError(f"model.pooling={m.pooling!r} is unknown; choose one of "
                      f"{models.POOLINGS}.")
  models.resolve_dtype(m.dtype)   # raises ConfigError for unknown names


def resolve_config(config: ml_collections.ConfigDict,
                   n_sequences: int) -> ml_collections.ConfigDict:
  """Returns a copy with the adaptive sizes filled in and every size validated.

  Explicit (non-None) values always win. With ``train.auto_scale`` false a
  missing size is an error rather than a silent default. The input config is
  not modified.
  """
  config = config.copy_and_resolve_references()
  auto = adaptive_settings(n_sequences)
  for key, (section, field) in _FIELDS.items():
    if config[section][field] is not None:
      continue
    if not config.train.auto_scale:
      raise ConfigError(
          f"{section}.{field} is None and train.auto_scale is False; set "
          f"--config.{section}.{field} or enable --config.train.auto_scale.")
    config[section][field] = auto[key]
  _validate(config)
  return config
