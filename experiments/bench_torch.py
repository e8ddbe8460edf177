"""Training the default sequence model in JAX beside PyTorch, eager and torch.compile
(docs/results/torch_train.md).

  python3 -m venv /work/venv_torch && /work/venv_torch/bin/pip install -e ".[torch,test]"
  flock /work/cpu.lock /work/venv_torch/bin/python experiments/bench_torch.py \
      --config=configs/scale1.py --steps=32 --repeats=7 --rounds=3 --out_dir=docs/results

The study lives in cardiac_jax/studies/bench_torch.py (also runnable as
``python -m cardiac_jax.studies.bench_torch``); the torch model in
cardiac_jax/studies/torch_peer.py.
"""
from absl import app
from absl import flags

from cardiac_jax.studies import bench_torch

if __name__ == "__main__":
  bench_torch.define_flags()
  flags.adopt_module_key_flags(bench_torch)   # --helpshort lists the study's flags
  app.run(bench_torch.main)
