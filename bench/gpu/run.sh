#!/usr/bin/env bash
# WaDi on one lent GPU (H100/H200): adapter cost and the VSD step on a full-depth SD1.5 UNet
# at 512 px (64x64 latents), bf16 weights + bf16 autocast, adapters in fp32.  One command,
# under 8 minutes; prints the tables and a summary, writes JSON under $OUT (or outputs/gpu).
#
#   bench/gpu/run.sh                # on the GPU machine
#   bench/gpu/run.sh --cpu-smoke    # dry run of the same pipeline on the CPU at toy sizes
#   BATCH=16 bench/gpu/run.sh       # batch 16 instead of 8
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1

# diffusers (and importlib_metadata) are not in the device image: install carried wheels.
if ! $PY -c "import diffusers" 2>/dev/null; then
  if ls .whl/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  else
    echo "diffusers is missing and no wheels are in .whl/: see bench/gpu/README.md" >&2
    exit 2
  fi
fi

OUTDIR=${OUT:-outputs/gpu}
mkdir -p "$OUTDIR"
if [[ "${1:-}" == "--cpu-smoke" ]]; then
  DEV=cpu UNET=sd15-toy LAT=8 BATCH=${BATCH:-2} DT=fp32 AC=() REP=2 WARM=1 RANKS="8 16" SR=16 FR=4
else
  DEV=cuda UNET=sd15 LAT=64 BATCH=${BATCH:-8} DT=bf16 AC=(--autocast bf16) REP=${REP:-8} WARM=3 RANKS="64 256" SR=256 FR=32
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv | tee "$OUTDIR/gpu.txt"
fi
[[ -f bench/gpu/SOURCE ]] && cat bench/gpu/SOURCE | tee "$OUTDIR/source.txt"
export WADI_BENCH_CACHE=${WADI_BENCH_CACHE:-/tmp/wadi-bench-cache}
START=$(date +%s)

echo "== adapter cost: fwd+bwd, $UNET, ${LAT}x${LAT} latents, batch $BATCH, $DT =="
$PY bench/adapter_cost.py --device "$DEV" --unet "$UNET" --latent "$LAT" --batch "$BATCH" --dtype "$DT" "${AC[@]}" \
  --ranks $RANKS --repeats "$REP" --warmup "$WARM" --json "$OUTDIR/adapter_cost.json" --max-load 1e9

echo "== VSD step: ours (LoRaD), ours with a LoRA student, official-style =="
$PY bench/vsd_step.py --device "$DEV" --models "$UNET" --latent "$LAT" --batch "$BATCH" --dtype "$DT" "${AC[@]}" \
  --student-rank "$SR" --fake-rank "$FR" --candidates ours ours-lora official --copies real \
  --repeats "$REP" --warmup "$WARM" --json "$OUTDIR/vsd_step.json" --max-load 1e9

$PY bench/gpu/summarize.py "$OUTDIR" | tee "$OUTDIR/summary.md"
echo "total wall time: $(( $(date +%s) - START )) s"
