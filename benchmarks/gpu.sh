#!/usr/bin/env bash
# GPU figures for docs/benchmarks.md, in one JSON file: training throughput, MFU and peak memory of the
# paper's four models in head and full mode (bf16, their paper micro-batches, 384 px, random weights,
# synthetic 64x64 images), pure bf16 inference for each, the data-path comparison with 0 and 8 loader
# workers, and the speed options (fp32, fused AdamW, timm fused attention off, torch.compile, pinned
# memory) on DeiT-B; torch.compile last, as it compiles first (21 s on an H200). Nothing is downloaded.
# Sized (6 timed steps x 3 repeats) for the issue's 8 minutes on one H100: it ran in 179 s on an H200
# (2026-11-26). The JSON is rewritten after every measurement, so a run cut short keeps what it measured.
# A mode that runs out of memory is retried at half the micro-batch. Add --isolate (below) to run each
# measurement in its own process.
# Then head mode's options for each of the four models (issue 12): model.backbone_dtype bf16 against bf16 autocast
# (training step and evaluation), the evaluation batch at 2x and 4x the micro-batch (speed and peak memory), and
# last, model by model, train.compile's backbone compile (training step, evaluation). Not yet run on a GPU: on top
# of the 179 s above, an estimated 1-1.5 min of cheap options and 20-45 s per compile (8 compiles); if the
# device's time runs out first, the JSON holds every figure measured before (the compiles of the last models lost).
#
# Figures and how to read them: docs/benchmarks.md.
#
#   bash benchmarks/gpu.sh [OUT.json]        # default: $OUT/gpu.json, or ./gpu.json without $OUT
#
# Runs the benchmarks package of this checkout; needs tiny_transformers importable (pip install -e . or this
# checkout on PYTHONPATH, as set below).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-.}/gpu.json}"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python="${PYTHON:-python3}"
"$python" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "benchmarks/gpu.sh: no CUDA GPU visible to torch")'
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true
workers=$(( $("$python" -c 'import os; print(len(os.sched_getaffinity(0)))') / 2 ))
workers=$(( workers < 1 ? 1 : (workers > 8 ? 8 : workers) ))
# CaiT's talking-heads attention, timm's against attention.FastTalkingHeadAttn (model.fast_attention), eager and
# compiled, at the CaiT-S36-384 shape: one JSON line each, beside the main JSON.
"$python" benchmarks/attention.py --device cuda --dtype bf16 | tail -n 1 > "${out%.json}-attention.json"
"$python" benchmarks/attention.py --device cuda --dtype bf16 --compile | tail -n 1 >> "${out%.json}-attention.json"
# Where Swin-L's and CaiT-S36's inference forward spends its time, by kind of operator, with timm's attention and with
# model.fast_attention (CaiT's rewrite; Swin's fused window attention): about 20 s.
"$python" -m benchmarks.profile_forward --models swin_l cait_s36 --device cuda --dtype bf16 --batch 64 \
  --json "${out%.json}-profile.json"
"$python" -m benchmarks.profile_forward --models swin_l cait_s36 --device cuda --dtype bf16 --batch 64 \
  --fast-attention --json "${out%.json}-profile-fast.json"
# Each model's report ends with its projected 30-epoch head-mode recipe; the last lines give the whole table.
exec "$python" -m benchmarks \
  --model vit_l cait_s36 deit_b_distilled swin_l --mode head full --precision bf16 \
  --sections data train options head_options --options-model deit_b_distilled --workers 0 "$workers" \
  --steps 6 --warmup 2 --repeats 3 --min-seconds 0.5 --json "$out"
