#!/usr/bin/env bash
# The prepared GPU check, one command on a fresh CUDA machine that has only this repository:
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]        # default OUT_DIR: $OUT if set, else docs/benchmarks/gpu
#   bash benchmarks/gpu_check.sh --cpu-dry-run    # the same parts, tiny, on CPU (no venv made: uses .venv)
#
# It makes its own virtual environment (.venv-gpu, kept for the next run), installs torch, the
# project with its pinned dependencies and deepspeed from PyPI, then runs benchmarks/gpu_check.py
# (what each part verifies is in that file's docstring and docs/benchmarks.md). torch: the plain
# `torch==2.13.0` wheel PyPI serves for Linux x86_64 is the CUDA build (CUDA 12 runtime bundled
# through its nvidia-* dependencies); set GPU_CHECK_TORCH_INDEX to a PyTorch wheel index URL to pick
# another CUDA build. The check refuses to start when that torch sees no CUDA device.
# Budget: at most 8 minutes of checks on one H100-class GPU after the install (killed at 10).
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_VERSION=2.13.0
DEEPSPEED_VERSION=0.19.8
OPEN_CLIP_VERSION=3.3.0   # only its CLIP BPE vocabulary file is read (not installed, no dependencies)

if [[ "${1:-}" == "--cpu-dry-run" ]]; then
  shift
  PY=.venv/bin/python
  [[ -x $PY ]] || make install
  OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} PYTHONPATH=src $PY benchmarks/gpu_check.py --cpu-dry-run --out "${1:-/tmp/gpu-check-dry-run}"
  exit
fi

OUT_DIR=${1:-${OUT:-docs/benchmarks/gpu}}
VENV=.venv-gpu
# torch: a system python3 whose torch already sees a GPU is reused (venv with system site packages;
# torch is then not reinstalled and its version is recorded in the output); otherwise torch==2.13.0
# is installed into the venv (see the header). GPU_CHECK_WHEELS=DIR installs from wheels in DIR only
# (a machine that cannot reach PyPI).
PIP_SOURCE=()
[[ -n "${GPU_CHECK_WHEELS:-}" ]] && PIP_SOURCE=(--no-index --find-links "$GPU_CHECK_WHEELS")
if [[ ! -x $VENV/bin/python ]]; then
  if python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    python3 -m venv --system-site-packages $VENV
  else
    python3 -m venv $VENV
  fi
fi
if [[ ! -f $VENV/.gpu-check-installed ]]; then
  if ! $VENV/bin/python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    if [[ -n "${GPU_CHECK_TORCH_INDEX:-}" ]]; then
      $VENV/bin/pip install --quiet "torch==$TORCH_VERSION" --index-url "$GPU_CHECK_TORCH_INDEX"
    else
      $VENV/bin/pip install --quiet "${PIP_SOURCE[@]}" "torch==$TORCH_VERSION"
    fi
  fi
  grep -v '^torch==' requirements-lock.txt > $VENV/constraints.txt   # keep the torch chosen above
  $VENV/bin/pip install --quiet "${PIP_SOURCE[@]}" -c $VENV/constraints.txt --no-deps -e .
  $VENV/bin/pip install --quiet "${PIP_SOURCE[@]}" -c $VENV/constraints.txt \
    $($VENV/bin/python -c "import tomllib; d = tomllib.load(open('pyproject.toml', 'rb')); print(' '.join(x.replace(' ', '') for x in d['project']['dependencies'] if not x.startswith('torch>')))")
  $VENV/bin/pip install --quiet "${PIP_SOURCE[@]}" "deepspeed==$DEEPSPEED_VERSION" || echo "deepspeed could not be installed: its part is skipped"
  touch $VENV/.gpu-check-installed
fi
mkdir -p "$OUT_DIR/work"
if $VENV/bin/pip download --quiet "${PIP_SOURCE[@]}" --no-deps "open_clip_torch==$OPEN_CLIP_VERSION" -d "$OUT_DIR/work" 2>/dev/null; then
  SPIN_BENCH_CLIP_BPE=$(ls "$OUT_DIR"/work/open_clip_torch-*.whl | head -1)
  export SPIN_BENCH_CLIP_BPE
fi
$VENV/bin/python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'torch ' + torch.__version__ + ' sees no CUDA device (CPU wheel, or no driver); see GPU_CHECK_TORCH_INDEX above')"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
timeout 600 $VENV/bin/python benchmarks/gpu_check.py --out "$OUT_DIR" --work "$OUT_DIR/work"
rm -rf "$OUT_DIR/work"   # the random-weight pipelines and runs (many GB); the JSON and table stay
echo "wrote $OUT_DIR/gpu_check.json and $OUT_DIR/gpu_check.md"
