#!/usr/bin/env bash
# GPU check of DToP for a machine with a CUDA GPU, Python 3.12 and its own (CUDA) torch,
# but no OpenMMLab, no package registry and no internet. Sized for a 10-minute slot on
# one H100/H200.
#
#   bash tools/device_check.sh --prepare        # HERE, with PyPI: fill device_bundle/
#   bash tools/device_check.sh                  # THERE, on the GPU machine
#   bash tools/device_check.sh --dry-run [--no-bundle]   # anywhere, CPU only
#
# --prepare   downloads into device_bundle/ (git-ignored, <= 60 MiB): the Python 3.12
#             wheels of mmengine, mmsegmentation and what they and dtop import that a
#             bare torch lacks (at the versions of this checkout's .venv), the mmcv
#             sdist (its C++ ops are built THERE, against THAT torch), the Python 3.12
#             C headers (used only where the machine has none), and MANIFEST.txt
#             (sha256, size, install policy of every file).
# (no option) on the GPU machine: checks python3.12 + torch + CUDA, installs the bundle
#             (pip --no-index --no-deps --target device_bundle/site), builds mmcv's CPU
#             ops (cached in device_bundle/build/ for a rerun; seconds printed), then
#             runs, each step with its own time limit, continuing past failures:
#               1. tests/test_models/test_packing_cuda.py (packed attention backends
#                  vs per-image SDPA in fp32/bf16/fp16 with gradients; tiny model:
#                  p0=1 == dense, pruned batch == images one by one);
#               2. tools/analysis_tools/benchmark.py, ViT-B 512, ViT-L 640 and EoMT-L
#                  512 (random weights, forced keep 0.6 +- 0.2), dense/pruned x
#                  fp32/bf16, batch 1/8/32, on generated demo images;
#               3. a 20-iteration --amp training of the demo config (tools/train.py),
#                  then tools/dist_test.sh (GPUS=1) on its checkpoint.
#             and writes one markdown table (step, result, key numbers, seconds) to
#             device_bundle/report.md and stdout. Exit 0 when every step passed.
# --dry-run   the same on the CPU, up to the CUDA calls: bundle present and MANIFEST
#             sha256 ok, the bundle installed into WORK/site and imported from there
#             (the mmcv sdist only unpacked and patched: the local mmcv with ops is
#             used), and each CUDA step replaced by its CPU-sized equivalent (the same
#             commands: the tests with DTOP_CUDA_TESTS_ON_CPU=1, the benchmark with
#             --device cpu and 1 crop, 2 fp32 iterations instead of 20 --amp ones).
#             Report: WORK/report.md. --no-bundle: use this machine's Python as it is.
#
# Options: --bundle DIR (default device_bundle), --work DIR (data, logs, checkpoints;
#   default work_dirs/device_check, --dry-run: work_dirs/device_check_dry),
#   --copy-to DIR (also copy report.md, the benchmark JSONs and a logs tarball there).
# Environment: PYTHON (interpreter; default python3.12, else python3; --dry-run: the
#   checkout's .venv), DEVICE_CHECK_BUDGET_S (wall-clock budget of a run, default 570;
#   a step gets min(its own limit, what is left); one that would get < 15 s is SKIPped),
#   DEVICE_CHECK_QUICK=1 (tiny settings, for the test of --dry-run), MAX_JOBS (mmcv
#   compile jobs, default nproc), DEVICE_BUNDLE_HEAVY (--prepare: which of numpy pillow
#   scipy opencv-python-headless to carry too, default "pillow"; "" for none; installed
#   only where the target lacks them), DEVICE_BUNDLE_MAX_MIB (default 60).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
source "$ROOT/tools/_mmcv_build.sh"
T0=$(date +%s)

MODE=run
NO_BUNDLE=0
BUNDLE="$ROOT/device_bundle"
WORK=""
COPY_TO=""
usage() { sed -n '2,47p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
die() { echo "device_check: $*" >&2; exit 2; }
while (( $# )); do
  case "$1" in
    --prepare) MODE=prepare ;;
    --dry-run) MODE=dry ;;
    --no-bundle) NO_BUNDLE=1 ;;
    --bundle) (( $# >= 2 )) || die "--bundle needs a folder"; BUNDLE="$2"; shift ;;
    --work) (( $# >= 2 )) || die "--work needs a folder"; WORK="$2"; shift ;;
    --copy-to) (( $# >= 2 )) || die "--copy-to needs a folder"; COPY_TO="$2"; shift ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument '$1' (see bash tools/device_check.sh --help)" ;;
  esac
  shift
done
[[ "$NO_BUNDLE" == 0 || "$MODE" == dry ]] || die "--no-bundle goes with --dry-run only"
BUNDLE="$(realpath -m "$BUNDLE")"
QUICK="${DEVICE_CHECK_QUICK:-0}"
MMCV_VERSION="$(sed -n 's/^mmcv==//p' "$ROOT/constraints.txt")"
MMENGINE_VERSION="$(sed -n 's/^mmengine==//p' "$ROOT/constraints.txt")"
MMSEG_VERSION="$(sed -n 's/^mmsegmentation==//p' "$ROOT/constraints.txt")"
[[ -n "$MMCV_VERSION" && -n "$MMENGINE_VERSION" && -n "$MMSEG_VERSION" ]] \
  || die "constraints.txt lacks an mmcv==, mmengine== or mmsegmentation== pin"
MARKER=.device-bundle

say() { printf '[device_check %4ss] %s\n' "$(( $(date +%s) - T0 ))" "$*"; }

# ------------------------------------------------------------------ what travels
# "DIST POLICY MODULE": always = installed on every run (OpenMMLab and its small
# helpers, at the tested versions); missing = installed only where the target's Python
# cannot import MODULE (it keeps its own numpy, cv2, pytest, ...).
PACKAGES=(
  "mmengine always mmengine"
  "mmsegmentation always mmseg"
  "addict always addict"
  "yapf always yapf"
  "platformdirs always platformdirs"
  "termcolor always termcolor"
  "ftfy always ftfy"
  "wcwidth always wcwidth"
  "prettytable always prettytable"
  "setuptools missing pkg_resources"
  "regex missing regex"
  "PyYAML missing yaml"
  "rich missing rich"
  "Pygments missing pygments"
  "markdown-it-py missing markdown_it"
  "mdurl missing mdurl"
  "packaging missing packaging"
  "tqdm missing tqdm"
  "pytest missing pytest"
  "pluggy missing pluggy"
  "iniconfig missing iniconfig"
  "pytest-timeout missing pytest_timeout"
  "ninja missing ninja"
)
# Needed at import time, but numpy 16, scipy 35 and opencv-python-headless 58 MB are
# too large to carry by default (and a machine with cv2 and scipy has numpy):
# DEVICE_BUNDLE_HEAVY (default "pillow", 7 MB) names the ones to carry.
declare -A HEAVY_MODULE=([numpy]=numpy [pillow]=PIL [scipy]=scipy
                         [opencv-python-headless]=cv2)
# version source in this checkout's environment (opencv: the headless build of it)
declare -A LOCAL_DIST=([opencv-python-headless]=opencv-python)
PLATFORM_ARGS=(--only-binary=:all: --python-version 3.12 --implementation cp
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
  --platform manylinux1_x86_64)

# ================================================================== --prepare
prepare() {
  local py max_mib="${DEVICE_BUNDLE_MAX_MIB:-60}"
  if [[ -n "${PYTHON:-}" ]]; then py="$PYTHON"
  elif [[ -x "$ROOT/.venv/bin/python" ]]; then py="$ROOT/.venv/bin/python"
  else py=python3; fi
  "$py" -m pip --version >/dev/null 2>&1 || die "no pip for $py (set PYTHON)"
  if [[ -d "$BUNDLE" && ! -f "$BUNDLE/$MARKER" && -n "$(ls -A "$BUNDLE")" ]]; then
    die "$BUNDLE exists, is not empty and has no $MARKER marker: not a bundle this \
script made; choose another --bundle"
  fi
  rm -rf "$BUNDLE/wheels" "$BUNDLE/sdist" "$BUNDLE/pyinclude" "$BUNDLE/site" \
    "$BUNDLE/build" "$BUNDLE/MANIFEST.txt"
  mkdir -p "$BUNDLE/wheels" "$BUNDLE/sdist" "$BUNDLE/pyinclude"
  echo "made by tools/device_check.sh --prepare; it deletes and rewrites this folder" \
    > "$BUNDLE/$MARKER"
  local entries=() spec dist policy module ver heavy
  for spec in "${PACKAGES[@]}"; do entries+=("$spec"); done
  for heavy in ${DEVICE_BUNDLE_HEAVY-pillow}; do
    [[ -n "${HEAVY_MODULE[$heavy]:-}" ]] || die "DEVICE_BUNDLE_HEAVY: unknown '$heavy' \
(choose among: ${!HEAVY_MODULE[*]})"
    entries+=("$heavy missing ${HEAVY_MODULE[$heavy]}")
  done
  : > "$BUNDLE/.policies"
  for spec in "${entries[@]}"; do
    read -r dist policy module <<< "$spec"
    case "$dist" in
      mmengine) ver="$MMENGINE_VERSION" ;;
      mmsegmentation) ver="$MMSEG_VERSION" ;;
      *) ver="$("$py" -c 'import importlib.metadata as m, sys
try: print(m.version(sys.argv[1]))
except m.PackageNotFoundError: pass' "${LOCAL_DIST[$dist]:-$dist}")" ;;
    esac
    local req="$dist${ver:+==$ver}" before after
    before="$(ls "$BUNDLE/wheels")"
    say "wheel $req"
    if ! "$py" -m pip --disable-pip-version-check download -q --no-deps \
        "${PLATFORM_ARGS[@]}" -d "$BUNDLE/wheels" "$req" 2> "$BUNDLE/.pip.log"; then
      grep -v 'is ignored' "$BUNDLE/.pip.log" >&2
      die "no Python 3.12 manylinux x86_64 wheel for $req on the index"
    fi
    after="$(comm -13 <(echo "$before") <(ls "$BUNDLE/wheels"))"
    [[ -n "$after" ]] || after="$(ls "$BUNDLE/wheels" | grep -i "^${dist//-/_}-" | head -1)"
    echo "wheels/$after $policy $module" >> "$BUNDLE/.policies"
  done
  rm -f "$BUNDLE/.pip.log"
  # tag check: every wheel must install on CPython 3.12, Linux x86_64
  local w bad=0
  for w in "$BUNDLE"/wheels/*.whl; do
    case "$(basename "$w")" in
      *-py3-none-any.whl|*-py2.py3-none-any.whl|*-cp312-*x86_64*.whl|*-abi3-*x86_64*.whl|\
*-py3-none-manylinux*x86_64*.whl) ;;
      *) echo "device_check: $(basename "$w") does not install on CPython 3.12 x86_64" >&2
         bad=1 ;;
    esac
  done
  (( bad == 0 )) || die "wrong wheel tags (above)"

  say "mmcv $MMCV_VERSION sdist (its ops are compiled on the target, against its torch)"
  mmcv_fetch_sdist "$py" "$MMCV_VERSION" "$BUNDLE/sdist" 2> >(grep -v 'is ignored' >&2) \
    || die "could not download the mmcv $MMCV_VERSION sdist"
  local tmp
  tmp="$(mktemp -d)"
  mmcv_unpack_patched "$BUNDLE/sdist/mmcv-$MMCV_VERSION.tar.gz" "$tmp" \
    || die "the C++20 patch does not apply to the mmcv $MMCV_VERSION sdist"
  rm -rf "$tmp"
  echo "sdist/mmcv-$MMCV_VERSION.tar.gz sdist mmcv" >> "$BUNDLE/.policies"

  # CPython 3.12 C headers: a fallback for a target whose Python has no Python.h
  local inc=""
  for cand in "${PY312:-}" python3.12 /root/.pyenv/versions/3.12*/bin/python3.12 \
      /usr/bin/python3.12 /usr/local/bin/python3.12; do
    [[ -n "$cand" ]] && command -v "$cand" >/dev/null 2>&1 || continue
    inc="$("$cand" -c 'import sysconfig; print(sysconfig.get_paths()["include"])' 2>/dev/null)"
    [[ -f "$inc/Python.h" ]] && break
    inc=""
  done
  if [[ -n "$inc" ]]; then
    tar -czf "$BUNDLE/pyinclude/python3.12-include.tar.gz" -C "$(dirname "$inc")" \
      "$(basename "$inc")"
    echo "pyinclude/python3.12-include.tar.gz headers Python.h" >> "$BUNDLE/.policies"
    say "Python 3.12 headers from $inc (used there only if its Python has none)"
  else
    say "no Python 3.12 headers found here (PY312=...): the target must have its own"
  fi

  # MANIFEST: sha256 bytes path policy module
  local total=0 n=0 path size sum
  {
    echo "# device_bundle, made by tools/device_check.sh --prepare on $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "# target: CPython 3.12, Linux x86_64; checkout $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo "# policy: always = installed on every run; missing = only where the target cannot"
    echo "#   import MODULE; sdist = built there; headers = used where Python.h is missing"
    echo "# sha256 bytes path policy module"
  } > "$BUNDLE/MANIFEST.txt"
  while read -r path policy module; do
    size=$(stat -c %s "$BUNDLE/$path")
    sum=$(sha256sum "$BUNDLE/$path" | cut -d' ' -f1)
    echo "$sum $size $path $policy $module" >> "$BUNDLE/MANIFEST.txt"
    total=$(( total + size )); n=$(( n + 1 ))
  done < "$BUNDLE/.policies"
  rm -f "$BUNDLE/.policies"
  local mib
  mib="$(awk -v b="$total" 'BEGIN { printf "%.1f", b / 1048576 }')"
  echo "# total: $total bytes ($mib MiB) in $n files" >> "$BUNDLE/MANIFEST.txt"
  awk '!/^#/ && NF >= 5 { printf "  %8.2f MiB  %s (%s)\n", $2 / 1048576, $3, $4 } /^# total/ { print "  " $0 }' "$BUNDLE/MANIFEST.txt"
  (( total <= max_mib * 1048576 )) \
    || die "the bundle is $mib MiB, over DEVICE_BUNDLE_MAX_MIB=$max_mib (drop DEVICE_BUNDLE_HEAVY entries)"
  say "bundle ready in $BUNDLE ($mib MiB). Carry it to the GPU machine with the checkout \
and run: bash tools/device_check.sh"
}

if [[ "$MODE" == prepare ]]; then
  prepare
  exit 0
fi

# ================================================================== run / dry run
if [[ -z "$WORK" ]]; then
  if [[ "$MODE" == dry ]]; then WORK="$ROOT/work_dirs/device_check_dry"
  else WORK="$ROOT/work_dirs/device_check"; fi
fi
mkdir -p "$WORK" || die "cannot create $WORK"
WORK="$(cd "$WORK" && pwd)"
LOGS="$WORK/logs"
rm -rf "$LOGS" "$WORK/steps.tsv"
mkdir -p "$LOGS"
if [[ "$MODE" == dry ]]; then REPORT="$WORK/report.md"; else REPORT="$BUNDLE/report.md"; fi
BUDGET="${DEVICE_CHECK_BUDGET_S:-$([[ "$MODE" == dry ]] && echo 3600 || echo 570)}"
DEADLINE=$(( T0 + BUDGET ))
STEPS="$WORK/steps.tsv"
: > "$STEPS"
FAILED=0

# `record STEP RESULT SECONDS KEY`: one row of the report.
record() {
  local key="$4"
  [[ "$2" == SKIP && "$key" != "no checkpoint"* ]] && key="not run: the time budget was spent"
  printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$key" >> "$STEPS"
  [[ "$2" == PASS ]] || FAILED=1
  say "$1: $2 (${3}s) $key"
}

# `run_step NAME LIMIT CMD...`: CMD with its output in $LOGS/NAME.log, under
# min(LIMIT, time left); sets STEP_RESULT (PASS/FAIL/TIMEOUT/SKIP), STEP_SECS.
run_step() {
  local name="$1" cap="$2" left limit t0 rc
  shift 2
  left=$(( DEADLINE - $(date +%s) ))
  limit=$(( cap < left ? cap : left ))
  STEP_SECS=0
  if (( limit < 15 )); then
    STEP_RESULT=SKIP
    echo "skipped: ${left}s left of DEVICE_CHECK_BUDGET_S=$BUDGET" > "$LOGS/$name.log"
    return
  fi
  say "$name: running (limit ${limit}s, log $LOGS/$name.log)"
  t0=$(date +%s)
  echo "\$ $*" > "$LOGS/$name.log"
  timeout -k 10 "$limit" "$@" >> "$LOGS/$name.log" 2>&1
  rc=$?
  STEP_SECS=$(( $(date +%s) - t0 ))
  if (( rc == 0 )); then STEP_RESULT=PASS
  elif (( rc == 124 || rc == 137 )); then STEP_RESULT=TIMEOUT
  else STEP_RESULT=FAIL; fi
  if [[ "$STEP_RESULT" != PASS ]]; then
    echo "---- $name: $STEP_RESULT (exit $rc); last lines of $LOGS/$name.log:"
    tail -n 25 "$LOGS/$name.log" | sed 's/^/  | /'
  fi
}

# ------------------------------------------------------------------ 0. Python, torch, CUDA
pick_python() {
  if [[ -n "${PYTHON:-}" ]]; then echo "$PYTHON"; return; fi
  if [[ "$MODE" == dry && -x "$ROOT/.venv/bin/python" ]]; then echo "$ROOT/.venv/bin/python"; return; fi
  local p first=""
  for p in python3.12 python3 python; do  # the first that has torch
    command -v "$p" >/dev/null 2>&1 || continue
    [[ -n "$first" ]] || first="$p"
    if "$p" -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("torch") is None)' \
        2>/dev/null; then echo "$p"; return; fi
  done
  echo "$first"
}
PY="$(pick_python)"
[[ -n "$PY" ]] && command -v "$PY" >/dev/null 2>&1 || die "no Python found: this check needs \
Python 3.12 with torch (set PYTHON=/path/to/python3.12)"
PYVER="$("$PY" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])')"
PYTAG="$("$PY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')"
if [[ "$MODE" == run && "$PYTAG" != cp312 ]]; then
  say "WARNING: $PY is Python $PYVER; the bundle's compiled wheels are for 3.12 (set PYTHON)"
fi
TORCH_INFO="$("$PY" -c 'import torch; print(torch.__version__, torch.version.cuda or "none", int(torch.cuda.is_available()), torch.cuda.device_count())' 2>"$LOGS/torch.err")" \
  || die "$PY cannot import torch ($(tail -1 "$LOGS/torch.err")). This check uses the \
machine's own torch: set PYTHON to the Python 3.12 that has it."
read -r TORCH_VER TORCH_CUDA HAS_CUDA NGPU <<< "$TORCH_INFO"
CARD="none"
if (( HAS_CUDA )); then
  CARD="$("$PY" -c 'import torch; print(torch.cuda.get_device_name(0))')"
fi
SMI=""
if command -v nvidia-smi >/dev/null 2>&1; then
  SMI="$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -1)"
fi
if [[ "$MODE" == run ]] && (( ! HAS_CUDA )); then
  die "no CUDA device: $PY has torch $TORCH_VER (CUDA build: $TORCH_CUDA) and sees \
$NGPU GPU(s)${SMI:+; nvidia-smi: $SMI}. This is the GPU check; on a machine without a GPU \
run 'bash tools/device_check.sh --dry-run'."
fi
ENV_KEY="Python $PYVER, torch $TORCH_VER (CUDA $TORCH_CUDA), GPU: $CARD${SMI:+ [$SMI]}"
record "0. environment" PASS 0 "$ENV_KEY"

# ------------------------------------------------------------------ bundle: verify + install
SITE=""
BUNDLE_KEY=""
if [[ "$NO_BUNDLE" == 1 ]]; then
  record "0. bundle" PASS 0 "--no-bundle: this machine's Python as it is ($PY)"
else
  t0=$(date +%s)
  [[ -f "$BUNDLE/MANIFEST.txt" ]] || die "no bundle: $BUNDLE/MANIFEST.txt is missing. Run \
'bash tools/device_check.sh --prepare' where PyPI is reachable and carry device_bundle/ \
here (or --dry-run --no-bundle)."
  bad="$(cd "$BUNDLE" && grep -v '^#' MANIFEST.txt | awk '{ print $1 "  " $3 }' | sha256sum -c --quiet 2>&1)" \
    || die "the bundle does not match its MANIFEST.txt: $bad"
  nfiles=$(grep -vc '^#' "$BUNDLE/MANIFEST.txt")
  # modules the target already has
  mods="$(grep -v '^#' "$BUNDLE/MANIFEST.txt" | awk '$4 == "missing" { print $5 }' | tr '\n' ' ')"
  have="$("$PY" -c 'import importlib.util, sys
print(" ".join(m for m in sys.argv[1:] if importlib.util.find_spec(m) is not None))' $mods)"
  wheels=(); skipped=()
  while read -r _ _ path policy module; do
    case "$policy" in
      always) wheels+=("$BUNDLE/$path") ;;
      missing)
        if [[ " $have " == *" $module "* ]]; then continue; fi
        if [[ "$MODE" == dry && "$PYTAG" != cp312 && "$path" != *-none-any.whl ]]; then
          skipped+=("$(basename "$path")"); continue
        fi
        wheels+=("$BUNDLE/$path") ;;
    esac
  done < <(grep -v '^#' "$BUNDLE/MANIFEST.txt")
  if [[ "$MODE" == dry ]]; then SITE="$WORK/site"; else SITE="$BUNDLE/site"; fi
  rm -rf "$SITE"
  mkdir -p "$SITE"
  if "$PY" -m pip --version >/dev/null 2>&1; then
    "$PY" -m pip --disable-pip-version-check install -q --no-deps --no-index --target "$SITE" \
      "${wheels[@]}" > "$LOGS/bundle_install.log" 2>&1 \
      || { cat "$LOGS/bundle_install.log"; die "pip could not install the bundle into $SITE"; }
  else  # no pip: wheels are zip files laid out for site-packages
    for w in "${wheels[@]}"; do "$PY" -m zipfile -e "$w" "$SITE" || die "cannot unpack $w"; done
  fi
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  export PATH="$SITE/bin:$PATH"
  BUNDLE_KEY="$nfiles files sha256 ok; installed ${#wheels[@]} wheels into ${SITE#$ROOT/}"
  [[ -n "$have" ]] && BUNDLE_KEY+="; the target's own: $have"
  (( ${#skipped[@]} )) && BUNDLE_KEY+="; not for Python $PYVER: ${skipped[*]}"
  record "0. bundle" PASS $(( $(date +%s) - t0 )) "$BUNDLE_KEY"
fi

# modules needed at import time that neither the target nor the bundle provides
missing_now="$("$PY" -c 'import importlib.util
need = dict(numpy="numpy", cv2="opencv-python-headless", scipy="scipy", PIL="pillow",
            yaml="PyYAML", regex="regex", pkg_resources="setuptools<82", pytest="pytest")
print(" ".join(d for m, d in need.items() if importlib.util.find_spec(m) is None))')"
if [[ -n "$missing_now" ]]; then
  record "0. dependencies" FAIL 0 "missing here and not in the bundle: $missing_now \
(prepare with DEVICE_BUNDLE_HEAVY=\"...\")"
fi

# ------------------------------------------------------------------ mmcv with ops
MMCV_OK_PY="import mmcv, mmcv.ops; assert mmcv.__version__ == '$MMCV_VERSION', mmcv.__version__"
t0=$(date +%s)
if [[ "$MODE" == dry ]]; then
  key=""
  if [[ "$NO_BUNDLE" == 0 ]]; then
    rm -rf "$WORK/mmcv-src"; mkdir -p "$WORK/mmcv-src"
    if mmcv_unpack_patched "$BUNDLE/sdist/mmcv-$MMCV_VERSION.tar.gz" "$WORK/mmcv-src" \
        > "$LOGS/mmcv_build.log" 2>&1; then
      key="sdist unpacked + C++20 patch ok (not compiled in a dry run); "
    else
      record "0. mmcv ops" FAIL 0 "the sdist does not unpack/patch: $(tail -1 "$LOGS/mmcv_build.log")"
    fi
  fi
  # this machine's mmcv (with ops) is imported by the next step
  [[ -n "$key" ]] && record "0. mmcv ops" PASS $(( $(date +%s) - t0 )) \
    "${key}this machine's mmcv with ops is used (next row)"
else
  MMCV_KEY="mmcv-$MMCV_VERSION-torch$TORCH_VER-$PYTAG-cpu"
  WHEEL_DIR="$BUNDLE/build/$MMCV_KEY"
  MMCV_SITE="$BUNDLE/build/$MMCV_KEY-site"
  mkdir -p "$BUNDLE/build"
  wheel="$(ls "$WHEEL_DIR"/mmcv-"$MMCV_VERSION"-*.whl 2>/dev/null | head -1)"
  how="cached wheel from an earlier run"
  if [[ -z "$wheel" ]]; then
    how=""
    SRC="$BUNDLE/build/src/mmcv-$MMCV_VERSION"
    if [[ -f "$SRC/.device-check-patched" ]]; then
      how="resumed an interrupted build; "  # ninja recompiles only what is missing
    else
      rm -rf "$BUNDLE/build/src"; mkdir -p "$BUNDLE/build/src"
      mmcv_unpack_patched "$BUNDLE/sdist/mmcv-$MMCV_VERSION.tar.gz" "$BUNDLE/build/src" \
        || die "cannot unpack/patch the mmcv sdist"
      touch "$SRC/.device-check-patched"
    fi
    BUILD_ENV=(CUDA_VISIBLE_DEVICES= MMCV_WITH_OPS=1 FORCE_CUDA=0 MAX_JOBS="${MAX_JOBS:-$(nproc)}")
    if [[ "$("$PY" -c 'import os, sysconfig; print(int(os.path.isfile(os.path.join(sysconfig.get_paths()["include"], "Python.h"))))')" == 0 ]]; then
      if [[ -f "$BUNDLE/pyinclude/python3.12-include.tar.gz" && "$PYTAG" == cp312 ]]; then
        mkdir -p "$BUNDLE/build/pyinclude"
        tar -xzf "$BUNDLE/pyinclude/python3.12-include.tar.gz" -C "$BUNDLE/build/pyinclude"
        BUILD_ENV+=(CPATH="$BUNDLE/build/pyinclude/python3.12${CPATH:+:$CPATH}")
        how+="the bundle's Python.h; "
      else
        say "WARNING: $PY has no Python.h and the bundle carries none: the build will fail"
      fi
    fi
    command -v c++ >/dev/null 2>&1 || command -v g++ >/dev/null 2>&1 \
      || say "WARNING: no C++ compiler (c++/g++) on PATH: the mmcv build will fail"
    command -v ninja >/dev/null 2>&1 \
      || say "WARNING: no ninja: torch compiles the ops one file at a time (slow)"
    mkdir -p "$WHEEL_DIR"
    # CUDA_VISIBLE_DEVICES= : mmcv's setup.py builds CUDA ops whenever torch sees a GPU;
    # the CPU ops are what mmseg's import needs, and they compile in minutes.
    run_step mmcv_build 420 env "${BUILD_ENV[@]}" bash -c \
      'source tools/_mmcv_build.sh && mmcv_build_wheel "$0" "$1" "$2"' "$PY" "$SRC" "$WHEEL_DIR"
    BUILD_SECS=$STEP_SECS
    wheel="$(ls "$WHEEL_DIR"/mmcv-"$MMCV_VERSION"-*.whl 2>/dev/null | head -1)"
    if [[ "$STEP_RESULT" != PASS || -z "$wheel" ]]; then
      rm -rf "$WHEEL_DIR"
      record "0. mmcv ops" "$STEP_RESULT" "$BUILD_SECS" "build of the CPU ops failed (log: logs/mmcv_build.log)"
    else
      how+="built in ${BUILD_SECS}s with ${MAX_JOBS:-$(nproc)} jobs"
    fi
  fi
  if [[ -n "$wheel" ]]; then
    rm -rf "$MMCV_SITE"
    "$PY" -m pip --disable-pip-version-check install -q --no-deps --no-index \
      --target "$MMCV_SITE" "$wheel" >> "$LOGS/mmcv_build.log" 2>&1 \
      || "$PY" -m zipfile -e "$wheel" "$MMCV_SITE"
    export PYTHONPATH="$MMCV_SITE${PYTHONPATH:+:$PYTHONPATH}"
    if "$PY" -c "$MMCV_OK_PY" >> "$LOGS/mmcv_build.log" 2>&1; then
      say "mmcv $MMCV_VERSION with CPU ops: $how"
      record "0. mmcv ops" PASS $(( $(date +%s) - t0 )) "mmcv $MMCV_VERSION CPU ops, $how"
    else
      record "0. mmcv ops" FAIL $(( $(date +%s) - t0 )) "the built mmcv does not import (logs/mmcv_build.log)"
    fi
  fi
fi

# ------------------------------------------------------------------ imports
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHON="$PY" PYTHONUNBUFFERED=1 OMP_NUM_THREADS="${OMP_NUM_THREADS:-$([[ "$MODE" == dry ]] && echo 2 || echo 8)}"
run_step imports 120 "$PY" -c "
import os, sys
try:
    import mmcv, mmcv.ops
except ImportError as e:
    sys.exit(f'no mmcv with compiled ops ({e}); here: bash tools/setup_env.sh builds one')
assert mmcv.__version__ == '$MMCV_VERSION', f'mmcv {mmcv.__version__}, not $MMCV_VERSION'
import torch, numpy, cv2, scipy, PIL
import mmengine, mmcv, mmcv.ops, mmseg, mmseg.models, mmseg.apis
from mmseg.registry import MODELS
import dtop
site = sys.argv[1]
where = lambda m: os.path.dirname(os.path.dirname(m.__file__))
for m in (mmengine, mmseg):
    if site and not m.__file__.startswith(site):
        sys.exit(f'{m.__name__} comes from {m.__file__}, not from the bundle ({site})')
print(f'mmengine {mmengine.__version__} ({where(mmengine)}), mmcv {mmcv.__version__} '
      f'({where(mmcv)}), mmseg {mmseg.__version__} ({where(mmseg)}), dtop from {where(dtop)}, '
      f'numpy {numpy.__version__}, cv2 {cv2.__version__}')
" "$SITE"
record "0. imports" "$STEP_RESULT" "$STEP_SECS" "$(tail -1 "$LOGS/imports.log" | sed "s#$ROOT/##g" | cut -c1-400)"

# ------------------------------------------------------------------ demo data
DATA="$WORK/data"
if [[ "$QUICK" == 1 ]]; then NTRAIN=4; NVAL=2; else NTRAIN=32; NVAL=16; fi
rm -rf "$DATA"
run_step data 120 "$PY" -m dtop.datasets.demo_generator --out "$DATA" --num-train "$NTRAIN" \
  --num-val "$NVAL" --seed 0
record "0. demo data" "$STEP_RESULT" "$STEP_SECS" "$NTRAIN train + $NVAL val images (dtop.datasets.demo_generator) in ${DATA#$ROOT/}"

# ------------------------------------------------------------------ 1. CUDA tests
PYTEST=("$PY" -m pytest tests/test_models/test_packing_cuda.py -q -rs -p no:cacheprovider)
if [[ "$MODE" == dry ]]; then
  [[ "$QUICK" == 1 ]] && PYTEST+=(-k "fp32 or threshold_one or (one_by_one and auto)")
  run_step packing_tests 300 env DTOP_CUDA_TESTS_ON_CPU=1 "${PYTEST[@]}"
  label="1. packed attention + tiny model (CPU stand-in)"
else
  run_step packing_tests 150 "${PYTEST[@]}"
  label="1. packed attention + tiny model on CUDA"
fi
summary="$(grep -E '([0-9]+ (passed|failed|skipped|errors?|deselected)|no tests ran).* in [0-9.]+s' \
  "$LOGS/packing_tests.log" | tail -1 | sed 's/=//g; s/^ *//; s/ *$//')"
if [[ "$STEP_RESULT" == PASS && "$summary" != *passed* ]]; then STEP_RESULT=FAIL; fi
[[ "$STEP_RESULT" == SKIP ]] && summary="not run: the time budget was spent"
record "$label" "$STEP_RESULT" "$STEP_SECS" "${summary:-no pytest summary}"

# ------------------------------------------------------------------ 2. benchmark
bench_key() {  # bench_key JSON: the headline numbers of one benchmark.py --out file
  "$PY" - "$1" <<'EOF' 2>/dev/null || echo "no results"
import json, sys
r = json.load(open(sys.argv[1]))
rows = r['rows']
out = [r['device']]
for bs in sorted({x['batch_size'] for x in rows}):
    by = {x['variant']: x for x in rows if x['batch_size'] == bs}
    d = by.get('dense')
    parts = [f"dense {1e3 * d['crop_latency_s']:.1f} ms/crop" if d else '']
    for v in ('pruned', 'dense@bf16', 'pruned@bf16'):
        if v in by:
            parts.append(f"{v} {by[v]['speedup']:.2f}x")
    if 'pruned' in by:
        parts.append(f"realization {by['pruned']['realization']:.2f}")
    out.append(f"b{bs}: " + ', '.join(p for p in parts if p))
print('; '.join(out))
EOF
}
if [[ "$MODE" == dry ]]; then
  BENCH_ARGS=(--device cpu --batch-sizes 1 --num-crops 1 --repeats 1 --threads 2)
  if [[ "$QUICK" == 1 ]]; then
    BENCH_ARGS+=(--warmup 1)
    BENCHES=("demo configs/demo/segvit_vit-t16-8l_1xb8-1200_demo-128x128.py")
  else
    BENCH_ARGS+=(--warmup 0)
    BENCHES=("vit-b16_512 configs/segvit/segvit_vit-b16_4xb4-160k_ade20k-512x512.py"
             "vit-l16_640 configs/segvit/segvit_vit-l16_4xb4-160k_ade20k-640x640.py"
             "eomt-l16_512 configs/eomt/eomt_vit-l16-dinov2-reg4_4xb4-39k_ade20k-512x512.py")
  fi
  BENCH_CAP=900
else
  BENCHES=("vit-b16_512 configs/segvit/segvit_vit-b16_4xb4-160k_ade20k-512x512.py"
           "vit-l16_640 configs/segvit/segvit_vit-l16_4xb4-160k_ade20k-640x640.py"
           "eomt-l16_512 configs/eomt/eomt_vit-l16-dinov2-reg4_4xb4-39k_ade20k-512x512.py")
  if [[ "$QUICK" == 1 ]]; then
    BENCH_ARGS=(--device cuda --batch-sizes 1 8 --num-crops 8 --repeats 2 --warmup 1)
  else
    BENCH_ARGS=(--device cuda --batch-sizes 1 8 32 --num-crops 32 --repeats 3 --warmup 2)
  fi
  BENCH_CAP=150
fi
for entry in "${BENCHES[@]}"; do
  read -r bname bcfg <<< "$entry"
  rm -f "$WORK/bench_$bname.json"
  run_step "bench_$bname" "$BENCH_CAP" "$PY" tools/analysis_tools/benchmark.py "$bcfg" \
    "${BENCH_ARGS[@]}" --keep-ratio 0.6 --keep-jitter 0.2 \
    --variants dense pruned dense@bf16 pruned@bf16 --out "$WORK/bench_$bname.json" \
    --cfg-options test_dataloader.dataset.data_root="$DATA"
  case "$STEP_RESULT" in
    PASS) key="$(bench_key "$WORK/bench_$bname.json")" ;;
    SKIP) key="not run: the time budget was spent" ;;
    *) key="see logs/bench_$bname.log" ;;
  esac
  record "2. benchmark $bname ($(basename "$bcfg" .py))" "$STEP_RESULT" "$STEP_SECS" "$key"
done

# ------------------------------------------------------------------ 3. train + dist_test
DEMO_CFG=configs/demo/segvit_vit-t16-8l_1xb8-1200_demo-128x128.py
DATA_OPTS=(train_dataloader.dataset.data_root="$DATA" val_dataloader.dataset.data_root="$DATA"
           test_dataloader.dataset.data_root="$DATA")
if [[ "$MODE" == dry ]]; then
  ITERS=2; [[ "$QUICK" == 1 ]] && ITERS=1
  AMP=(); TRAIN_LABEL="3a. train demo, $ITERS iterations fp32 (CPU stand-in for --amp)"
  LOADER_OPTS=(train_dataloader.batch_size=2 train_dataloader.num_workers=0
               train_dataloader.persistent_workers=False test_dataloader.num_workers=0
               test_dataloader.persistent_workers=False)
else
  ITERS=20; AMP=(--amp); TRAIN_LABEL="3a. train demo, $ITERS iterations --amp"
  LOADER_OPTS=()
fi
rm -rf "$WORK/train" "$WORK/test"
run_step train 180 "$PY" tools/train.py "$DEMO_CFG" --work-dir "$WORK/train" "${AMP[@]}" \
  --cfg-options train_cfg.max_iters="$ITERS" default_hooks.logger.interval=1 \
  default_hooks.checkpoint.interval="$ITERS" "${DATA_OPTS[@]}" "${LOADER_OPTS[@]}"
CKPT="$(cat "$WORK/train/last_checkpoint" 2>/dev/null || true)"
[[ "$STEP_RESULT" == PASS && ! -f "$CKPT" ]] && STEP_RESULT=FAIL
key="$("$PY" - "$LOGS/train.log" <<'EOF' 2>/dev/null
import re, sys
text = open(sys.argv[1], errors='replace').read()
it = re.findall(r'Iter\(train\)\s*\[\s*(\d+)/(\d+)\].*?time: ([0-9.]+).*?loss: ([0-9.]+)', text)
if it:
    first, last = it[0], it[-1]
    secs = [float(t[2]) for t in it[1:]] or [float(first[2])]
    amp = 'AmpOptimWrapper' in text
    print(f"loss {float(first[3]):.3f} (iter {first[0]}) -> {float(last[3]):.3f} (iter {last[0]}/{last[1]}), "
          f"{sum(secs) / len(secs):.3f} s/iter{', AMP' if amp else ''}")
EOF
)"
[[ "$STEP_RESULT" == SKIP ]] && key="not run: the time budget was spent"
record "$TRAIN_LABEL" "$STEP_RESULT" "$STEP_SECS" "${key:-no iteration lines}${CKPT:+; ${CKPT#$ROOT/}}"

if [[ -f "$CKPT" ]]; then
  PORT="$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  TEST_OPTS=("${DATA_OPTS[@]}")
  [[ "$MODE" == dry ]] && TEST_OPTS+=(test_dataloader.num_workers=0 test_dataloader.persistent_workers=False)
  run_step dist_test 150 env GPUS=1 PORT="$PORT" bash tools/dist_test.sh "$DEMO_CFG" "$CKPT" \
    --work-dir "$WORK/test" --cfg-options "${TEST_OPTS[@]}"
  key="$(grep -aoE '(aAcc|mIoU|mAcc|GFLOPs_img|GFLOPs_reduction_pct): *-?[0-9.]+' "$LOGS/dist_test.log" \
    | tail -5 | sed 's/: */ /' | paste -sd, - | sed 's/,/, /g')"
  [[ "$STEP_RESULT" == PASS && "$key" != *mIoU* ]] && STEP_RESULT=FAIL
  record "3b. dist_test.sh (GPUS=1) on that checkpoint" "$STEP_RESULT" "$STEP_SECS" "${key:-no metrics in the log}"
else
  record "3b. dist_test.sh (GPUS=1) on that checkpoint" SKIP 0 "no checkpoint from 3a"
fi

# ------------------------------------------------------------------ report
"$PY" - "$STEPS" "$REPORT" "$MODE" "$WORK" "$ENV_KEY" \
  "$(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown)" <<'EOF'
import glob, json, os, sys, time
steps, report, mode, work, env, sha = sys.argv[1:7]
rows = [line.rstrip('\n').split('\t') for line in open(steps) if line.strip()]
title = ('GPU check (tools/device_check.sh)' if mode == 'run' else
         'DRY RUN of tools/device_check.sh on the CPU (CPU stand-ins; not GPU numbers)')
out = [f'### {title}, {time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}', '',
       f'{env}; checkout {sha}', '',
       '| step | result | key numbers | seconds |', '|---|---|---|---|']
for step, result, secs, key in rows:
    key = key.replace('|', '\\|')
    out.append(f'| {step} | {"**" + result + "**" if result != "PASS" else result} | {key} | {secs} |')
for path in sorted(glob.glob(os.path.join(work, 'bench_*.json'))):
    try:
        r = json.load(open(path))
    except Exception:
        continue
    out += ['', f"Benchmark `{os.path.basename(r['config'])}` on {r['device']} (torch {r['torch']}; "
            f"{r['rows'][0]['num_crops']} crops {tuple(r['rows'][0]['crop_shape'])}, "
            f"median of {r['args']['repeats']}; random weights, keep 0.6 +- 0.2 per auxiliary stage):", '',
            '| batch | variant | ms/crop | crops/s | GFLOPs/crop | keep s1, s2 | speedup vs dense | realization |',
            '|---|---|---|---|---|---|---|---|']
    for x in r['rows']:
        keep = ', '.join(f'{k:.2f}' for k in x['keep_frac'][1:])
        out.append(f"| {x['batch_size']} | {x['variant']} | {1e3 * x['crop_latency_s']:.2f} | "
                   f"{x['crops_per_s']:.3g} | {x['gflops']:.1f} | {keep} | "
                   f"{x.get('speedup', float('nan')):.2f} | {x.get('realization', float('nan')):.2f} |")
text = '\n'.join(out) + '\n'
os.makedirs(os.path.dirname(os.path.abspath(report)), exist_ok=True)
open(report, 'w').write(text)
print('\n' + text)
EOF
say "report: $REPORT; logs: $LOGS/"
if [[ -n "$COPY_TO" ]]; then
  mkdir -p "$COPY_TO"
  cp "$REPORT" "$COPY_TO/report.md"
  cp "$WORK"/bench_*.json "$COPY_TO/" 2>/dev/null || true
  tar -czf "$COPY_TO/device_check_logs.tar.gz" -C "$WORK" logs steps.tsv 2>/dev/null || true
  say "copied the report, benchmark JSONs and logs to $COPY_TO"
fi
say "done in $(( $(date +%s) - T0 ))s: $([[ $FAILED == 0 ]] && echo 'every step passed' || echo 'some steps did not pass (see the table)')"
exit "$FAILED"
