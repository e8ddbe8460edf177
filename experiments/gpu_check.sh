#!/usr/bin/env bash
# GPU checks in one bounded script: environment, a bf16 smoke run, the scale3
# throughput benchmark, then the multi-scale study (scale3 first) until the deadline.
#
#   OUT=/tmp/gpu DEADLINE_S=480 bash experiments/gpu_check.sh
#
# Meant for a lent GPU machine where jax/flax/optax/orbax are preinstalled and
# the remaining dependencies travel as wheels in .whl/ (installed to /tmp/site).
# Every stage has its own timeout so the script always returns inside DEADLINE_S
# with whatever finished copied under $OUT (flat files: the lender copies 8 at most).
set -uo pipefail
OUT=${OUT:-/tmp/gpu_out}
DEADLINE_S=${DEADLINE_S:-480}
START=$(date +%s)
mkdir -p "$OUT"
left() { echo $(( DEADLINE_S - ($(date +%s) - START) )); }
stage() {  # stage NAME MIN_SECONDS CMD...: runs CMD if MIN_SECONDS remain, bounded by the deadline
  local name=$1 min=$2; shift 2
  local t; t=$(left)
  if (( t < min )); then echo "== skip $name ($t s left)"; return 1; fi
  echo "== $name (limit $((t - 15)) s) $(date +%T)"
  local s0; s0=$(date +%s)
  timeout --signal=INT --kill-after=10 $((t - 15)) "$@"
  local rc=$?
  echo "== $name rc=$rc in $(( $(date +%s) - s0 )) s"
  return $rc
}

if [[ -d .whl && -z "${SKIP_WHL:-}" ]]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1 CARDIAC_JAX_CACHE=/tmp/cardiac_cache
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import jax, flax, optax, orbax.checkpoint as o, anndata, sklearn; \
print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, \
'anndata', anndata.__version__, 'sklearn', sklearn.__version__, jax.devices())" || exit 1

stage smoke 60 python3 -m cardiac_jax.main --config=configs/debug.py --workdir=/tmp/smoke \
  --config.train.num_epochs=2 2>&1 | tail -n 25 || { echo "smoke failed"; exit 1; }

stage bench_train 120 python3 experiments/bench_train.py --config=configs/scale3.py --skip_data \
  --steps=64 --repeats=5 --peak_tflops=989 --out="$OUT/bench_train_scale3.json" 2>&1 | tail -n 30

# Issue 13's GPU target: K = 8 scale3 members in <= 2x one member's time (>= 4x aggregate).
stage bench_members 150 python3 experiments/bench_train.py --config=configs/scale3.py --skip_data \
  --steps=64 --repeats=3 --peak_tflops=989 --members=1,8,32 --member_axes=vmap \
  --out="$OUT/bench_members_scale3.json" 2>&1 | tail -n 12

stage multiscale_scale3 150 python3 experiments/multiscale.py --workdir=/tmp/ms --scales=scale3 \
  2>&1 | tee "$OUT/multiscale_scale3.log" | grep -E "epoch|test|Best|rc=" | tail -n 40

stage multiscale_seeds 120 python3 experiments/multiscale.py --workdir=/tmp/ms \
  --scales=scale3,scale2,scale1 --seeds=0,1,2 2>&1 | tee "$OUT/multiscale_seeds.log" | tail -n 30

# Whatever finished, flat: per-run report/metrics in one tarball plus the study's files.
cp /tmp/ms/multiscale.{md,json,png} "$OUT/" 2>/dev/null
(cd /tmp/ms 2>/dev/null && tar czf "$OUT/runs.tgz" */report.json */metrics.jsonl */report.md 2>/dev/null)
ls -la "$OUT"
echo "total $(( $(date +%s) - START )) s"
