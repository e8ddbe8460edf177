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

The study lives in cardiac_jax/studies/bench_train.py (also runnable as
``python -m cardiac_jax.studies.bench_train``).
"""
from absl import app
from absl import flags

from cardiac_jax.studies import bench_train

if __name__ == "__main__":
  bench_train.define_flags()
  flags.adopt_module_key_flags(bench_train)   # --helpshort lists the study's flags
  app.run(bench_train.main)
