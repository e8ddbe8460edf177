"""Training the default sequence model in JAX beside PyTorch (eager and ``torch.compile``).

  python3 -m venv /work/venv_torch && /work/venv_torch/bin/pip install -e ".[torch,test]"
  flock /work/cpu.lock /work/venv_torch/bin/python experiments/bench_torch.py \
      --config=configs/scale1.py --steps=32 --repeats=7 --rounds=3 --out_dir=docs/results

One process family: this process prepares the batches and the initial weights,
then runs each framework and mode in a child process of its own ("jax",
"torch_eager", "torch_compile"; ``--rounds`` times over, back to back), each
measuring a float32 matmul (``--matmul_size``^3, best of 5, before and after its
timings) beside its training, so the share of the matmul rate is a same-process
figure for each framework.

What is the same on both sides (``torch_peer``'s docstring maps every layer):
the model of ``--config`` (configs/scale1.py: width 64, depth 2, 4 heads, MLP x4,
BatchNorm over visible steps, mean+last pooling, the cell head; dropout 0.1/0.3,
feature noise, step and branch dropout in training mode), float32, the batch size
and sequence length, the optimizer (clip 1.0 -> Adam -> decoupled, scheduled
weight decay on kernels -> scheduled learning rate), label smoothing from its
schedule, the batches (``bench_train.synthetic_dataset``: random features of the
config's real shape, all steps visible, in ``bench_train.epoch_indices``'
stratified order), the initial weights (the JAX initialisation copied into
torch; the eval-mode logits of the two are compared and reported), one host sync
per timed call of ``--steps`` steps. What differs: the random generators (JAX's
hashed dropout masks vs torch's bernoulli), and how each framework compiles.

Threads: JAX uses XLA's CPU default (one intra-op pool over every core);
torch gets ``torch.set_num_threads(--threads)`` (default: every core).

Timings: JAX compiles (excluded), runs one untimed call, then ``--repeats``
timed calls (``bench_train.bench_training``); torch runs ``--torch_warmup``
untimed calls (torch.compile compiles in the first), then ``--repeats`` timed
ones. Sequences/s per call; median and range over all calls of all rounds.
FLOPs per sequence: ``bench_train.analytic_train_flops`` (matmuls, forward +
backward) divided by the batch, the same figure for both frameworks; XLA's own
count of the step is reported beside it.
"""
from __future__ import annotations

import datetime
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import tempfile
from typing import Any, Sequence

from absl import app
from absl import flags
import flax
import jax
from ml_collections import config_flags
import numpy as np

from cardiac_jax import members
from cardiac_jax import models
from cardiac_jax import resources
from cardiac_jax import run as run_lib
from cardiac_jax.errors import ConfigError
from cardiac_jax.studies import bench_train
from cardiac_jax.studies import common

FLAGS = flags.FLAGS
MODES = ("jax", "torch_eager", "torch_compile")


def model_spec(config: Any, num_classes: int, length: int, features: int) -> dict[str, Any]:
  """The resolved config's model and optimizer as plain numbers, for the torch side.

  Refuses what ``torch_peer`` does not implement, naming the setting, so a
  comparison never silently times another model.
  """
  m, t = config.model, config.train
  wanted = {"norm": "batch", "pooling": "mean_last", "positions": "learned",
            "cell_head": True, "attention_dropout": 0.0, "input_dropout": 0.0}
  for key, value in wanted.items():
    if m.get(key) != value:
      raise ConfigError(f"model.{key}={m.get(key)!r}: the torch model implements only "
                        f"{value!r} (the default); drop the override.")
  if models.resolve_dtype(m.dtype) != np.float32:
    raise ConfigError(f"model.dtype={m.dtype!r}: the comparison is float32; "
                      "set --config.model.dtype=float32.")
  if t.get("average_epochs", 0.0):
    raise ConfigError("train.average_epochs > 0: the torch optimizer keeps no parameter "
                      "average; set --config.train.average_epochs=0.")
  return {
      "num_classes": int(num_classes), "length": int(length), "features": int(features),
      "width": int(m.width), "depth": int(m.depth), "num_heads": int(m.num_heads),
      "mlp_ratio": int(m.mlp_ratio),
      "dropout_rates": list(models.dropout_rates(m.depth, m.dropout_min, m.dropout_max)),
      "feature_noise": float(m.feature_noise), "step_dropout": float(m.step_dropout),
      "branch_dropout": float(m.branch_dropout), "batch_size": int(t.batch_size),
  }


def flops_per_sequence(spec: dict[str, Any]) -> float:
  """Analytic matmul FLOPs of training one sequence (forward + backward)."""
  b = spec["batch_size"]
  return bench_train.analytic_train_flops(
      b, spec["length"], spec["features"], spec["width"], spec["depth"], spec["mlp_ratio"],
      spec["num_classes"], 2 * spec["width"]) / b


def prepare(config: Any, steps: int, total_steps: int, path: pathlib.Path) -> dict[str, Any]:
  """Writes the torch side's inputs (``path``, npz) and returns the model spec.

  The dataset and batch order are what the JAX child rebuilds for itself
  (deterministic); the schedules are evaluated for ``total_steps`` steps; the
  initial variables and their eval-mode logits on the first batch let the torch
  side start from the same weights and check it computes the same function.
  """
  ds = bench_train.synthetic_dataset(config)
  run = run_lib.build_run(config, ds)
  spec = model_spec(run.config, ds.num_classes, ds.length, ds.num_features)
  idx = bench_train.epoch_indices(run, steps)
  state = members.take(run.fns.init(run.init_rng, run.data["x"][:1], run.data["mask"][:1]), 0)
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  logits = run.model.apply(variables, ds.x[idx[0]], ds.mask[idx[0]], train=False)
  t = np.arange(total_steps)
  sched = {name: np.asarray(jax.vmap(getattr(run.schedules, name))(t), np.float32)
           for name in ("lr", "weight_decay", "label_smoothing")}
  flat = flax.traverse_util.flatten_dict(jax.device_get(variables), sep="/")
  np.savez(path, x=ds.x, mask=ds.mask, y=ds.y, idx=idx, eval_logits=np.asarray(logits),
           lr=sched["lr"], wd=sched["weight_decay"], smoothing=sched["label_smoothing"],
           **{f"var:{k}": np.asarray(v) for k, v in flat.items()})
  tr = run.config.train
  spec.update(clip_norm=float(tr.grad_clip_norm or 0.0), b1=float(tr.b1), b2=float(tr.b2),
              eps=float(tr.get("adam_eps", 1e-8)), steps=int(steps),
              params=models.count_params(state.params), n_sequences=int(len(ds.y)))
  return spec


def jax_worker(config: Any, steps: int, repeats: int, matmul_n: int) -> dict[str, Any]:
  """The JAX side in this process: ``bench_train.bench_training`` and its matmul."""
  ds = bench_train.synthetic_dataset(config)
  run = run_lib.build_run(config, ds)
  mm_before = bench_train.matmul_gflops(matmul_n, np.float32)
  tr = bench_train.bench_training(run, steps, repeats)
  mm = max(mm_before, bench_train.matmul_gflops(matmul_n, np.float32))
  return {"mode": "jax", "times_s": tr["times_s"], "warmup_s": tr["first_call_s"],
          "compile_s": tr["compile_s"], "matmul_gflops": mm,
          "flops_per_step_xla": tr["flops_per_step_xla"],
          "flops_per_step_analytic": tr["flops_per_step_analytic"],
          "threads": "XLA default", "jax": jax.__version__}


def summarise(results: Sequence[dict[str, Any]], spec: dict[str, Any]) -> dict[str, Any]:
  """Per mode: sequences/s per timed call (median, min, max over every call of every
  round), matmul GFLOP/s (median of the processes' best), the share of it the training
  reaches; JAX's median over each torch mode's."""
  per_seq = flops_per_sequence(spec)
  seqs = spec["steps"] * spec["batch_size"]
  rows: dict[str, dict[str, Any]] = {}
  for mode in MODES:
    mine = [r for r in results if r["mode"] == mode]
    if not mine:
      continue
    rates = [seqs / t for r in mine for t in r["times_s"]]
    med = statistics.median(rates)
    mm = statistics.median(r["matmul_gflops"] for r in mine)
    rows[mode] = {"seq_per_s_median": med, "seq_per_s_min": min(rates),
                  "seq_per_s_max": max(rates), "calls": len(rates),
                  "step_ms_median": 1e3 * spec["batch_size"] / med,
                  "gflops_per_s": med * per_seq / 1e9, "matmul_gflops": mm,
                  "share_of_matmul": med * per_seq / 1e9 / mm,
                  "warmup_s": [r.get("compile_s", 0.0) + r.get("warmup_s", 0.0)
                               for r in mine],
                  "peak_rss_mb": max(r.get("peak_rss_mb", 0.0) for r in mine),
                  "processes": len(mine)}
    if "eval_logits_max_abs_diff" in mine[0]:
      rows[mode]["eval_logits_max_abs_diff"] = max(r["eval_logits_max_abs_diff"]
                                                   for r in mine)
  ratios = {f"jax_over_{m}": rows["jax"]["seq_per_s_median"] / rows[m]["seq_per_s_median"]
            for m in MODES[1:] if "jax" in rows and m in rows}
  xla = [r["flops_per_step_xla"] for r in results if "flops_per_step_xla" in r]
  return {"modes": rows, "ratios": ratios, "flops_per_sequence_analytic": per_seq,
          "flops_per_sequence_xla": xla[0] / spec["batch_size"] if xla else None}


def markdown(summary: dict[str, Any], meta: dict[str, Any]) -> list[str]:
  """The results table, the ratios and the run's machine, versions and command."""
  rows = []
  for mode, r in summary["modes"].items():
    rows.append([mode, f"{r['seq_per_s_median']:.1f}",
                 f"{r['seq_per_s_min']:.1f}–{r['seq_per_s_max']:.1f}", str(r["calls"]),
                 f"{r['step_ms_median']:.1f}", f"{r['gflops_per_s']:.1f}",
                 f"{r['matmul_gflops']:.1f}", f"{100 * r['share_of_matmul']:.1f} %",
                 " / ".join(f"{w:.1f}" for w in r["warmup_s"]), f"{r['peak_rss_mb']:.0f}"])
  spec = meta["spec"]
  lines = [
      f"# Training: JAX beside PyTorch ({meta['date']})", "",
      f"Model: {meta['config']} (width {spec['width']}, depth {spec['depth']}, "
      f"{spec['num_heads']} heads, {spec['params']:,} parameters), batch "
      f"{spec['batch_size']} x {spec['length']} steps x {spec['features']} features, float32; "
      f"{spec['steps']} optimizer steps per timed call; torch attention: "
      f"{meta['torch_attention']}. Training FLOPs per sequence "
      f"(analytic matmuls, both frameworks): "
      f"{summary['flops_per_sequence_analytic'] / 1e6:.1f} M"
      + (f" (XLA's count: {summary['flops_per_sequence_xla'] / 1e6:.1f} M)"
         if summary["flops_per_sequence_xla"] else "") + ".", "",
      *common.table(["framework / mode", "seq/s (median)", "seq/s range", "calls",
                     "ms / step", "GFLOP/s", f"matmul {meta['matmul_n']}³ GFLOP/s",
                     "share of matmul", "warm-up s per process (compile incl.)",
                     "peak RSS MB"], rows), "",
      "Warm-up: JAX's compile and first call (XLA's persistent cache holds the program "
      "after the first process), torch's first calls (torch.compile compiles in them; "
      "inductor's cache likewise). Timed calls exclude it.", "",
      "Ratios of median sequences/s: " + ", ".join(
          f"{k.replace('_over_', ' / ')} **{v:.2f}**" for k, v in summary["ratios"].items())
      + ".", "",
      f"Machine: {meta['cpu_model']}, {meta['cpus']} cores ({meta['platform']}); load "
      f"average {meta['loadavg_before'][0]:.2f} before, {meta['loadavg_after'][0]:.2f} after. "
      f"Threads: JAX = XLA's default, torch.set_num_threads({meta['threads']}).",
      "Versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()) + ".",
      "Eval-mode logits of the torch model on JAX's initial weights, first batch: max |diff| "
      + ", ".join(f"{m} {r['eval_logits_max_abs_diff']:.1e}"
                  for m, r in summary["modes"].items() if "eval_logits_max_abs_diff" in r)
      + ".", "",
      f"Command: `{meta['command']}`",
  ]
  return lines


def define_flags() -> None:
  """The script's flags (defined here, not at import, like every study's)."""
  config_flags.DEFINE_config_file("config", "configs/scale1.py", "Config file.")
  flags.DEFINE_integer("steps", 32, "Optimizer steps per timed call.")
  flags.DEFINE_integer("repeats", 7, "Timed calls per process.")
  flags.DEFINE_integer("rounds", 2, "Times every mode's process runs (back to back).")
  flags.DEFINE_integer("torch_warmup", 2, "Untimed torch calls before the timed ones.")
  flags.DEFINE_integer("threads", os.cpu_count() or 1, "torch.set_num_threads.")
  flags.DEFINE_integer("matmul_size", 2048, "n of the n x n float32 reference matmul.")
  flags.DEFINE_list("modes", list(MODES), "Which of jax, torch_eager, torch_compile.")
  flags.DEFINE_string("torch_attention", "einsum", "einsum (the JAX code's operations) or "
                      "sdpa (F.scaled_dot_product_attention).")
  flags.DEFINE_string("out_dir", "docs/results", "Writes <out_name>.{json,md} here.")
  flags.DEFINE_string("out_name", "torch_train", "Base name of the result files.")
  flags.DEFINE_string("worker", "", "Internal: run one side in this process.")
  flags.DEFINE_string("result", "", "Internal: the worker's result file.")


def _child(mode: str, workdir: pathlib.Path, spec: dict[str, Any], inputs: pathlib.Path,
           config_args: list[str]) -> dict[str, Any]:
  """One mode in a child process of its own; its result with wall and peak RSS."""
  result = workdir / f"result_{mode}.json"
  if mode == "jax":
    argv = [sys.executable, "-m", "cardiac_jax.studies.bench_torch", "--worker=jax",
            f"--result={result}", f"--steps={FLAGS.steps}", f"--repeats={FLAGS.repeats}",
            f"--matmul_size={FLAGS.matmul_size}", *config_args]
  else:
    spec_path = workdir / f"spec_{mode}.json"
    spec_path.write_text(json.dumps(dict(
        spec, mode=mode, inputs=str(inputs), repeats=FLAGS.repeats, warmup=FLAGS.torch_warmup,
        threads=FLAGS.threads, matmul_n=FLAGS.matmul_size, attention=FLAGS.torch_attention,
        model=spec)))
    argv = [sys.executable, "-m", "cardiac_jax.studies.torch_peer", str(spec_path), str(result)]
  cost = resources.run_measured(argv)
  if cost["returncode"] != 0:
    raise RuntimeError(f"the {mode} child failed (exit {cost['returncode']})")
  out = json.loads(result.read_text())
  out.update(wall_s=cost["wall_s"], peak_rss_mb=cost["peak_rss_mb"])
  return out


def _versions() -> dict[str, str]:
  out = {"python": platform.python_version()}
  for name in ("jax", "jaxlib", "flax", "optax", "numpy", "torch"):
    try:
      from importlib import metadata  # pylint: disable=g-import-not-at-top
      out[name] = metadata.version(name)
    except Exception:  # pylint: disable=broad-except
      out[name] = "absent"
  return out


def main(argv: Sequence[str]) -> None:
  del argv
  config = FLAGS.config
  if FLAGS.worker:
    if FLAGS.worker != "jax":
      raise app.UsageError(f"--worker={FLAGS.worker!r}: only jax runs through this module.")
    pathlib.Path(FLAGS.result).write_text(json.dumps(
        jax_worker(config, FLAGS.steps, FLAGS.repeats, FLAGS.matmul_size), default=float))
    return
  unknown = set(FLAGS.modes) - set(MODES)
  if unknown:
    raise app.UsageError(f"--modes: unknown {sorted(unknown)}; choose from {MODES}.")
  config_args = [a for a in sys.argv[1:] if a.startswith("--config")]
  load_before = os.getloadavg()
  results = []
  with tempfile.TemporaryDirectory(prefix="bench_torch_") as tmp:
    workdir = pathlib.Path(tmp)
    inputs = workdir / "inputs.npz"
    total = FLAGS.steps * (max(1, FLAGS.torch_warmup) + FLAGS.repeats)
    spec = prepare(config, FLAGS.steps, total, inputs)
    for r in range(FLAGS.rounds):
      for mode in FLAGS.modes:
        print(f"round {r + 1}/{FLAGS.rounds}: {mode}", flush=True)
        results.append(dict(_child(mode, workdir, spec, inputs, config_args), round=r))
  summary = summarise(results, spec)
  meta = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
          "config": config.name, "spec": spec, "cpu_model": common.cpu_model(),
          "cpus": os.cpu_count(), "platform": platform.platform(), "threads": FLAGS.threads,
          "matmul_n": FLAGS.matmul_size, "torch_attention": FLAGS.torch_attention,
          "loadavg_before": load_before,
          "loadavg_after": os.getloadavg(), "versions": _versions(),
          "command": " ".join([pathlib.Path(sys.executable).name, *sys.argv])}
  lines = markdown(summary, meta)
  print("\n".join(lines))
  out_dir = pathlib.Path(FLAGS.out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  out = out_dir / FLAGS.out_name
  common.write_json(out.with_suffix(".json"),
                    {"summary": summary, "meta": meta, "processes": results})
  out.with_suffix(".md").write_text("\n".join(lines) + "\n")
  print(f"wrote {out.with_suffix('.json')} and .md")


if __name__ == "__main__":
  define_flags()
  app.run(main)
