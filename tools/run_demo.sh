#!/usr/bin/env bash
# The whole DToP story on CPU in minutes, on the embedded synthetic dataset:
#
#   bash tools/run_demo.sh [WORK_DIR]          # default WORK_DIR=work_dirs/demo
#
#   1. set-up (bash tools/setup_env.sh; a no-op when .venv/ is up to date)
#   2. generate the demo dataset into data/demo/ (deterministic, seconds)
#   3. train the BASE model            (tools/dist_train.sh)
#   4. prune fine-tune from the BASE   (tools/dist_train_load.sh), and the fair
#      control: the same fine-tune with pruning off (p0 = 1), so that the extra
#      training is not mistaken for an effect of pruning (spec §6.1)
#   5. test all three (tools/dist_test.sh; the DToP test also paints exit maps)
#   6. time dense vs pruned inference  (tools/analysis_tools/benchmark.py)
#   7. print the table: mIoU, GFLOPs with/without the auxiliary heads, tokens
#      exited per stage, measured speedup (tools/analysis_tools/demo_report.py)
#
# Outputs under WORK_DIR: base/, base_ft/ (control), dtop/ (checkpoints, logs,
# prune_stats.json), test_base/, test_base_ft/, test_dtop/, exit_maps/*.png
# (GT | prediction | exit stage), benchmark.json, report.md / report.json. One exit
# map is copied to resources/demo_exit_map.png (DEMO_UPDATE_RESOURCES=0 to skip).
#
# Environment knobs:
#   GPUS=N                 processes for training/testing (default 1; CPU uses gloo)
#   DEMO_BASE_ITERS=N      override the BASE iterations (config: 2000)
#   DEMO_PRUNE_ITERS=N     override the prune fine-tune iterations (config: 500)
#   DEMO_NUM_TRAIN/VAL=N   dataset size (default 400 / 80); DEMO_DATA=dir (data/demo)
#   DEMO_SKIP_SETUP=1      do not run tools/setup_env.sh
#   DEMO_REUSE=1           reuse existing checkpoints in WORK_DIR instead of training
#   DEMO_BENCH_CROPS=N     crops timed by the benchmark (default 64; 0 skips it)
#   DEMO_P0=x              p0 of the DToP model for its fine-tune, test and benchmark
#                          (config: 0.8)
#   DEMO_CONTROL=0         skip the fair control (saves ~2 minutes)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
WORK="${1:-work_dirs/demo}"
DATA="${DEMO_DATA:-data/demo}"
NUM_TRAIN="${DEMO_NUM_TRAIN:-400}"
NUM_VAL="${DEMO_NUM_VAL:-80}"
BENCH_CROPS="${DEMO_BENCH_CROPS:-64}"
BASE_CFG=configs/demo/segvit_vit-t16-8l_1xb8-2k_demo-128x128.py
DTOP_CFG=configs/demo/dtop_segvit_vit-t16-8l_1xb8-500_demo-128x128.py
export GPUS="${GPUS:-1}"
T0=$(date +%s)

step() { printf '\n===== [run_demo %4ss] %s\n' "$(( $(date +%s) - T0 ))" "$*"; }
fail() { echo "run_demo: $*" >&2; exit 1; }

step "1/7 environment"
if [[ "${DEMO_SKIP_SETUP:-0}" != 1 ]]; then
  bash tools/setup_env.sh
fi
PY="${PYTHON:-$ROOT/.venv/bin/python}"
[[ -x "$PY" ]] || command -v "$PY" >/dev/null 2>&1 \
  || fail "no Python at $PY; run bash tools/setup_env.sh"
export PYTHON="$PY"
free_port() {
  "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

step "2/7 demo dataset -> $DATA ($NUM_TRAIN train + $NUM_VAL val images)"
GEN_HASH="$(cat dtop/datasets/demo_generator.py dtop/datasets/demo_meta.py | sha256sum | cut -c1-16)"
STAMP="seed0 $NUM_TRAIN $NUM_VAL $GEN_HASH"
if [[ -f "$DATA/.demo-stamp" && "$(cat "$DATA/.demo-stamp")" == "$STAMP" ]]; then
  echo "up to date ($DATA/.demo-stamp)"
else
  # Remove only files the generator writes (a smaller earlier set must not linger).
  if [[ -d "$DATA" ]]; then
    find "$DATA/images" "$DATA/annotations" -name 'demo_*' -type f -delete 2>/dev/null || true
  fi
  "$PY" -m dtop.datasets.demo_generator --out "$DATA" --num-train "$NUM_TRAIN" \
    --num-val "$NUM_VAL" --seed 0
  echo "$STAMP" > "$DATA/.demo-stamp"
fi
DATA_OPTS=()
if [[ "$DATA" != data/demo ]]; then
  DATA_OPTS=(train_dataloader.dataset.data_root="$DATA" val_dataloader.dataset.data_root="$DATA"
             test_dataloader.dataset.data_root="$DATA")
fi

# `$(opts_flag ARRAY)` prints --cfg-options when the named array is not empty.
opts_flag() { local -n arr="$1"; (( ${#arr[@]} )) && echo --cfg-options || true; }
last_ckpt() { [[ -f "$1/last_checkpoint" ]] && cat "$1/last_checkpoint"; }

step "3/7 BASE training ($BASE_CFG)"
BASE_OPTS=("${DATA_OPTS[@]}")
[[ -n "${DEMO_BASE_ITERS:-}" ]] && BASE_OPTS+=(train_cfg.max_iters="$DEMO_BASE_ITERS")
if [[ "${DEMO_REUSE:-0}" == 1 && -n "$(last_ckpt "$WORK/base" || true)" ]]; then
  echo "reusing $(last_ckpt "$WORK/base")"
else
  PORT="$(free_port)" bash tools/dist_train.sh "$BASE_CFG" "$WORK/base" \
    $(opts_flag BASE_OPTS) "${BASE_OPTS[@]}"
fi
BASE_CKPT="$(last_ckpt "$WORK/base")" || fail "no BASE checkpoint in $WORK/base"

step "4/7 DToP prune fine-tune from $BASE_CKPT ($DTOP_CFG)"
P0_OPTS=()
[[ -n "${DEMO_P0:-}" ]] && P0_OPTS=(model.prune_threshold="$DEMO_P0")
DTOP_OPTS=("${DATA_OPTS[@]}" "${P0_OPTS[@]}")
[[ -n "${DEMO_PRUNE_ITERS:-}" ]] && DTOP_OPTS+=(train_cfg.max_iters="$DEMO_PRUNE_ITERS")
if [[ "${DEMO_REUSE:-0}" == 1 && -n "$(last_ckpt "$WORK/dtop" || true)" ]]; then
  echo "reusing $(last_ckpt "$WORK/dtop")"
else
  PORT="$(free_port)" bash tools/dist_train_load.sh "$DTOP_CFG" "$WORK/dtop" "$BASE_CKPT" \
    $(opts_flag DTOP_OPTS) "${DTOP_OPTS[@]}"
fi
DTOP_CKPT="$(last_ckpt "$WORK/dtop")" || fail "no DToP checkpoint in $WORK/dtop"

CONTROL="${DEMO_CONTROL:-1}"
if [[ "$CONTROL" == 1 ]]; then
  step "4b/7 fair control: the same fine-tune with pruning off (p0 = 1)"
  CTRL_OPTS=("${DATA_OPTS[@]}" model.prune_threshold=1.0)
  [[ -n "${DEMO_PRUNE_ITERS:-}" ]] && CTRL_OPTS+=(train_cfg.max_iters="$DEMO_PRUNE_ITERS")
  if [[ "${DEMO_REUSE:-0}" == 1 && -n "$(last_ckpt "$WORK/base_ft" || true)" ]]; then
    echo "reusing $(last_ckpt "$WORK/base_ft")"
  else
    PORT="$(free_port)" bash tools/dist_train_load.sh "$DTOP_CFG" "$WORK/base_ft" "$BASE_CKPT" \
      $(opts_flag CTRL_OPTS) "${CTRL_OPTS[@]}"
  fi
  CTRL_CKPT="$(last_ckpt "$WORK/base_ft")" || fail "no control checkpoint in $WORK/base_ft"
fi

step "5/7 tests: BASE, control and DToP (mIoU + GFLOPs; exit maps painted for DToP)"
PORT="$(free_port)" bash tools/dist_test.sh "$BASE_CFG" "$BASE_CKPT" \
  --work-dir "$WORK/test_base" $(opts_flag DATA_OPTS) "${DATA_OPTS[@]}"
REPORT_ARGS=()
if [[ "$CONTROL" == 1 ]]; then
  PORT="$(free_port)" bash tools/dist_test.sh "$BASE_CFG" "$CTRL_CKPT" \
    --work-dir "$WORK/test_base_ft" $(opts_flag DATA_OPTS) "${DATA_OPTS[@]}"
  REPORT_ARGS=(--control "$WORK/test_base_ft")
fi
rm -rf "$WORK/test_dtop/show"
DTOP_TEST_OPTS=("${DATA_OPTS[@]}" "${P0_OPTS[@]}")
PORT="$(free_port)" bash tools/dist_test.sh "$DTOP_CFG" "$DTOP_CKPT" \
  --work-dir "$WORK/test_dtop" --show-dir "$WORK/test_dtop/show" \
  $(opts_flag DTOP_TEST_OPTS) "${DTOP_TEST_OPTS[@]}"

mkdir -p "$WORK/exit_maps"
rm -f "$WORK/exit_maps"/*.png
while IFS= read -r -d '' f; do
  name="$(basename "$f")"          # test_<image>.jpg_<step>.png
  name="${name#test_}"; name="${name%%.jpg_*}"
  cp "$f" "$WORK/exit_maps/$name.png"
done < <(find "$WORK/test_dtop/show" -path '*vis_image*' -name '*.png' -print0)
N_MAPS=$(find "$WORK/exit_maps" -name '*.png' | wc -l)
echo "$N_MAPS exit maps in $WORK/exit_maps/"

BENCH_ARGS=()
if (( BENCH_CROPS > 0 )); then
  step "6/7 measured speed: dense vs pruned inference on $BENCH_CROPS real crops"
  "$PY" tools/analysis_tools/benchmark.py "$DTOP_CFG" "$DTOP_CKPT" --variants dense pruned \
    --batch-sizes 1 16 --num-crops "$BENCH_CROPS" --repeats 3 --out "$WORK/benchmark.json" \
    $(opts_flag DTOP_TEST_OPTS) "${DTOP_TEST_OPTS[@]}"
  BENCH_ARGS=(--benchmark "$WORK/benchmark.json")
else
  step "6/7 speed benchmark skipped (DEMO_BENCH_CROPS=0)"
fi

step "7/7 report"
"$PY" tools/analysis_tools/demo_report.py --base "$WORK/test_base" --dtop "$WORK/test_dtop" \
  "${REPORT_ARGS[@]}" "${BENCH_ARGS[@]}" --out "$WORK/report.md"
PICK="$WORK/exit_maps/demo_validation_00000.png"
if [[ "${DEMO_UPDATE_RESOURCES:-1}" != 0 && -f "$PICK" ]]; then
  mkdir -p resources
  cp "$PICK" resources/demo_exit_map.png
  echo "exit map for the README: resources/demo_exit_map.png (from $PICK)"
fi
echo "report: $WORK/report.md; exit maps: $WORK/exit_maps/"
step "done in $(( $(date +%s) - T0 )) s"
