"""cardiac_jax/studies/hlo_profile.py: thunk own times, dot FLOPs through fusions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cardiac_jax.studies import hlo_profile as hp


def test_self_times_subtract_nested_children_per_thread():
  events = [
      {"name": "outer", "ts": 0, "dur": 100, "pid": 1, "tid": 1},
      {"name": "a", "ts": 10, "dur": 30, "pid": 1, "tid": 1},
      {"name": "b", "ts": 50, "dur": 20, "pid": 1, "tid": 1},
      {"name": "a", "ts": 55, "dur": 5, "pid": 1, "tid": 1},      # nested in b
      {"name": "a", "ts": 0, "dur": 40, "pid": 1, "tid": 2},      # other thread: no nesting
  ]
  own = hp.self_times(events)
  assert own == {"outer": 50.0, "a": 75.0, "b": 15.0}


def test_breakdown_counts_the_dot_flops_of_a_traced_matmul(tmp_path):
  m, k, n = 64, 32, 48
  f = jax.jit(lambda a, b: jnp.tanh(a @ b).sum(0) * 3.0)
  a = jnp.asarray(np.random.default_rng(0).normal(size=(m, k)), jnp.float32)
  b = jnp.asarray(np.random.default_rng(1).normal(size=(k, n)), jnp.float32)
  compiled = f.lower(a, b).compile()
  jax.block_until_ready(compiled(a, b))
  steps = 3
  with jax.profiler.trace(str(tmp_path), create_perfetto_trace=True):
    for _ in range(steps):
      jax.block_until_ready(compiled(a, b))
  out = hp.breakdown(compiled.as_text(), hp.load_trace(str(tmp_path)), steps,
                     reference_gflops=1.0)
  mm = out["categories"]["matmul (a dot, alone or fused)"]
  assert mm["flops"] == 2 * m * k * n          # one dot per call, found through its fusion
  assert mm["thunks"] == 1
  assert 0.0 < mm["share"] <= 1.0
  assert out["matmul_gflops"] == pytest.approx(mm["flops"] / (mm["ms"] / 1e3) / 1e9)
  assert sum(c["share"] for c in out["categories"].values()) == pytest.approx(1.0)


def test_part_of_tells_forward_backward_and_layer():
  assert hp.part_of("jit(f)/while/body/transpose(jvp(M))/block_1/attn/mul") == \
      "backward: block_1/attn"
  assert hp.part_of("jit(f)/while/body/jvp(M)/block_0/mlp_in/dot") == "forward: block_0/mlp_in"
  assert hp.part_of("jit(f)/while/body/adam/mul") == "optimizer / other"
