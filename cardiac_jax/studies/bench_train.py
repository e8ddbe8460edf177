"""Benchmarks training and evaluation throughput against the machine's matmul ceiling.

  python experiments/bench_train.py --config=configs/scale3.py --out=/tmp/bench_train.json
  python experiments/bench_train.py --config=configs/scale3.py --skip_data --steps=64
  python experiments/bench_train.py --config=configs/scale3.py --real_data
  python experiments/bench_train.py --config=configs/scale3.py --skip_data --peak_tflops=989  # H100 bf16
  python experiments/bench_train.py --config=configs/scale3.py --skip_data --members=1,2,4,8
  python experiments/bench_train.py --config=configs/scale1.py --skip_data --dtypes=float32,bfloat16
  python experiments/bench_train.py --config=configs/scale1.py --skip_data --members=1,3 \
      --member_axes=vmap,map
  python experiments/bench_train.py --config=configs/scale3.py --skip_data --profile_dir=/tmp/prof

``--members`` times ``train.num_members = K`` (K models in one epoch call,
vmapped or mapped as ``--member_axes`` says) for each K, and ``--dtypes`` each
compute dtype (every combination), interleaved over the repeats so a busy machine
disturbs every variant alike: aggregate sequences/s (K x batch x steps / time),
per-member step time, and the fraction of the matmul rate in the variant's dtype.

Training is timed exactly as ``train.py`` runs it: ``run.fns.train_epoch``, the
jitted ``lax.scan`` over a device-resident dataset with the state donated, on
``--steps`` batches of a stratified epoch order (synthetic arrays of the
config's real shapes unless ``--real_data``). FLOPs per step come from XLA's
cost analysis of one compiled ``train_step`` (the epoch's analysis counts the
loop body once) and are cross-checked against an analytic count of the matmuls.
The achieved rate is reported as a fraction of a float matmul rate measured in
the same process (best of several n x n products in the compute dtype), and as
MFU against ``--peak_tflops`` when given (GPUs: the datasheet dense peak).
``--profile_dir`` traces one more epoch call and joins the trace with the
optimized HLO (``hlo_profile``): own time per thunk, split into matmuls (a dot,
alone or fused), elementwise/reduction fusions and copies, with the rate the
matmul thunks themselves reach, and the time per model part (forward/backward,
layer). Timings are best-of ``--repeats``: on a shared machine the best run is the one
least disturbed by other processes; the load average is recorded alongside.
"""
from __future__ import annotations

import functools
import json
import os
import pathlib
import platform
import statistics
import time
from typing import Any, Callable, Sequence

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
from ml_collections import config_flags
import numpy as np

from cardiac_jax import evaluation
from cardiac_jax import input_pipeline
from cardiac_jax import members
from cardiac_jax import models
from cardiac_jax import optim
from cardiac_jax import parallel
from cardiac_jax import run as run_lib
from cardiac_jax import steps as steps_lib
from cardiac_jax.data import dataset as dataset_lib
from cardiac_jax.studies import common
from cardiac_jax.studies import hlo_profile

FLAGS = flags.FLAGS



def _best(fn: Callable[[], Any], repeats: int) -> list[float]:
  """Wall seconds of ``repeats`` calls of ``fn`` (each blocks until done)."""
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return times


def matmul_gflops(n: int, dtype: Any, repeats: int = 5) -> float:
  """Best-of-``repeats`` GFLOP/s of an n x n @ n x n product (the ceiling reference)."""
  a = jax.device_put(jnp.asarray(np.random.default_rng(0).normal(size=(n, n)), dtype))
  f = jax.jit(lambda a: a @ a)
  jax.block_until_ready(f(a))
  return 2 * n**3 / min(_best(lambda: f(a), repeats)) / 1e9


def analytic_train_flops(batch: int, length: int, features: int, width: int, depth: int,
                         mlp_ratio: int, num_classes: int, pooled_width: int) -> float:
  """Matmul FLOPs (2 per multiply-add) of one training step: forward + backward.

  Backward costs two forward matmuls (input and weight gradients) except the
  embedding, whose input needs no gradient. Elementwise work is not counted.
  """
  tokens = batch * length
  embed = 2 * tokens * features * width
  block = (2 * tokens * width * 3 * width            # fused QKV
           + 2 * 2 * batch * length * length * width  # scores and weighted values
           + 2 * tokens * width * width             # attention output
           + 2 * 2 * tokens * width * mlp_ratio * width)  # MLP in and out
  head = 2 * batch * pooled_width * num_classes
  forward = embed + depth * block + head
  return 3 * forward - 2 * embed


def synthetic_dataset(config: Any, seed: int = 0) -> dataset_lib.SequenceDataset:
  """Random arrays with the shapes ``build_dataset`` would give for ``config.data``."""
  d = config.data
  classes = tuple(c for c in d.classes)
  n = d.sequences.per_population * len(classes)
  n += d.sequences.spatial_total if d.spatial.enabled else 0
  length, features = d.sequences.length, d.preprocess.n_pcs + 2
  rng = np.random.default_rng(seed)
  fractions = np.asarray(d.split.fractions, np.float64)
  return dataset_lib.SequenceDataset(
      x=rng.normal(size=(n, length, features)).astype(np.float32),
      y=(np.arange(n) % len(classes)).astype(np.int32),
      mask=np.ones((n, length), np.float32),
      split=rng.choice(3, size=n, p=fractions / fractions.sum()).astype(np.int8),
      modality=np.zeros(n, np.int8),
      source_index=np.zeros((n, length), np.int64),
      class_names=classes,
      meta={"cache_key": f"bench-synthetic-{n}-{length}-{features}-{seed}"})


def epoch_indices(run: run_lib.Run, steps: int) -> np.ndarray:
  """(steps, batch) dataset rows in train.py's stratified order (epochs 1, 2, ...)."""
  labels = run.dataset.y[run.train_pos]
  orders, epoch = [], 1
  while sum(len(o) for o in orders) < steps:
    orders.append(input_pipeline.stratified_order(labels, run.config.train.batch_size,
                                                  run.config.seed, epoch))
    epoch += 1
  return run.train_pos[np.concatenate(orders)[:steps]].astype(np.int32)


def bench_training(run: run_lib.Run, steps: int, repeats: int) -> dict[str, Any]:
  """Compile time, FLOPs and best-of timings of ``steps`` steps in one epoch call."""
  config = run.config
  batch_size = config.train.batch_size
  state = parallel.place(run.fns.init(run.init_rng, run.data["x"][:1], run.data["mask"][:1]))
  idx = parallel.place_batches(epoch_indices(run, steps)[None], batch_axis=2)

  t0 = time.perf_counter()
  lowered = run.fns.train_epoch.lower(state, run.data, idx, run.train_rng)
  compiled = lowered.compile()
  compile_s = time.perf_counter() - t0

  # FLOPs of one step from its own compilation (a while loop's body is counted once).
  tx = optim.make_optimizer(config, run.schedules)
  step = jax.jit(functools.partial(steps_lib.train_step, model=run.model, tx=tx,
                                   schedules=run.schedules))
  batch = {k: v[:batch_size] for k, v in run.data.items()}
  step_cost = step.lower(members.take(state, 0), batch,
                         run.train_rng[0]).compile().cost_analysis() or {}
  epoch_cost = compiled.cost_analysis() or {}
  pooled = config.model.width * (2 if config.model.get("pooling") == "mean_last" else 1)
  analytic = analytic_train_flops(batch_size, run.dataset.length, run.dataset.num_features,
                                  config.model.width, config.model.depth,
                                  config.model.mlp_ratio, run.dataset.num_classes, pooled)
  flops = float(step_cost.get("flops", analytic))

  holder = {"state": state}

  def call():
    holder["state"], sums = compiled(holder["state"], run.data, idx, run.train_rng)
    return sums

  first = _best(call, 1)[0]
  times = _best(call, repeats)
  best = min(times)
  return {
      "steps": steps,
      "batch_size": batch_size,
      "compile_s": compile_s,
      "first_call_s": first,
      "step_ms_best": 1e3 * best / steps,
      "step_ms_median": 1e3 * statistics.median(times) / steps,
      "seq_per_s": steps * batch_size / best,
      "seq_per_s_median": steps * batch_size / statistics.median(times),
      "times_s": times,
      "flops_per_step_xla": flops,
      "flops_per_step_analytic": analytic,
      "xla_over_analytic": flops / analytic,
      "epoch_cost_analysis_flops": float(epoch_cost.get("flops", float("nan"))),
      "gflops_per_s": flops * steps / best / 1e9,
  }


def profile_training(run: train.Run, steps: int, log_dir: str,
                     reference_gflops: float) -> dict[str, Any]:
  """One traced epoch call of ``steps`` steps: own time per HLO thunk, matmul vs rest."""
  state = parallel.place(run.fns.init(run.init_rng, run.data["x"][:1], run.data["mask"][:1]))
  idx = parallel.place_batches(epoch_indices(run, steps)[None], batch_axis=2)
  compiled = run.fns.train_epoch.lower(state, run.data, idx, run.train_rng).compile()
  state, sums = compiled(state, run.data, idx, run.train_rng)   # warm
  jax.block_until_ready(sums)
  t0 = time.perf_counter()
  with jax.profiler.trace(log_dir, create_perfetto_trace=True):
    state, sums = compiled(state, run.data, idx, run.train_rng)
    jax.block_until_ready(sums)
  wall = time.perf_counter() - t0
  out = hlo_profile.breakdown(compiled.as_text(), hlo_profile.load_trace(log_dir), steps,
                              reference_gflops)
  out["traced_wall_ms_per_step"] = 1e3 * wall / steps
  return out


def bench_variants(variants: dict[str, Any], ds: Any, steps: int, repeats: int,
                   flops_per_step: float) -> dict[str, dict[str, Any]]:
  """Epoch calls of each config variant (its K members, member axis, dtype), timed
  round-robin over the variants so a busy machine disturbs each alike (best of repeats)."""
  calls, out = {}, {}
  for label, cfg in variants.items():
    k = int(cfg.train.num_members)
    run = run_lib.build_run(cfg, ds)
    state = parallel.place(run.fns.init(run.init_rng, run.data["x"][:1], run.data["mask"][:1]))
    one = epoch_indices(run, steps)
    idx = parallel.place_batches(np.stack([one] * k), batch_axis=2)
    t0 = time.perf_counter()
    compiled = run.fns.train_epoch.lower(state, run.data, idx, run.train_rng).compile()
    holder = {"state": state}

    def call(compiled=compiled, holder=holder, run=run, idx=idx):
      holder["state"], sums = compiled(holder["state"], run.data, idx, run.train_rng)
      return sums
    _best(call, 1)
    calls[label] = call
    out[label] = {"num_members": k, "dtype": jnp.dtype(models.resolve_dtype(
        cfg.model.dtype)).name, "compile_s": time.perf_counter() - t0, "times": []}
  for _ in range(repeats):
    for label in variants:
      out[label]["times"] += _best(calls[label], 1)
  first = next(iter(variants))
  for label, cfg in variants.items():
    k = out[label]["num_members"]
    best = min(out[label].pop("times"))
    out[label].update(seq_per_s=k * steps * cfg.train.batch_size / best,
                      step_ms_per_member=1e3 * best / steps / k,
                      gflops_per_s=k * flops_per_step * steps / best / 1e9)
  for label in variants:
    out[label]["vs_first"] = out[label]["seq_per_s"] / out[first]["seq_per_s"]
  return out


def _variants(config: Any, ks: list[int], dtypes: list[str],
              axes: list[str]) -> dict[str, Any]:
  """Every (K, dtype, member axis) of ``--members`` x ``--dtypes`` x ``--member_axes``
  as a config (K = 1 once per dtype: one member compiles the single model's program,
  whatever the member axis)."""
  out = {}
  for dtype in dtypes or [config.model.dtype]:
    for k in ks or [1]:
      for axis in (axes or [config.train.member_axis]) if k > 1 else ["auto"]:
        cfg = config.copy_and_resolve_references()
        cfg.train.num_members, cfg.model.dtype, cfg.train.member_axis = int(k), dtype, axis
        label = f"K={k} {jnp.dtype(models.resolve_dtype(dtype)).name}"
        out[label + (f" {members.member_axis(cfg)}" if k > 1 else "")] = cfg
  return out


def bench_eval(run: train.Run, repeats: int) -> dict[str, Any]:
  """Eval-mode throughput over the validation split, as ``evaluation.evaluate`` runs it."""
  state = parallel.place(run.fns.init(run.init_rng, run.data["x"][:1], run.data["mask"][:1]))
  chunks = run.chunks["val"]
  t0 = time.perf_counter()
  evaluation.evaluate(run.fns.eval_chunk, state, run.data, chunks)[0]
  first = time.perf_counter() - t0
  times = _best(lambda: evaluation.evaluate(run.fns.eval_chunk, state, run.data, chunks)[0]["loss"],
                repeats)
  count = evaluation.evaluate(run.fns.eval_chunk, state, run.data, chunks)[0]["count"]
  return {"sequences": count, "chunk": int(chunks[0][0].shape[0]),
          "first_call_s": first, "seq_per_s": count / min(times)}


def bench_data(config: Any) -> tuple[dict[str, Any], dataset_lib.SequenceDataset]:
  timings: dict = {}
  t0 = time.perf_counter()
  ds = dataset_lib.build_dataset(config.data, cache=False, timings=timings)
  return {"stages": timings, "total_s": time.perf_counter() - t0,
          "peak_rss_mb": common.peak_rss_mb()}, ds


def define_flags() -> None:
  """The script's flags (defined here, not at import: cardiac_jax.main defines --config too)."""
  config_flags.DEFINE_config_file("config", "configs/scale3.py", "Config file.")
  flags.DEFINE_string("out", "", "Write the results as JSON here.")
  flags.DEFINE_integer("steps", 32, "Optimizer steps per timed epoch call.")
  flags.DEFINE_integer("repeats", 5, "Timed repetitions (best is reported).")
  flags.DEFINE_bool("real_data", False, "Use the config's (cached) dataset.")
  flags.DEFINE_bool("skip_data", False, "Skip the data-pipeline stage timings.")
  flags.DEFINE_float("peak_tflops", 0.0, "Device peak TFLOP/s for MFU (0 = none).")
  flags.DEFINE_integer("matmul_size", 2048, "n of the n x n reference matmul.")
  flags.DEFINE_list("members", [], "Also time train.num_members = K for each K.")
  flags.DEFINE_list("dtypes", [], "Also time these model.dtype values (x --members).")
  flags.DEFINE_string("profile_dir", "", "Also trace one epoch call here and break "
                      "its time down by HLO thunk (cardiac_jax/studies/hlo_profile.py).")
  flags.DEFINE_list("member_axes", [], "train.member_axis values for K > 1 (vmap, map); "
                    "[] = the config's.")


def main(argv: Sequence[str]) -> None:
  del argv
  config = FLAGS.config
  load_before = os.getloadavg()
  results: dict[str, Any] = {"config": config.name}

  data_result, ds = (None, None) if FLAGS.skip_data else bench_data(config)
  if not FLAGS.real_data:
    ds = synthetic_dataset(config)
  elif ds is None:
    ds = dataset_lib.build_dataset(config.data)
  run = run_lib.build_run(config, ds)
  dtype = models.resolve_dtype(run.config.model.dtype)

  mm_before = matmul_gflops(FLAGS.matmul_size, dtype)
  tr = bench_training(run, FLAGS.steps, FLAGS.repeats)
  ev = bench_eval(run, FLAGS.repeats)
  ks, dtypes = [int(k) for k in FLAGS.members], list(FLAGS.dtypes)
  mem = bench_variants(_variants(run.config, ks, dtypes, list(FLAGS.member_axes)), ds,
                       FLAGS.steps, FLAGS.repeats,
                       tr["flops_per_step_xla"]) if ks or dtypes else {}
  mm = max(mm_before, matmul_gflops(FLAGS.matmul_size, dtype))
  tr["fraction_of_matmul"] = tr["gflops_per_s"] / mm
  prof = profile_training(run, FLAGS.steps, FLAGS.profile_dir, mm) if FLAGS.profile_dir else None
  # Each variant against the matmul rate of its own compute dtype.
  mm_by_dtype = {jnp.dtype(dtype).name: mm}
  for v in mem.values():
    if v["dtype"] not in mm_by_dtype:
      mm_by_dtype[v["dtype"]] = matmul_gflops(FLAGS.matmul_size, jnp.dtype(v["dtype"]))
    v["fraction_of_matmul"] = v["gflops_per_s"] / mm_by_dtype[v["dtype"]]
  if FLAGS.peak_tflops > 0:
    tr["mfu"] = tr["gflops_per_s"] / (1e3 * FLAGS.peak_tflops)

  m = run.config.model
  results.update(
      data="real" if FLAGS.real_data else "synthetic",
      shape=[int(len(ds.y)), int(ds.length), int(ds.num_features)],
      n_train=int(len(run.train_pos)),
      model={"width": m.width, "depth": m.depth, "num_heads": m.num_heads,
             "mlp_ratio": m.mlp_ratio, "norm": m.norm, "pooling": m.get("pooling"),
             "dtype": jnp.dtype(dtype).name,
             "params": models.count_params(parallel.place(run.fns.init(
                 run.init_rng, run.data["x"][:1], run.data["mask"][:1])).params)},
      train=tr, eval=ev, data_pipeline=data_result, variants=mem, profile=prof,
      matmul={"n": FLAGS.matmul_size, "dtype": jnp.dtype(dtype).name, "gflops_per_s": mm,
              "by_dtype": mm_by_dtype},
      peak_tflops=FLAGS.peak_tflops or None,
      devices={"count": jax.device_count(), "kind": jax.devices()[0].device_kind,
               "platform": jax.default_backend(), "processes": jax.process_count(),
               "data_parallel_shards": parallel.num_shards()},
      host={"cpus": os.cpu_count(), "machine": platform.platform(),
            "loadavg_before": load_before, "loadavg_after": os.getloadavg()},
      versions={"jax": jax.__version__, "python": platform.python_version()},
  )

  print(f"\n{config.name}: {results['shape'][0]} sequences x {results['shape'][1]} steps x "
        f"{results['shape'][2]} features ({results['data']}), {results['n_train']} train; "
        f"width {m.width} depth {m.depth} batch {tr['batch_size']} {results['model']['dtype']} "
        f"on {jax.device_count()} x {jax.devices()[0].device_kind}")
  rows = [
      ("matmul reference", f"{mm:.1f} GFLOP/s ({FLAGS.matmul_size}^3, best)"),
      ("train step FLOPs", f"{tr['flops_per_step_xla'] / 1e9:.2f} G (XLA) / "
                           f"{tr['flops_per_step_analytic'] / 1e9:.2f} G (analytic matmuls)"),
      ("train compile", f"{tr['compile_s']:.1f} s"),
      ("train step", f"{tr['step_ms_best']:.1f} ms best, {tr['step_ms_median']:.1f} ms median"),
      ("train throughput", f"{tr['seq_per_s']:.1f} seq/s best "
                           f"({tr['seq_per_s_median']:.1f} median)"),
      ("train achieved", f"{tr['gflops_per_s']:.1f} GFLOP/s = "
                         f"{100 * tr['fraction_of_matmul']:.1f}% of matmul"
                         + (f", MFU {100 * tr['mfu']:.1f}%" if "mfu" in tr else "")),
      ("eval throughput", f"{ev['seq_per_s']:.1f} seq/s ({ev['sequences']} val sequences)"),
      ("load average", f"{load_before[0]:.2f} before, {os.getloadavg()[0]:.2f} after "
                       f"({os.cpu_count()} CPUs)"),
  ]
  for name, value in rows:
    print(f"{name:<20}{value}")
  if mem:
    first = next(iter(mem))
    print(f"\n{'variant':<18}{'seq/s (all)':>12}{'x first':>9}{'ms/step/member':>16}"
          f"{'% matmul':>10}   (first = {first}; % of its dtype's matmul rate)")
    for label, v in mem.items():
      print(f"{label:<18}{v['seq_per_s']:>12.1f}{v['vs_first']:>9.2f}"
            f"{v['step_ms_per_member']:>16.2f}{100 * v['fraction_of_matmul']:>10.1f}")
    print("matmul by dtype: " + ", ".join(f"{d} {g:.1f} GFLOP/s" for d, g in mm_by_dtype.items()))
  if prof:
    print(f"\nprofile of one epoch call ({prof['traced_wall_ms_per_step']:.1f} ms/step wall "
          f"traced; thunk own time {prof['thunk_ms_per_step']:.1f} ms/step, threads add up)")
    for cat, c in sorted(prof["categories"].items(), key=lambda kv: -kv[1]["ms"]):
      print(f"  {cat:<34}{c['ms']:>8.2f} ms {100 * c['share']:>5.1f}%  {c['thunks']:>4} thunks")
    if prof["matmul_gflops"]:
      print(f"  matmul thunks run at {prof['matmul_gflops']:.1f} GFLOP/s = "
            f"{100 * prof['matmul_fraction_of_reference']:.1f}% of the reference matmul")
    for p in prof["parts"][:8]:
      print(f"  {p['part']:<34}{p['ms']:>8.2f} ms {100 * p['share']:>5.1f}%")
  if data_result:
    print(f"\n{'data stage':<18}{'seconds':>10}{'peak RSS MB':>14}")
    for name, v in data_result["stages"].items():
      print(f"{name:<18}{v['seconds']:>10.2f}{v['peak_rss_mb']:>14.0f}")
    print(f"{'total':<18}{data_result['total_s']:>10.2f}{data_result['peak_rss_mb']:>14.0f}")
  if FLAGS.out:
    pathlib.Path(FLAGS.out).write_text(json.dumps(results, indent=2, default=float))
    logging.info("wrote %s", FLAGS.out)


if __name__ == "__main__":
  define_flags()
  app.run(main)
