"""Where a compiled step's time goes: a profiler trace joined with the optimized HLO.

``jax.profiler.trace(..., create_perfetto_trace=True)`` records one event per
XLA CPU thunk (a dot, a fusion, a copy), named after its HLO instruction. The
optimized HLO (``compiled.as_text()``) says what each instruction is: whether
it (or the fused computation it calls) contains a dot, how many FLOPs those
dots do, and which model op it came from (``metadata={op_name=...}``). Joined,
they give each thunk's own time (children subtracted) and, for matmul thunks,
the rate they reach: the part of the matmul-rate gap that is in the matmuls
themselves, and the part that is everything else.
"""
from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import re
from typing import Any, Iterable

_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%([\w.\-]+)\s*=\s*(\(?[^=]*?)\s+([\w\-]+)\((.*)$")
_SHAPE = re.compile(r"[a-z]+\d*\[([\d,]*)\]")
_COMP = re.compile(r"^(?:ENTRY\s+)?%([\w.\-]+)\s")
_CALLS = re.compile(r"(?:calls|to_apply|body|condition)=%([\w.\-]+)")
_OP_NAME = re.compile(r'op_name="([^"]*)"')


def _dims(shape: str) -> list[int]:
  m = _SHAPE.search(shape)
  return [int(d) for d in m.group(1).split(",") if d] if m else []


def parse_hlo(text: str) -> dict[str, dict[str, Any]]:
  """Every instruction of an HLO module: {name: {computation, op, dims, operands,
  calls, attrs, op_name}}; instruction names are unique in a module."""
  out: dict[str, dict[str, Any]] = {}
  comp = None
  for line in text.splitlines():
    line = re.sub(r"/\*.*?\*/", "", line)   # /*index=5*/ inside long tuples has an "="
    if not line.startswith(" "):
      m = _COMP.match(line)
      comp = m.group(1) if m and line.rstrip().endswith("{") else comp
      continue
    m = _INSTR.match(line)
    if not m:
      continue
    name, shape, op, rest = m.groups()
    depth, i = 1, 0
    while i < len(rest) and depth:          # the operand list ends at its matching ")"
      depth += {"(": 1, ")": -1}.get(rest[i], 0)
      i += 1
    operands = re.findall(r"%([\w.\-]+)", rest[:i - 1])
    attrs = rest[i:]
    op_name = _OP_NAME.search(attrs)
    out[name] = {"computation": comp, "op": op, "dims": _dims(shape), "operands": operands,
                 "calls": _CALLS.findall(attrs), "attrs": attrs,
                 "op_name": op_name.group(1) if op_name else ""}
  return out


def dot_flops(instr: dict[str, Any], instrs: dict[str, dict[str, Any]]) -> float:
  """2 x output elements x contracted size of a dot (0 for anything else)."""
  if instr["op"] != "dot" or not instr["operands"]:
    return 0.0
  lhs = instrs.get(instr["operands"][0], {}).get("dims", [])
  m = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", instr["attrs"])
  contract = [int(d) for d in m.group(1).split(",") if d] if m else []
  k = 1
  for d in contract:
    k *= lhs[d] if d < len(lhs) else 1
  out = 1
  for d in instr["dims"]:
    out *= d
  return 2.0 * out * k


def thunk_table(instrs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
  """Per instruction: the dot FLOPs inside it (through the computations it calls)."""
  by_comp: dict[str, list[str]] = collections.defaultdict(list)
  for name, ins in instrs.items():
    by_comp[ins["computation"]].append(name)
  memo: dict[str, float] = {}

  def comp_flops(comp: str) -> float:
    if comp not in memo:
      memo[comp] = 0.0   # guards against cycles
      memo[comp] = sum(own_flops(n) for n in by_comp.get(comp, ()))
    return memo[comp]

  def own_flops(name: str) -> float:
    ins = instrs[name]
    if ins["op"] in ("while", "call", "conditional"):   # their thunks are traced on their own
      return 0.0
    return dot_flops(ins, instrs) + sum(comp_flops(c) for c in ins["calls"])

  return {name: {"flops": own_flops(name), "op": ins["op"], "op_name": ins["op_name"]}
          for name, ins in instrs.items()}


def load_trace(log_dir: str) -> list[dict[str, Any]]:
  """The complete ("X") events of the newest perfetto trace under ``log_dir``."""
  files = sorted(glob.glob(os.path.join(log_dir, "**", "perfetto_trace.json.gz"),
                           recursive=True), key=os.path.getmtime)
  if not files:
    raise FileNotFoundError(f"no perfetto_trace.json.gz under {log_dir}")
  with gzip.open(files[-1], "rt") as f:
    data = json.load(f)
  events = data["traceEvents"] if isinstance(data, dict) else data
  return [e for e in events if e.get("ph") == "X" and "dur" in e]


def self_times(events: Iterable[dict[str, Any]]) -> dict[str, float]:
  """Total own time (microseconds) per event name, nested children subtracted."""
  per_thread: dict[Any, list[dict[str, Any]]] = collections.defaultdict(list)
  for e in events:
    per_thread[(e.get("pid"), e.get("tid"))].append(e)
  out: dict[str, float] = collections.Counter()
  for evs in per_thread.values():
    evs.sort(key=lambda e: (e["ts"], -e["dur"]))
    stack: list[list[Any]] = []   # [end, name, own time]
    for e in evs:
      while stack and e["ts"] >= stack[-1][0]:
        _, name, own = stack.pop()
        out[name] += own
      if stack:
        stack[-1][2] -= e["dur"]
      stack.append([e["ts"] + e["dur"], e["name"], float(e["dur"])])
    for _, name, own in stack:
      out[name] += own
  return dict(out)


def part_of(op_name: str) -> str:
  """'forward' / 'backward' / 'optimizer' plus the model layer an op came from."""
  where = ("backward" if "transpose(jvp(" in op_name else
           "forward" if "jvp(" in op_name else "optimizer / other")
  m = re.search(r"(block_\d+/\w+|embed\w*|head\w*|cell_head\w*|pool\w*|norm\w*)", op_name)
  return f"{where}: {m.group(1)}" if m and where != "optimizer / other" else where


def breakdown(hlo_text: str, events: list[dict[str, Any]], steps: int,
              reference_gflops: float | None = None) -> dict[str, Any]:
  """Own time per step of the thunks (CPU time: threads add up), matmul vs the rest.

  Returns {"categories": {...}, "parts": [...], "top": [...], "matmul_gflops",
  "matmul_fraction_of_reference"}; times in ms per step.
  """
  table = thunk_table(parse_hlo(hlo_text))
  own = self_times(events)
  rows = []
  for name, us in own.items():
    info = table.get(name)
    if info is None:
      continue   # runtime events (ThunkExecutor, python frames), not HLO thunks
    rows.append({"name": name, "ms": us / 1e3 / steps, "flops": info["flops"],
                 "op": info["op"], "part": part_of(info["op_name"])})
  total = sum(r["ms"] for r in rows) or 1.0
  cats: dict[str, dict[str, float]] = {}
  for r in rows:
    cat = ("matmul (a dot, alone or fused)" if r["flops"] > 0 else
           "copy / transpose / layout" if ("copy" in r["name"] or "transpose" in r["name"]
                                           or r["op"] in ("copy", "transpose")) else
           "elementwise / reduction fusions")
    c = cats.setdefault(cat, {"ms": 0.0, "flops": 0.0, "thunks": 0})
    c["ms"] += r["ms"]
    c["flops"] += r["flops"]
    c["thunks"] += 1
  for c in cats.values():
    c["share"] = c["ms"] / total
  parts: dict[str, float] = collections.Counter()
  for r in rows:
    parts[r["part"]] += r["ms"]
  mm = cats.get("matmul (a dot, alone or fused)", {"ms": 0.0, "flops": 0.0})
  gflops = mm["flops"] / (mm["ms"] / 1e3) / 1e9 if mm["ms"] else None
  return {
      "thunk_ms_per_step": total,
      "categories": cats,
      "parts": [{"part": p, "ms": ms, "share": ms / total}
                for p, ms in sorted(parts.items(), key=lambda kv: -kv[1])],
      "top": sorted(rows, key=lambda r: -r["ms"])[:15],
      "matmul_gflops": gflops,
      "matmul_fraction_of_reference": (gflops / reference_gflops
                                       if gflops and reference_gflops else None),
  }
