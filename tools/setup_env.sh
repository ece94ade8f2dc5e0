#!/usr/bin/env bash
# One-command environment set-up for DToP.
#
#   bash tools/setup_env.sh            # creates/updates .venv/ at the repository root
#
# What it does (idempotent: a second run checks a stamp and the imports, then exits):
#   1. python3.11 -m venv .venv
#   2. torch/torchvision + build tools (setuptools<82 keeps pkg_resources)
#   3. mmcv 2.1.0 *with compiled ops*, built from the sdist once and cached as a wheel in
#      $DTOP_CACHE (default ~/.cache/dtop), keyed on the torch version and CPU/CUDA.
#      CPU ops always; CUDA ops when `nvcc` and a GPU (`nvidia-smi`) are both present.
#      Expect ~20-25 min on 2 cores for the first build; later runs reuse the wheel.
#   4. requirements.txt (ranges) + requirements-optional.txt + requirements-dev.txt with
#      the exact tested versions of constraints.txt, then `pip install -e .` (dtop).
#
# Environment knobs: PYTHON (interpreter, default python3.11 or python3), DTOP_VENV (venv
# path), DTOP_CACHE (wheel cache), MAX_JOBS (compile jobs, default nproc).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${DTOP_VENV:-$ROOT/.venv}"
CACHE="${DTOP_CACHE:-$HOME/.cache/dtop}"
MMCV_VERSION="$(sed -n 's/^mmcv==//p' "$ROOT/constraints.txt")"
[[ -n "$MMCV_VERSION" ]] || { echo "setup_env: no 'mmcv==' pin in constraints.txt" >&2; exit 1; }
T0=$(date +%s)
# mmcv's sdist download, C++20 patch and wheel build, shared with tools/device_check.sh.
source "$ROOT/tools/_mmcv_build.sh"

log() { printf '[setup_env %4ss] %s\n' "$(( $(date +%s) - T0 ))" "$*"; }

pick_python() {
  if [[ -n "${PYTHON:-}" ]]; then echo "$PYTHON"; return; fi
  for p in python3.11 python3; do
    if command -v "$p" >/dev/null 2>&1; then echo "$p"; return; fi
  done
  echo "setup_env: no python3 found; install Python 3.11 or set PYTHON=/path/to/python" >&2
  exit 1
}

# Everything that decides the environment's content goes into the stamp.
stamp_of() {
  cat "$ROOT/requirements.txt" "$ROOT/requirements-optional.txt" "$ROOT/requirements-dev.txt" \
    "$ROOT/constraints.txt" "$ROOT/tools/setup_env.sh" "$ROOT/tools/_mmcv_build.sh" \
    "$ROOT/setup.py" \
    | sha256sum | cut -d' ' -f1
}

IMPORT_CHECK='import torch, torchvision, mmcv, mmcv.ops, mmseg.models, mmpretrain, dtop'

if [[ -x "$VENV/bin/python" && -f "$VENV/.dtop-stamp" ]] \
   && [[ "$(cat "$VENV/.dtop-stamp")" == "$(stamp_of)" ]] \
   && "$VENV/bin/python" -c "$IMPORT_CHECK" >/dev/null 2>&1; then
  log "environment in $VENV is up to date (delete $VENV/.dtop-stamp to force a re-install)"
  exit 0
fi

PY_BOOT="$(pick_python)"
if [[ ! -x "$VENV/bin/python" ]]; then
  log "creating virtual environment $VENV with $PY_BOOT"
  "$PY_BOOT" -m venv "$VENV"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check)

log "installing torch, torchvision and build tools (first time ~2 min, ~5.5 GB)"
"${PIP[@]}" install -q "pip>=23" wheel ninja "setuptools>=77.0.3,<82"
# The exact tested versions live in constraints.txt (requirements.txt has ranges).
pin_of() {
  grep -E "^$1==" "$ROOT/constraints.txt" \
    || { echo "setup_env: no '$1==' pin in constraints.txt" >&2; exit 1; }
}
"${PIP[@]}" install -q "$(pin_of torch)" "$(pin_of torchvision)"

# ---------------------------------------------------------------- mmcv with ops
if "$PY" -c "import mmcv, mmcv.ops; assert mmcv.__version__ == '$MMCV_VERSION'" >/dev/null 2>&1; then
  log "mmcv $MMCV_VERSION with ops already installed"
else
  TORCH_VER="$("$PY" -c 'import torch; print(torch.__version__.split("+")[0])')"
  PYTAG="$("$PY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')"
  VARIANT=cpu
  if command -v nvcc >/dev/null 2>&1 && command -v nvidia-smi >/dev/null 2>&1 \
     && nvidia-smi -L >/dev/null 2>&1; then
    VARIANT=cuda
  fi
  WHEEL_DIR="$CACHE/mmcv-$MMCV_VERSION-torch$TORCH_VER-$PYTAG-$VARIANT"
  WHEEL="$(ls "$WHEEL_DIR"/mmcv-"$MMCV_VERSION"-*.whl 2>/dev/null | head -1 || true)"
  if [[ -z "$WHEEL" ]]; then
    JOBS="${MAX_JOBS:-$(nproc)}"
    log "building mmcv $MMCV_VERSION with $VARIANT ops against torch $TORCH_VER ($JOBS jobs)."
    log "this is a one-time build: expect ~20-25 min on 2 cores; the wheel is cached in $WHEEL_DIR"
    BUILD="$(mktemp -d)"
    trap 'rm -rf "$BUILD"' EXIT
    mmcv_fetch_sdist "$PY" "$MMCV_VERSION" "$BUILD"
    # extract and patch (torch>=2.14 headers need C++20: tools/_mmcv_build.sh)
    mmcv_unpack_patched "$BUILD"/mmcv-"$MMCV_VERSION".tar.gz "$BUILD"
    SRC="$BUILD/mmcv-$MMCV_VERSION"
    export MMCV_WITH_OPS=1 MAX_JOBS="$JOBS"
    if [[ "$VARIANT" == cuda ]]; then export FORCE_CUDA=1; fi
    mkdir -p "$WHEEL_DIR"
    # Show ninja's [done/total] progress lines; the full log stays in $BUILD/build.log.
    mmcv_build_wheel "$PY" "$SRC" "$WHEEL_DIR" > "$BUILD/build.log" 2>&1 &
    BPID=$!
    while kill -0 "$BPID" 2>/dev/null; do
      sleep 30
      last="$(mmcv_build_progress "$BUILD/build.log")"
      log "mmcv build running... ${last:-configuring}"
    done
    if ! wait "$BPID"; then
      tail -40 "$BUILD/build.log" >&2
      echo "setup_env: mmcv build failed; full log above (last 40 lines)." >&2
      rm -rf "$WHEEL_DIR"
      exit 1
    fi
    WHEEL="$(ls "$WHEEL_DIR"/mmcv-"$MMCV_VERSION"-*.whl | head -1)"
    log "mmcv wheel built: $WHEEL"
  else
    log "reusing cached mmcv wheel $WHEEL"
  fi
  "${PIP[@]}" install -q --no-deps --force-reinstall "$WHEEL"
  # mmcv's own light dependencies (addict, yapf, ...) come with requirements below.
fi

log "installing requirements"
"${PIP[@]}" install -q -r "$ROOT/requirements.txt" -r "$ROOT/requirements-optional.txt" \
  -r "$ROOT/requirements-dev.txt" -c "$ROOT/constraints.txt"
"${PIP[@]}" install -q --no-deps --no-build-isolation -e "$ROOT"

log "checking imports"
"$PY" -c "$IMPORT_CHECK; from mmseg.registry import MODELS; import dtop; print('ok: torch', torch.__version__, 'mmcv', mmcv.__version__)"
stamp_of > "$VENV/.dtop-stamp"
log "done: activate with 'source $VENV/bin/activate'"
