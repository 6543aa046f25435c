#!/usr/bin/env bash
# Downloads into .whl/ the wheels that benchmarks/gpu.sh needs on the GPU machine, which has no network: Python 3.12
# (cp312, manylinux x86-64) with torch, timm, accelerate, huggingface_hub 1.33.0, pyarrow 25.0.1, fsspec, numpy,
# pandas, requests, tqdm, xxhash, filelock, packaging, pyyaml, aiohttp and typing-extensions already installed, but
# not datasets, evaluate, tyro or torchao. Run it from the repository root on a machine that reaches PyPI:
#
#   bash benchmarks/gpu_wheels.sh
#
# Only what that machine lacks is carried: a wheel laid over one of its own packages (pyarrow 26.0.1 over its 25.0.1)
# once broke datasets there. Each pin is the version tested here (the .venv), and its requirements are met by the
# machine's own packages or by another wheel below:
#   datasets 5.2.0          the package's data loading. Needs huggingface-hub>=1.31,<3 (there: 1.33.0),
#                           pyarrow>=24 (25.0.1), fsspec>=2023.1,<=2026.9.0 (there, whatever it is: huggingface_hub
#                           1.33 needs >=2023.5 and 2026.9.0 is fsspec's newest release), dill, multiprocess, and
#                           numpy, pandas, tqdm>=4.66.3, xxhash, filelock, packaging, pyyaml without tighter bounds
#   evaluate 0.4.6          the accuracy metric. Needs datasets>=2, dill, multiprocess, fsspec[http] (aiohttp is
#                           there), huggingface-hub>=0.7, requests, pandas, numpy, tqdm, xxhash, packaging
#   dill 0.4.1              for datasets (<0.4.2) and multiprocess (>=0.4.1); no requirements
#   multiprocess 0.70.19    for datasets (<0.70.20) and evaluate; a py312 wheel; needs dill>=0.4.1
#   tyro 1.0.17             the command line. Needs docstring-parser>=0.16, typeguard>=4, typing-extensions>=4.13
#   docstring-parser 0.18.0 for tyro; no requirements
#   typeguard 4.6.1         for tyro; needs typing-extensions>=4.14 (there, version not read; any release since
#                           2025-06 will do)
#   torchao 0.18.0          model.backbone_dtype fp8 (backbone.fp8_backbone). Needs torch>=2.11 (there: 2.11.0; its
#                           release notes, not its metadata, say so) and nothing else; an abi3 wheel (3.4 MB)
# The machine's versions above were read off its pip list (huggingface_hub, numpy) and a run there (pyarrow); the
# others are unread, and the --dry-run printed at the end checks them there. Seven wheels are pure Python (about
# 1.2 MB in all), torchao's is built for Python 3.10 and later. The script fails on a second version of a package or a wheel not in this list in .whl/.
set -euo pipefail
pins="datasets==5.2.0 evaluate==0.4.6 dill==0.4.1 multiprocess==0.70.19 tyro==1.0.17 docstring-parser==0.18.0
typeguard==4.6.1 torchao==0.18.0"
exclude="$(git rev-parse --git-common-dir)/info/exclude"
mkdir -p "$(dirname "$exclude")" .whl
grep -qxF /.whl/ "$exclude" 2>/dev/null || echo /.whl/ >>"$exclude"
# shellcheck disable=SC2086  # $pins is a list of requirements
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl $pins
norm() { tr 'A-Z' 'a-z' | tr -- '-.' '__'; }
wanted=$(for p in $pins; do echo "${p%%==*}"; done | norm | sort)
found=$(for w in .whl/*.whl; do basename "$w" | cut -d- -f1; done | norm | sort)
if [ "$found" != "$wanted" ]; then
  echo "gpu_wheels.sh: .whl/ should hold one wheel of each of: $(echo $wanted); it holds:" >&2
  ls .whl >&2
  echo "gpu_wheels.sh: rm -r .whl and run again" >&2
  exit 1
fi
ls -l .whl
du -sh .whl
cat <<'EOF'
On the GPU machine (device run, carry [".whl"]), benchmarks/gpu.sh installs these itself:
  bash benchmarks/gpu.sh
Any other command there starts with:
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit;
Before that install, to check there that its own packages meet every requirement (pip "Would install" these 8 alone):
  python3 -m pip install --dry-run --no-index --find-links .whl datasets==5.2.0 evaluate==0.4.6 tyro==1.0.17 torchao==0.18.0
EOF
