"""Several models trained as one: ``train.num_members = K``.

Why: every honest verdict here needs several seeds, and an ensemble of seeds
is a standard way to generalise better; trained one after another each
costs a whole run (a compile, a data build, a process), and a small model
(32 x 80 tokens at width 64) cannot fill a GPU. So K members share one compiled
epoch: the train state gains a leading member axis, and the epoch runs over it
batched (``jax.vmap``, for a GPU) or member after member (``lax.map``, for a
CPU that one member already fills), as ``train.member_axis`` says.

Member k is the K = 1 run with ``seed + k``: its own init and dropout keys and
its own stratified data order (``default_rng([seed + k, epoch])``), so member k
equals the separate run of that seed up to float summation order (the tests
check it) and the members are as diverse as separate runs. Each member has its
own early stopping and best epoch; the run ends when every member has stopped.
A stopped member keeps being stepped (the member axis has no holes) but its metrics
are no longer recorded and its best weights are frozen. The best checkpoint
holds every member's own best weights (``merge_best``).

The ensemble predicts the mean of the members' probabilities.

Every run is a K-member run: the state always has the member axis, and the
callers never branch on K. What K = 1 must keep from the time before members
existed lives here and nowhere else: its compiled program is the single
model's (``over_members`` takes member 0 and puts the axis back, so the golden
numbers hold), its checkpoints, exports and stopping metadata are stored
without the axis (``to_storage`` / ``from_storage``: old workdirs resume, old
models load), and its report shows scalars, not lists of one (``unwrap``,
``epoch_record``, ``ensemble_scores``, ``summary``).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from cardiac_jax import monitor
from cardiac_jax.errors import ConfigError


def num_members(config: ml_collections.ConfigDict) -> int:
  """K of ``train.num_members`` (1 when absent: configs from before it existed)."""
  k = config.train.get("num_members", 1)
  k = 1 if k is None else int(k)
  if k < 1:
    raise ConfigError(f"train.num_members must be >= 1 (1 = one model; K > 1 trains K seeds "
                      f"together as an ensemble), got {k}.")
  return k


MEMBER_AXES = ("auto", "vmap", "map")


def member_axis(config: ml_collections.ConfigDict) -> str:
  """``train.member_axis`` resolved: "auto" is "map" on CPU and "vmap" elsewhere.

  On this project's 2-core CPU one member's step already keeps the cores busy,
  and vmapping turns every matmul into a batched one that ran slower per member
  (bench_train.py --members); on a GPU one member leaves the device idle.
  """
  axis = config.train.get("member_axis", "auto") or "auto"
  if axis not in MEMBER_AXES:
    raise ConfigError(f"train.member_axis={axis!r} is unknown; choose one of {MEMBER_AXES}.")
  if axis == "auto":
    return "map" if jax.default_backend() == "cpu" else "vmap"
  return axis


def seeds(config: ml_collections.ConfigDict) -> list[int]:
  """Each member's training seed: ``seed + k``."""
  return [int(config.seed) + k for k in range(num_members(config))]


def take(tree: Any, k: int) -> Any:
  """Member ``k`` of a stacked pytree (host or device arrays, or their abstract shapes)."""
  def one(a):
    if isinstance(a, jax.ShapeDtypeStruct):
      return jax.ShapeDtypeStruct(a.shape[1:], a.dtype, sharding=a.sharding)
    return a[k]
  return jax.tree.map(one, tree)


def count(tree: Any) -> int:
  """K of a stacked pytree: the length of its leaves' leading axis."""
  return int(jax.tree.leaves(tree)[0].shape[0])


def unwrap(values: Sequence[Any]) -> Any:
  """Per-member values as a report shows them: the value itself for one member."""
  values = list(values)
  return values[0] if len(values) == 1 else values


def over_members(fn: Callable, k: int, axis: str, in_axes: tuple) -> Callable:
  """``fn`` over the leading member axis of the arguments marked 0 in ``in_axes``.

  K > 1: batched (``vmap``) or one member after another in the same program
  (``map``). K = 1: member 0 through ``fn`` and the axis put back, which
  compiles to the single model's program.
  """
  def members_of(args):
    return tuple(a for a, ax in zip(args, in_axes) if ax == 0)

  def with_member(args, member):
    it = iter(member)
    return tuple(next(it) if ax == 0 else a for a, ax in zip(args, in_axes))

  if k == 1:
    def single(*args):
      out = fn(*with_member(args, take(members_of(args), 0)))
      return jax.tree.map(lambda a: a[None], out)
    return single
  if axis == "vmap":
    return jax.vmap(fn, in_axes=in_axes)

  def mapped(*args):
    return jax.lax.map(lambda member: fn(*with_member(args, member)), members_of(args))
  return mapped


def to_storage(tree: Any) -> Any:
  """A stacked state as checkpoints and exports store it: without the axis for K = 1."""
  return take(tree, 0) if count(tree) == 1 else tree


def from_storage(tree: Any, k: int) -> Any:
  """A stored state of ``k`` members with its member axis (``to_storage`` undone)."""
  return jax.tree.map(lambda a: a[None], tree) if k == 1 else tree


def merge_best(best: Any, state: Any, improved: Sequence[bool]) -> Any:
  """``best`` with the members that just improved replaced by ``state``'s."""
  return _merge_best(best, state, np.asarray(improved, bool))


@jax.jit
def _merge_best(best: Any, state: Any, mask: jax.Array) -> Any:
  """One program for the whole tree (eagerly, every leaf's where compiles on its own)."""
  def pick(b, s):
    return jnp.where(mask.reshape((-1,) + (1,) * (s.ndim - 1)), s, b)
  return jax.tree.map(pick, best, state)


def ensemble_probs(member_probs: np.ndarray) -> np.ndarray:
  """The ensemble's prediction: the mean of the members' probabilities (axis 0)."""
  return np.mean(np.asarray(member_probs, np.float64), axis=0).astype(np.float32)


def scores(probs: np.ndarray, y: np.ndarray) -> dict[str, Any]:
  """Accuracy and cross-entropy of probabilities, the shape of ``evaluation.evaluate``."""
  probs, y = np.asarray(probs), np.asarray(y)
  picked = np.clip(probs[np.arange(len(y)), y], 1e-12, None)
  return {"acc": float(np.mean(np.argmax(probs, -1) == y)),
          "loss": float(-np.mean(np.log(picked))), "count": int(len(y)), "probs": probs}


@dataclasses.dataclass(frozen=True)
class MemberStopping:
  """One ``monitor.EarlyStopping`` per member; stopped members are left as they stopped."""
  members: tuple[monitor.EarlyStopping, ...]

  @classmethod
  def for_metric(cls, metric: str, patience: int, k: int) -> "MemberStopping":
    return cls(tuple(monitor.EarlyStopping.for_metric(metric, patience) for _ in range(k)))

  def update(self, values: Sequence[float]) -> "MemberStopping":
    new = tuple(dataclasses.replace(es, improved=False) if es.should_stop else es.update(v)
                for es, v in zip(self.members, values))
    return MemberStopping(new)

  @property
  def active(self) -> list[bool]:
    """Members still training (before this epoch's update)."""
    return [not es.should_stop for es in self.members]

  @property
  def improved(self) -> list[bool]:
    return [es.improved for es in self.members]

  @property
  def should_stop(self) -> bool:
    return all(es.should_stop for es in self.members)

  @property
  def best_epoch(self) -> int | list[int]:
    return unwrap(es.best_epoch for es in self.members)

  @property
  def best_value(self) -> float | None | list[float | None]:
    return unwrap(es.best_value for es in self.members)

  def to_dict(self) -> dict[str, Any]:
    """Checkpoint metadata; one member stores its own ``EarlyStopping`` dict."""
    if len(self.members) == 1:
      return self.members[0].to_dict()
    return {"members": [es.to_dict() for es in self.members]}

  @classmethod
  def from_dict(cls, d: dict[str, Any], patience: int | None = None) -> "MemberStopping":
    stored = d["members"] if "members" in d else [d]
    return cls(tuple(monitor.EarlyStopping.from_dict(
        {**m, **({} if patience is None else {"patience": patience})}) for m in stored))


def stopping(config: ml_collections.ConfigDict,
             stored: dict[str, Any] | None = None) -> MemberStopping:
  """Early stopping of every member, fresh or from checkpoint metadata.

  The patience is always the config's (it may change on resume); the counters
  carry over.
  """
  metric, patience = config.train.early_stopping_metric, config.train.early_stopping_patience
  if stored is None:
    return MemberStopping.for_metric(metric, patience, num_members(config))
  return MemberStopping.from_dict(stored, patience)


def epoch_record(records: Sequence[dict[str, Any] | None],
                 monitor_cfg: ml_collections.ConfigDict) -> dict[str, Any]:
  """The epoch's line of metrics.jsonl from each member's record: the record
  itself for one member, else ``mean_record``."""
  return dict(records[0]) if len(records) == 1 else mean_record(records, monitor_cfg)


def ensemble_scores(member_evals: Sequence[dict[str, Any]], y: np.ndarray) -> dict[str, Any]:
  """A split scored by the ensemble (the mean of the members' probabilities);
  one member's own scores as they are (on-device sums, unrounded)."""
  if len(member_evals) == 1:
    return member_evals[0]
  return scores(ensemble_probs([e["probs"] for e in member_evals]), y)


def mean_record(records: Sequence[dict[str, Any] | None],
                monitor_cfg: ml_collections.ConfigDict) -> dict[str, Any]:
  """The epoch's line of metrics.jsonl for K > 1: numeric fields averaged over the
  members still training (what the learning curves draw and the log prints; its
  overfitting level is the mean gap's), each member's own record under "members"
  (null once it has stopped)."""
  live = [r for r in records if r is not None]
  out: dict[str, Any] = {}
  for key, value in live[0].items():
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    averaged = numeric and key not in ("epoch", "step")
    out[key] = float(np.mean([r[key] for r in live])) if averaged else value
  out["overfitting"] = monitor.overfitting_level(out["acc_gap"], monitor_cfg.moderate_gap,
                                                 monitor_cfg.significant_gap)
  out["members"] = list(records)
  return out
