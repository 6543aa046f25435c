#!/usr/bin/env bash
# CPU figures for docs/benchmarks.md: the data-path comparison (0 and 2 loader workers), the loop
# overhead of finetune() against a bare PyTorch loop, and test_vit throughput in head and full mode.
# Random weights, synthetic images, nothing downloaded; a few minutes on 2 cores.
#
#   bash benchmarks/cpu.sh [OUT.json]        # default: ./cpu.json
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1 CUDA_VISIBLE_DEVICES=""
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python}" -m benchmarks --model test_vit --workers 0 2 \
  --sections data loop train options --no-compile --json "${1:-cpu.json}"
