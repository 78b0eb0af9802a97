#!/usr/bin/env bash
# One-shot GPU check of jaxseq: environment, the model/evaluator/train tests on the GPU, training
# throughput of jaxseq (benchmark_train.py: both model.conv_impl values, both compute dtypes) and of
# the PyTorch baseline on CUDA (cuDNN benchmark mode, float32 and torch.autocast bf16) at batch 200,
# 2,048 and 16,384 for aemd and the single-layer model, then 2 minutes of aemd training on E. coli
# end to end (SIGTERM saves a checkpoint) and its test accuracy (python -m jaxseq.evaluate).
# At most ~8 minutes on one CUDA GPU: every stage has its own time limit and a stage that fails or
# runs out of time is recorded as such, never stops the others.
#
# Needs JAX (CUDA) and PyTorch (CUDA) preinstalled plus this package's pure-Python dependencies:
#   pip install --no-deps -e .      (from the repository root; pyfaidx/tensorboardX wheels if missing)
#   bash experiments/gpu_check.sh [OUT_DIR] [--fasta FILE]
# --cpu runs the same stages in minutes at tiny sizes on the CPU (CI tests the script that way).
# Writes into OUT_DIR (default experiments/out/gpu_check/): gpu_check.json (everything), gpu_check.txt
# (the table), env.txt, tests.log, benchmarks.log, train.log. The loader alone (benchmark_loader.py, one core)
# is measured at the largest batch against the fastest step's demand.
#
# Options (mostly for --cpu and tests): --batches 200,2048,16384  --configs single,aemd
#   --conv-impls flax,cpu  --dtypes float32,bfloat16  --train-seconds 120  --tests "FILES"  --steps N
set -u
cd "$(dirname "$0")/.."
REPO=$(pwd)
PY=${PYTHON:-python}

OUT=experiments/out/gpu_check
FASTA=../shared/data/ecoli_k12_mg1655.fa.gz
MODE=gpu
BATCHES=200,2048,16384
CONFIGS=single,aemd
CONV_IMPLS=flax,cpu
DTYPES=float32,bfloat16
TRAIN_SECONDS=120
TESTS="tests/test_models.py tests/test_kernels.py tests/test_evaluate.py tests/test_trained.py"
STEPS=""
TRAIN_SET=()
BENCH_SET=()
BENCH_ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu) MODE=cpu ;;
    --fasta) FASTA=$2; shift ;;
    --batches) BATCHES=$2; shift ;;
    --configs) CONFIGS=$2; shift ;;
    --conv-impls) CONV_IMPLS=$2; shift ;;
    --dtypes) DTYPES=$2; shift ;;
    --train-seconds) TRAIN_SECONDS=$2; shift ;;
    --tests) TESTS=$2; shift ;;
    --steps) STEPS=$2; shift ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    -*) echo "error: unknown option $1" >&2; exit 2 ;;
    *) OUT=$1 ;;
  esac
  shift
done
if [ ! -f "$FASTA" ]; then
  echo "error: --fasta $FASTA: file not found (E. coli K-12: ecoli_k12_mg1655.fa.gz)" >&2
  exit 2
fi
if [ "$MODE" = cpu ]; then
  # Tiny sizes: the script itself is what is tested. Training stops by train.num_steps, not the clock.
  export JAX_PLATFORMS=cpu CUDA_VISIBLE_DEVICES=""
  TORCH_DEVICE=cpu; STEPS=${STEPS:-4}; REPEATS=1; BENCH_LIMIT=240; TEST_LIMIT=120; LOADER_SECONDS=0.5
  BENCH_ARGS=(--ceiling-size 256)
  BENCH_SET=(--set data.block_len=2000)  # small genomes (lambda phage) still get test blocks
  TRAIN_SET=(--set train.batch_size=16 --set train.num_steps=6 --set train.steps_per_call=2 --set optim.warmup_steps=2
             --set train.log_every=2 --set train.eval_every=1000 --set train.checkpoint_every=1000
             --set train.histogram_every=0 --set train.eval_max_windows=64 --set data.block_len=2000)
else
  TORCH_DEVICE=cuda; STEPS=${STEPS:-200}; REPEATS=2; BENCH_LIMIT=75; TEST_LIMIT=100; LOADER_SECONDS=2
fi
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
: > "$OUT/benchmarks.log"

stage() {  # stage NAME LIMIT_S LOG CMD...: runs CMD under a time limit, records "NAME rc seconds"
  local name=$1 limit=$2 log=$3; shift 3
  local t0=$SECONDS
  echo "== $name: $*" | tee -a "$log"
  timeout -s TERM -k 10 "$limit" "$@" >> "$log" 2>&1
  local rc=$?
  echo "$name $rc $((SECONDS - t0))" >> "$WORK/stages.txt"
  echo "   $name: exit $rc after $((SECONDS - t0)) s"
}

echo "gpu_check ($MODE) -> $OUT"
{
  date -u
  nvidia-smi 2>&1 || echo "nvidia-smi: not available"
  "$PY" - <<'EOF'
import platform
import jax
print("python", platform.python_version(), "jax", jax.__version__, "backend", jax.default_backend())
print("devices", jax.devices())
try:
    import torch
    print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available(),
          "cudnn", torch.backends.cudnn.version() if torch.cuda.is_available() else None)
except ImportError:
    print("torch: not installed")
EOF
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

# 1. The tests that exercise models, kernels, the evaluator and training, on this machine's default device.
read -r -a TEST_FILES <<< "$TESTS"
# -o addopts=: one process (the ini asks pytest-xdist for workers, which need not be installed there, and two
# JAX processes would each claim most of the GPU memory).
stage tests "$TEST_LIMIT" "$OUT/tests.log" "$PY" -m pytest -o addopts= -q -x -p no:cacheprovider "${TEST_FILES[@]}"

# 2. jaxseq's step: every config x conv_impl x dtype, per batch size (compute-only and end to end).
for B in ${BATCHES//,/ }; do
  stage "jax_b$B" "$BENCH_LIMIT" "$OUT/benchmarks.log" "$PY" experiments/benchmark_train.py --configs "$CONFIGS" \
    --conv-impls "$CONV_IMPLS" --dtypes "$DTYPES" --steps "$STEPS" --repeats "$REPEATS" --fasta "$FASTA" \
    --set "train.batch_size=$B" "${BENCH_SET[@]}" "${BENCH_ARGS[@]}" --out "$WORK/jax_b$B.json"
done

# 3. The PyTorch baseline on the same batches (CUDA: cuDNN benchmark mode), float32 and autocast bf16.
if "$PY" -c "import torch" 2>/dev/null; then
  for B in ${BATCHES//,/ }; do
    stage "torch_b$B" "$BENCH_LIMIT" "$OUT/benchmarks.log" "$PY" experiments/benchmark_vs_torch.py \
      --implementations torch --no-end-to-end --setups "$CONFIGS" --torch-device "$TORCH_DEVICE" \
      --torch-threads cpu --torch-precisions float32,bfloat16 --warmup "$STEPS" --repeats "$REPEATS" \
      --steps-single "$STEPS" --steps-aemd "$STEPS" --fasta "$FASTA" --set "train.batch_size=$B" "${BENCH_SET[@]}" \
      --out "$WORK/torch_b$B.json"
  done
else
  echo "torch: not installed, baseline skipped" | tee -a "$OUT/benchmarks.log"
fi

# The loader alone (one core, all augmentations) at the largest batch: it must outrun the step's demand.
LAST_B=${BATCHES##*,}
stage loader "$BENCH_LIMIT" "$OUT/benchmarks.log" "$PY" experiments/benchmark_loader.py --skip cache,rss \
  --batch-size "$LAST_B" --seconds "$LOADER_SECONDS" --out "$WORK/loader.json"

# 4. aemd on E. coli end to end for TRAIN_SECONDS (SIGTERM: checkpoint saved, exit 143), then its test accuracy.
stage train "$TRAIN_SECONDS" "$OUT/train.log" "$PY" -m jaxseq.train --config configs/multilayer_aemd.yaml \
  --workdir "$WORK/run" --set "data.fasta=$FASTA" "${TRAIN_SET[@]}"
stage evaluate 120 "$OUT/train.log" "$PY" -m jaxseq.evaluate "$WORK/run" --split test

# 5. Everything as JSON and a table.
"$PY" - "$OUT" "$WORK" "$MODE" "$BATCHES" <<'EOF'
import glob, json, sys
from pathlib import Path

out, work, mode, batches = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4].split(",")
stages = {}
for line in (work / "stages.txt").read_text().splitlines():
    name, rc, seconds = line.split()
    stages[name] = {"exit_code": int(rc), "seconds": int(seconds), "timed_out": int(rc) in (124, 137)}
rows = []
for b in batches:
    jax_file, torch_file = work / f"jax_b{b}.json", work / f"torch_b{b}.json"
    if jax_file.is_file():
        for r in json.loads(jax_file.read_text())["records"]:
            rows.append({"batch_size": int(b), "implementation": "jaxseq", "setup": r["setup"],
                         "variant": f"{r['conv_impl']} {r['dtype']} {r['mode']}",
                         "windows_per_sec": r["windows_per_sec"], "percent_of_ceiling": r["percent_of_ceiling"]})
    if torch_file.is_file():
        for r in json.loads(torch_file.read_text())["rows"]:
            rows.append({"batch_size": int(b), "implementation": "torch", "setup": r["setup"],
                         "variant": f"{r['device']} {r['precision']} compute", "windows_per_sec": r["windows_per_sec"]})
loader_file = work / "loader.json"
loader = json.loads(loader_file.read_text())["throughput"] if loader_file.is_file() else []
largest = max(map(int, batches))
demand = max([r["windows_per_sec"] for r in rows if r["implementation"] == "jaxseq" and r["batch_size"] == largest
              and r["variant"].endswith("compute")] or [0.0])
run = work / "run"
reports = sorted(run.glob("eval_test_deterministic_step*.json"), key=lambda p: int(p.stem.rsplit("step", 1)[1]))
evaluation = json.loads(reports[-1].read_text()) if reports else None
final = run / "final_metrics.json"
train = {"exit_code": stages.get("train", {}).get("exit_code"),
         "stopped_by_sigterm": stages.get("train", {}).get("exit_code") == 143,
         "final_metrics": json.loads(final.read_text()) if final.is_file() else None,
         "test_accuracy": evaluation["accuracy"] if evaluation else None,
         "test_loss": evaluation["loss"] if evaluation else None, "step": evaluation["step"] if evaluation else None}
summary = {"mode": mode, "environment": (out / "env.txt").read_text(), "stages": stages, "rows": rows,
           "loader": {"batch_size": largest, "rows": loader, "step_demand_windows_per_sec": demand,
                      "windows_per_sec": max([r["windows_per_sec"] for r in loader] or [0.0])},
           "train_aemd_ecoli": train,
           "ok": all(s["exit_code"] == 0 or (n == "train" and s["exit_code"] == 143) for n, s in stages.items())}
(out / "gpu_check.json").write_text(json.dumps(summary, indent=2))
lines = [f"gpu_check ({mode})", "", f"{'stage':14s} {'exit':>4s} {'seconds':>7s}"]
lines += [f"{n:14s} {s['exit_code']:4d} {s['seconds']:7d}" for n, s in stages.items()]
lines += ["", f"{'batch':>6s}  {'setup':6s}  {'implementation':14s}  {'variant':26s}  {'windows/s':>12s}"]
lines += [f"{r['batch_size']:6d}  {r['setup']:6s}  {r['implementation']:14s}  {r['variant']:26s}  "
          f"{r['windows_per_sec']:12,.0f}" for r in rows]
lines += ["", f"loader (one core, batch {largest}): {summary['loader']['windows_per_sec']:,.0f} windows/s; "
              f"fastest jaxseq step at that batch needs {demand:,.0f} windows/s"]
acc = train["test_accuracy"]
lines += ["", f"aemd on {mode}: step {train['step']}, test accuracy "
              f"{'n/a' if acc is None else f'{acc:.4f}'} (train exit {train['exit_code']})"]
(out / "gpu_check.txt").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
