#!/usr/bin/env bash
# One short GPU check (~8 minutes at most) for a lent NVIDIA H200: our train step beside the
# PyTorch peer, a larger batch, the cold start of train.py with and without the persistent
# compilation cache, and bench/bench_sample.py if it exists. Every figure is streamed to
# $OUT/gpu_bench.txt as it comes; stderr goes to $OUT/gpu_check_stderr.txt and the stamped
# train.py logs to $OUT/train_cold_{1,2}.txt.
#
#   bash bench/gpu_check.sh --fetch-wheels    # here, with PyPI: fills bench/wheels/ (py3.12)
#   bash bench/gpu_check.sh                   # there: installs the wheels, then measures
#   GPU_CHECK_TINY=1 PYTHON=.venv/bin/python GPU_CHECK_SKIP_INSTALL=1 bash bench/gpu_check.sh
#                                             # CPU smoke test: small models, 1 step
#
# The GPU machine has jax (CUDA) and torch but not diffusers, ml_collections, grain,
# tensorflow-datasets, nor the few small pure-Python packages below that they and our code
# import; those travel as wheels (bench/wheels/, gitignored, carried with the run).
#
# Environment: OUT (default /tmp/gpu_check), PYTHON (default python3), PEER_PYTHON (the
# peer's, default PYTHON), GPU_CHECK_STEPS (timed steps, default 30), GPU_CHECK_BUDGET
# (seconds for the whole script, default 470), GPU_CHECK_TINY=1, GPU_CHECK_SKIP_INSTALL=1.
set -u
cd "$(dirname "$0")/.."

# Pinned to the versions CI runs (constraints.txt); the GPU machine runs CPython 3.12.
WHEELS=(diffusers==0.42.1 ml_collections==1.1.0 grain==0.2.18 tensorflow-datasets==4.9.10
        array_record==0.8.6 immutabledict==4.3.1 portpicker==1.6.0 tensorboardX==2.6.5
        tensorflow-metadata==1.21.0 googleapis-common-protos==1.76.0 toml==0.10.2)
SDIST_ONLY=(promise==2.3)  # no wheel on PyPI: built here (pure Python)

if [[ "${1:-}" == "--fetch-wheels" ]]; then
  mkdir -p bench/wheels
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d bench/wheels "${WHEELS[@]}" || exit 1
  python3 -m pip wheel -q --no-deps -w bench/wheels "${SDIST_ONLY[@]}" || exit 1
  ls -l bench/wheels
  exit 0
fi

PY=${PYTHON:-python3}
PEER_PY=${PEER_PYTHON:-$PY}  # has torch and diffusers
OUT=${OUT:-/tmp/gpu_check}
STEPS=${GPU_CHECK_STEPS:-30}
BUDGET=${GPU_CHECK_BUDGET:-470}
mkdir -p "$OUT"
LOG=$OUT/gpu_bench.txt
ERR=$OUT/gpu_check_stderr.txt
: >"$LOG"; : >"$ERR"
export PYTHONUNBUFFERED=1
START=$SECONDS

say() { echo "$*" | tee -a "$LOG"; }

# timeout_for CAP: CAP seconds, or what is left of the budget if that is less (at least 1).
timeout_for() {
  local left=$((BUDGET - (SECONDS - START)))
  ((left < 1)) && left=1
  echo $(($1 < left ? $1 : left))
}

# run CAP CMD...: one measurement under its timeout, stdout streamed to the log.
run() {
  local cap; cap=$(timeout_for "$1"); shift
  say "\$ $* (timeout ${cap}s)"
  timeout "$cap" "$@" 2>>"$ERR" | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  ((rc == 124)) && say "# TIMED OUT after ${cap}s"
  ((rc != 0 && rc != 124)) && say "# exit $rc (see $(basename "$ERR"))"
  return 0
}

if [[ -z "${GPU_CHECK_SKIP_INSTALL:-}" ]]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir bench/wheels/*.whl \
    2>>"$ERR" || { say "# wheel install failed (see $(basename "$ERR"))"; exit 1; }
fi

if [[ -n "${GPU_CHECK_TINY:-}" ]]; then  # CPU smoke test: the same commands, small
  STEPS=1
  BENCH_CFG=(--only unet6m --batch 8)
  BIG_BATCH=16
  TRAIN_CFG=(--config configs/digits_vp.py --config.optim.warmup=0 --config.training.n_iters=3)
  SAMPLE_CFG=(--nfe 20 --batch 16)
else
  BENCH_CFG=(--only cifar10 --batch 128)
  BIG_BATCH=512
  TRAIN_CFG=(--config configs/cifar10_ddpmpp_vp.py --config.training.n_iters=20)
  SAMPLE_CFG=(--config configs/cifar10_ddpmpp_vp.py --override data.dataset=synthetic
              --override model.dtype=bfloat16 --batch 256 --nfe 20,1000)
fi

say "# gpu_check $(date -u +%FT%TZ) python=$("$PY" -c 'import sys; print(sys.version.split()[0])')"
command -v nvidia-smi >/dev/null && \
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$LOG"
"$PY" -c 'import jax; print("# jax", jax.__version__, jax.devices())' 2>>"$ERR" | tee -a "$LOG"
"$PEER_PY" -c 'import diffusers, torch; print("# torch", torch.__version__, "cuda",
  torch.cuda.is_available(), "diffusers", diffusers.__version__)' 2>>"$ERR" | tee -a "$LOG"

# 1. Ours in bf16 beside the peer in bf16 autocast and in fp32 with TF32 (XLA's default f32).
run 240 "$PY" bench/bench_train.py "${BENCH_CFG[@]}" --dtype bfloat16 --steps "$STEPS" \
  --peer bf16,tf32 --peer_python "$PEER_PY"
# 2. A 4x larger batch, ours only.
run 150 "$PY" bench/bench_train.py "${BENCH_CFG[@]}" --batch "$BIG_BATCH" --dtype bfloat16 \
  --steps "$STEPS"

# 3. Cold start of train.py: process start to the first finished step (its "step 1:" log
# line), first with an empty persistent compilation cache, then reusing it.
CACHE=$(mktemp -d /tmp/jax_cache.XXXXXX)
for i in 1 2; do
  WORK=$(mktemp -d /tmp/gpu_check_train.XXXXXX)
  cap=$(timeout_for 120)
  say "\$ train.py ${TRAIN_CFG[*]} --config.data.dataset=synthetic --config.model.dtype=bfloat16" \
      "(run $i, JAX_COMPILATION_CACHE_DIR=$CACHE, timeout ${cap}s)"
  t0=$(date +%s.%N)
  JAX_COMPILATION_CACHE_DIR=$CACHE timeout "$cap" "$PY" train.py "${TRAIN_CFG[@]}" \
    --config.data.dataset=synthetic --config.model.dtype=bfloat16 --workdir "$WORK" \
    --config.training.log_freq=1 --config.training.snapshot_sampling=False 2>&1 |
    "$PY" -c 'import sys, time
t0 = float(sys.argv[1])
for line in sys.stdin:
    sys.stdout.write(f"{time.time() - t0:8.2f}s {line}")' "$t0" >"$OUT/train_cold_$i.txt"
  rc=${PIPESTATUS[0]}
  first=$(grep -m1 -E "\] step 1:" "$OUT/train_cold_$i.txt" | awk '{print $1}')
  last=$(tail -n1 "$OUT/train_cold_$i.txt" | awk '{print $1}')
  say "# cold start run $i: first step finished at ${first:-never}, process ended at" \
      "${last:-?} (exit $rc; cache $(du -sh "$CACHE" | cut -f1))"
  rm -rf "$WORK"
done
rm -rf "$CACHE"

# 4. Sampling, if its benchmark exists: cifar10's network in bf16 at 20 and 1000 NFE.
if [[ -f bench/bench_sample.py ]]; then
  run 120 "$PY" bench/bench_sample.py "${SAMPLE_CFG[@]}" --seconds 5
else
  say "# bench/bench_sample.py does not exist: skipped"
fi
say "# gpu_check done in $((SECONDS - START)) s"
