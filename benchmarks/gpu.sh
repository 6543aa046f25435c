#!/usr/bin/env bash
# Issue 12's GPU figures in one run, most needed first, each stage cut off at a shared deadline so that the run ends
# inside one device call (GPU_SH_SECONDS, default 540 s) with every figure measured before the cut in its JSON file
# (each is rewritten after every measurement). Random weights and synthetic images: nothing is downloaded.
#
#   0. gpu-smoke.json      the CUDA smoke stage, at most 60 s: every path only a GPU runs, once, on tiny models
#                          (benchmarks/cuda_smoke.py): one markdown table of check | pass/fail | detail
#   1. gpu.json            the four paper recipes as their files run them (fp16 training at their micro-batches with
#                          the official preprocessing, fp32 evaluation), then with evaluation under autocast and
#                          model.fast_attention for CaiT and Swin: per recipe img/s, MFU and the projected 30 epochs;
#                          per variant the projected table (benchmarks/recipes.py)
#   2. gpu-end-to-end.json one real epoch of recipes/deit_b_distilled.py on 100,000 + 10,000 synthetic 64 px JPEGs
#                          (accelerate launch), against stage 1's projected epoch (benchmarks/end_to_end.py)
#   3. gpu-options.json    head mode's options for each model, each against its default in the same run:
#                          model.backbone_dtype bf16, evaluation at 2x and 4x the micro-batch, model.fast_attention
#                          (CaiT, Swin), model.backbone_dtype fp8 against bf16 with its outputs' agreement (torchao,
#                          from the wheels), then train.compile's backbone compile, model by model (20-45 s each)
#   4. gpu-attention.json  CaiT's talking-heads attention, timm's against the rewrite, eager and compiled (a JSON
#                          line each)
#   5. gpu-profile*.json   where Swin-L's and CaiT-S36's forward spends its time, by kind of operator, without and
#                          with model.fast_attention
#
#   bash benchmarks/gpu.sh [OUT_DIR]           # default: $OUT, or ./gpu-results without $OUT
#
# Wheels of packages the machine lacks (benchmarks/gpu_wheels.sh writes them into .whl/ on a networked machine) are
# installed first when that folder (GPU_SH_WHEELS, default .whl) exists. Figures and how to read them: docs/benchmarks.md.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-./gpu-results}}"
case "$out" in *.json) echo "benchmarks/gpu.sh: give a folder for its JSON files, not the file $out" >&2 && exit 2 ;; esac
mkdir -p "$out"
deadline=$((SECONDS + ${GPU_SH_SECONDS:-540}))
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1
python="${PYTHON:-python3}"
wheels="${GPU_SH_WHEELS:-.whl}"
if [ -d "$wheels" ]; then
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/gpu-sh-site \
    "$wheels"/*.whl || exit 1
  export PYTHONPATH="/tmp/gpu-sh-site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$python" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "benchmarks/gpu.sh: no CUDA GPU visible to torch")' || exit 1
"$python" -c 'import datasets, evaluate, tyro, timm, accelerate' || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true

# stage NAME [--cap SECONDS] COMMAND...: run COMMAND until the deadline (less 15 s for the stages' own exits), or for
# at most SECONDS; report how it ended
stage() {
  local name=$1 left=$((deadline - SECONDS - 15))
  shift
  if [ "$1" = "--cap" ]; then
    [ "$2" -lt "$left" ] && left=$2
    shift 2
  fi
  if [ "$left" -le 10 ]; then
    echo "gpu.sh: $name skipped: the deadline has passed (GPU_SH_SECONDS)"
    return
  fi
  echo "gpu.sh: $name (up to $left s) at $(date -u +%H:%M:%S)"
  timeout --signal=INT --kill-after=10 "$left" "$@"
  echo "gpu.sh: $name ended with status $? after $((SECONDS - started)) s in all"
}
started=$SECONDS
stage "0 CUDA smoke" --cap 60 "$python" -m benchmarks.cuda_smoke --seconds 45 --json "$out/gpu-smoke.json"
fast="train.eval_precision=autocast cait_s36:model.fast_attention=true swin_l:model.fast_attention=true"
stage "1 recipes" "$python" -m benchmarks --sections recipes --recipe-variants "" "$fast" \
  --steps 4 --warmup 1 --repeats 3 --json "$out/gpu.json"
stage "2 end-to-end epoch" "$python" -m benchmarks.end_to_end --recipe recipes/deit_b_distilled.py \
  --data /tmp/tiny-imagenet-like --projection "$out/gpu.json" --json "$out/gpu-end-to-end.json"
stage "3 head-mode options" "$python" -m benchmarks --model vit_l cait_s36 deit_b_distilled swin_l --precision bf16 \
  --sections head_options --steps 4 --warmup 1 --repeats 3 --json "$out/gpu-options.json"
stage "4 attention" "$python" benchmarks/attention.py --device cuda --dtype bf16 --json "$out/gpu-attention.json"
stage "4 attention, compiled" "$python" benchmarks/attention.py --device cuda --dtype bf16 --compile \
  --json "$out/gpu-attention.json"
stage "5 profile" "$python" -m benchmarks.profile_forward --models swin_l cait_s36 --device cuda --dtype bf16 \
  --batch 64 --json "$out/gpu-profile.json"
stage "5 profile, fast attention" "$python" -m benchmarks.profile_forward --models swin_l cait_s36 --device cuda \
  --dtype bf16 --batch 64 --fast-attention --json "$out/gpu-profile-fast.json"
echo "gpu.sh: done in $((SECONDS - started)) s; figures in $out"
