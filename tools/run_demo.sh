#!/usr/bin/env bash
# The whole DToP story on CPU in minutes, on the embedded synthetic dataset:
#
#   bash tools/run_demo.sh [-v] [--model segvit|setr|segmenter|eomt] [--update-readme-image] [WORK_DIR]
#
#   WORK_DIR defaults to work_dirs/demo (segvit) or work_dirs/demo_<model>.
#   -v, --verbose   show the full output of every step (config dumps, hook tables,
#                   every log line); by default it goes to WORK_DIR/logs/*.log and
#                   the terminal gets one progress line per step and the table.
#   --model M       which BASE/prune demo config pair to run (default segvit;
#                   the BASE_CONFIGS / DTOP_CONFIGS table below).
#   --update-readme-image
#                   also copy the exit map to resources/demo_exit_map.png, the tracked
#                   picture of README.md (segvit only). Without it no tracked file
#                   changes: the picture goes to WORK_DIR/demo_exit_map.png only.
#
#   1. set-up (bash tools/setup_env.sh; a no-op when .venv/ is up to date)
#   2. generate the demo dataset into data/demo/ (deterministic, seconds)
#   3. train the BASE model            (tools/dist_train.sh)
#   4. prune fine-tune from the BASE   (tools/dist_train_load.sh), and the fair
#      control: the same fine-tune with pruning off (p0 = 1), so that the extra
#      training is not mistaken for an effect of pruning (docs/benchmarks.md#the-demo)
#   5. test all three (tools/dist_test.sh; the DToP test also paints exit maps)
#   6. time dense vs pruned inference  (tools/analysis_tools/benchmark.py)
#   7. print the table: mIoU, GFLOPs with/without the auxiliary heads, tokens
#      exited per stage, measured speedup (tools/analysis_tools/demo_report.py)
#
# Outputs under WORK_DIR: logs/ (the full output of every step), base/, base_ft/
# (control), dtop/ (checkpoints, logs, prune_stats.json), test_base/, test_base_ft/,
# test_dtop/, exit_maps/*.png (GT | prediction | exit stage), demo_exit_map.png (the
# first of them, the picture shown in README.md), benchmark.json, report.md /
# report.json. Only --update-readme-image also copies it to resources/demo_exit_map.png.
#
# Nothing is deleted that the demo did not create: the folders it creates (WORK_DIR,
# DEMO_DATA) get a `.dtop-demo` marker file, and it refuses to write into an existing
# non-empty folder without one.
#
# Environment knobs:
#   GPUS=N                 processes for training/testing (default 1; CPU uses gloo)
#   DEMO_BASE_ITERS=N      override the BASE iterations (config: 1200)
#   DEMO_PRUNE_ITERS=N     override the prune fine-tune iterations (config: 100)
#   DEMO_NUM_TRAIN/VAL=N   dataset size (default 400 / 80); DEMO_DATA=dir (data/demo)
#   DEMO_SKIP_SETUP=1      do not run tools/setup_env.sh
#   DEMO_REUSE=1           reuse the checkpoints of an earlier run in WORK_DIR instead of
#                          training (stops with a message when one is missing)
#   DEMO_BENCH_CROPS=N     validation images timed by the benchmark (default 16; 0 skips it)
#   DEMO_SHOW_EVERY=N      paint the exit map of every N-th validation image (default 10)
#   DEMO_P0=x              p0 of the DToP model for its fine-tune, test and benchmark
#                          (config: 0.97)
#   DEMO_CONTROL=0         skip the fair control (saves ~2 minutes)
set -euo pipefail

# ------------------------------------------------------------- model -> configs
# BASE config and prune config of each demo model (configs/demo/).
declare -A BASE_CONFIGS=(
  [segvit]=configs/demo/segvit_vit-t16-8l_1xb8-1200_demo-128x128.py
  [setr]=configs/demo/setr-naive_vit-t16-8l_1xb8-1200_demo-128x128.py
  [segmenter]=configs/demo/segmenter-mask_vit-t16-8l_1xb8-1200_demo-128x128.py
  [eomt]=configs/demo/eomt_vit-t16-8l_1xb8-1200_demo-128x128.py
)
declare -A DTOP_CONFIGS=(
  [segvit]=configs/demo/dtop_segvit_vit-t16-8l_1xb8-100_demo-128x128.py
  [setr]=configs/demo/dtop_setr-naive_vit-t16-8l_1xb8-100_demo-128x128.py
  [segmenter]=configs/demo/dtop_segmenter-mask_vit-t16-8l_1xb8-100_demo-128x128.py
  [eomt]=configs/demo/dtop_eomt_vit-t16-8l_1xb8-100_demo-128x128.py
)
MODEL_NAMES="segvit, setr, segmenter, eomt"
MARKER=.dtop-demo
# Everything the demo writes into WORK_DIR (an unmarked folder holding only these
# names is an earlier demo run and is adopted).
WORK_ENTRIES=" $MARKER logs base base_ft dtop test_base test_base_ft test_dtop exit_maps \
demo_exit_map.png benchmark.json report.md report.json "

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
T0=$(date +%s)

usage() { sed -n '2,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
fail() { echo "run_demo: $*" >&2; exit 1; }

VERBOSE=0
MODEL=segvit
WORK=""
UPDATE_README_IMAGE=0
while (( $# )); do
  case "$1" in
    -v|--verbose) VERBOSE=1 ;;
    -h|--help) usage; exit 0 ;;
    --model) (( $# >= 2 )) || fail "--model needs a value ($MODEL_NAMES)"; MODEL="$2"; shift ;;
    --model=*) MODEL="${1#--model=}" ;;
    --update-readme-image) UPDATE_README_IMAGE=1 ;;
    -*) fail "unknown option $1 (see bash tools/run_demo.sh --help)" ;;
    *) [[ -z "$WORK" ]] || fail "only one WORK_DIR, got '$WORK' and '$1'"; WORK="$1" ;;
  esac
  shift
done
[[ -n "${BASE_CONFIGS[$MODEL]:-}" ]] || fail "unknown --model '$MODEL'; choose one of: $MODEL_NAMES"
[[ "$UPDATE_README_IMAGE" == 0 || "$MODEL" == segvit ]] || fail "--update-readme-image \
refreshes README.md's picture of the segvit demo; run it with --model segvit"
BASE_CFG="${BASE_CONFIGS[$MODEL]}"
DTOP_CFG="${DTOP_CONFIGS[$MODEL]}"
for cfg in "$BASE_CFG" "$DTOP_CFG"; do
  [[ -f "$cfg" ]] || fail "--model $MODEL: config $cfg not found in $ROOT. Its demo configs \
may not be written yet; run another model (--model segvit) or fix BASE_CONFIGS / DTOP_CONFIGS at the \
top of tools/run_demo.sh."
done
if [[ -z "$WORK" ]]; then
  if [[ "$MODEL" == segvit ]]; then WORK=work_dirs/demo; else WORK="work_dirs/demo_$MODEL"; fi
fi
DATA="${DEMO_DATA:-data/demo}"
NUM_TRAIN="${DEMO_NUM_TRAIN:-400}"
NUM_VAL="${DEMO_NUM_VAL:-80}"
BENCH_CROPS="${DEMO_BENCH_CROPS:-16}"
SHOW_EVERY="${DEMO_SHOW_EVERY:-10}"
# paint at least one image: the last one when there are fewer than SHOW_EVERY
(( SHOW_EVERY > NUM_VAL && NUM_VAL > 0 )) && SHOW_EVERY="$NUM_VAL"
(( SHOW_EVERY >= 1 )) || fail "DEMO_SHOW_EVERY must be >= 1, got $SHOW_EVERY"
REUSE="${DEMO_REUSE:-0}"
CONTROL="${DEMO_CONTROL:-1}"
export GPUS="${GPUS:-1}"

# ----------------------------------------------------- folders the demo may own
# `claim DIR WHAT LEGACY_TEST`: make DIR ours (create it with a marker), or accept it
# when it has the marker, is empty, or passes LEGACY_TEST (an earlier demo run made
# before markers existed); refuse anything else: the demo deletes and overwrites
# files in the folders it owns.
is_empty_dir() { [[ -z "$(ls -A "$1" 2>/dev/null)" ]]; }
only_demo_entries() {
  local e
  for e in "$1"/* "$1"/.[!.]*; do
    [[ -e "$e" ]] || continue
    [[ "$WORK_ENTRIES" == *" $(basename "$e") "* ]] || return 1
  done
}
legacy_data() { [[ -f "$1/.demo-stamp" ]]; }
claim() {
  local dir="$1" what="$2" legacy="$3"
  if [[ -e "$dir" && ! -d "$dir" ]]; then
    fail "$what $dir exists and is not a folder; choose another path."
  fi
  if [[ -d "$dir" && ! -f "$dir/$MARKER" ]] && ! is_empty_dir "$dir" \
     && ! "$legacy" "$dir"; then
    fail "$what $dir is an existing folder that tools/run_demo.sh did not create (no \
$dir/$MARKER marker). The demo deletes and overwrites files in its folders, so it will not \
use this one. Choose a new or empty folder; if $dir really is an earlier demo folder, \
'touch $dir/$MARKER' and run again."
  fi
  mkdir -p "$dir"
  [[ -f "$dir/$MARKER" ]] || echo "created by tools/run_demo.sh; the demo may delete and \
rewrite files here" > "$dir/$MARKER"
}
claim "$WORK" "WORK_DIR" only_demo_entries
claim "$DATA" "DEMO_DATA" legacy_data
LOGS="$WORK/logs"
mkdir -p "$LOGS"

# DEMO_REUSE=1: every checkpoint to reuse must be there before anything runs.
last_ckpt() { [[ -f "$1/last_checkpoint" ]] && cat "$1/last_checkpoint"; }
if [[ "$REUSE" == 1 ]]; then
  NEED=(base dtop)
  [[ "$CONTROL" == 1 ]] && NEED+=(base_ft)
  for sub in "${NEED[@]}"; do
    ck="$(last_ckpt "$WORK/$sub" || true)"
    if [[ -z "$ck" || ! -f "$ck" ]]; then
      fail "DEMO_REUSE=1, but there is no checkpoint to reuse in $WORK/$sub \
(${ck:+last_checkpoint names $ck, which does not exist}${ck:-no $WORK/$sub/last_checkpoint}). \
Run without DEMO_REUSE=1 to train it, or give the WORK_DIR of an earlier run \
(bash tools/run_demo.sh --model $MODEL WORK_DIR)."
    fi
  done
fi

# ------------------------------------------------------------------ output
# Quiet mode: every command's output goes to $LOGS/<name>.log; the terminal gets one
# line per step, updated in place on a terminal (progress from mmengine's
# "Iter(train) [ i/N] ... eta: ... time: ..." lines), at 25/50/75 % otherwise.
TTY=0; [[ -t 1 ]] && TTY=1
say() { echo "$*"; }
hms() { local s=$1; if (( s >= 60 )); then printf '%dm%02ds' $((s / 60)) $((s % 60)); else printf '%ds' "$s"; fi; }

# `progress LOG` prints "done total eta secs_per_iter" from the last mmengine iteration
# line of LOG: training lines when there are any (a training run also validates at its
# end), else test/val lines; nothing when there is none yet. eta/time are "-" when the
# line has none.
progress() {
  local kind='train'
  grep -aqE 'Iter\(train\) *\[' "$1" 2>/dev/null || kind='(test|val)'
  grep -aE "Iter\\($kind\\) *\\[ *[0-9]+/[0-9]+\\]" "$1" 2>/dev/null | tail -1 | awk '{
    if (match($0, /\[ *[0-9]+\/[0-9]+\]/)) {
      s = substr($0, RSTART + 1, RLENGTH - 2); gsub(/ /, "", s); split(s, a, "/")
    } else exit
    eta = "-"; t = "-"
    if (match($0, /eta: [0-9:]+( days?, [0-9:]+)?/)) eta = substr($0, RSTART + 5, RLENGTH - 5)
    gsub(/ /, "", eta)
    if (match($0, / time: [0-9.]+/)) t = substr($0, RSTART + 7, RLENGTH - 7)
    print a[1], a[2], eta, t
  }' || true
}
# `rate SECS_PER_ITER` prints ", x it/s" (nothing when unknown).
rate() { awk -v t="$1" 'BEGIN { if (t != "-" && t > 0) printf ", %.2g it/s", 1 / t }'; }

# `run_step NAME LABEL CMD...`: run CMD with its output in $LOGS/NAME.log.
run_step() {
  local name="$1" label="$2"; shift 2
  local log="$LOGS/$name.log" t0 rc=0
  t0=$(date +%s)
  if (( VERBOSE )); then
    printf '\n===== [run_demo %4ss] %s\n' "$(( t0 - T0 ))" "$label"
    "$@" 2>&1 | tee "$log" || rc=$?
    (( rc == 0 )) || fail "$label failed (exit $rc); full log: $log"
    return 0
  fi
  "$@" > "$log" 2>&1 &
  local pid=$! line="" quarter=0 p it total eta spi
  local ticks=0 last
  while kill -0 "$pid" 2>/dev/null; do
    sleep 1
    ticks=$(( ticks + 1 ))
    p="$(progress "$log")"
    if [[ -z "$p" ]]; then
      # No iteration lines (set-up, dataset, benchmark): the log's last line.
      last="$(tail -n 1 "$log" 2>/dev/null | tr -d '\r' | cut -c1-90 || true)"
      if (( TTY )); then
        printf '\r\033[K%s' "$label: $last"
      elif (( ticks % 300 == 0 )); then
        say "$label: still running after $(hms "$ticks"): $last"
      fi
      continue
    fi
    read -r it total eta spi <<< "$p"
    line="$label: $it/$total$(rate "$spi")"
    [[ "$eta" != - ]] && line+=", ETA $eta"
    if (( TTY )); then
      printf '\r\033[K%s' "$line"
    elif (( total > 0 && it * 4 >= (quarter + 1) * total && quarter < 3 )); then
      quarter=$(( it * 4 / total )); (( quarter > 3 )) && quarter=3
      say "$line"
    fi
  done
  wait "$pid" || rc=$?
  (( TTY )) && printf '\r\033[K'
  local secs=$(( $(date +%s) - t0 ))
  if (( rc != 0 )); then
    say "$label: FAILED after $(hms "$secs") (exit $rc); last lines of $log:"
    tail -n 25 "$log" | sed 's/^/  | /'
    fail "$label failed; full log: $log (or run again with -v)"
  fi
  p="$(progress "$log")"
  if [[ -n "$p" ]]; then
    # The step succeeded: all `total` iterations ran (the last logged line may be earlier).
    read -r it total eta spi <<< "$p"
    say "$label: $total/$total in $(hms "$secs")$(rate "$spi")"
  else
    say "$label: done in $(hms "$secs")"
  fi
}

CORES="$(getconf _NPROCESSORS_ONLN 2>/dev/null || nproc)"
LOAD="$(cut -d' ' -f1 /proc/loadavg 2>/dev/null || echo 0)"
say "run_demo: model $MODEL, work dir $WORK, full logs in $LOGS/ (-v to show them)"
say "run_demo: $CORES CPU cores, load average $LOAD; ~10-15 min on 2 idle cores$(awk -v l="$LOAD" -v c="$CORES" 'BEGIN { if (l > 0.5 * c) printf " — the CPU is busy, expect longer" }')"

# ------------------------------------------------------------------ 1 set-up
if [[ "${DEMO_SKIP_SETUP:-0}" != 1 ]]; then
  run_step 1_setup "[1/7] environment (tools/setup_env.sh)" bash tools/setup_env.sh
fi
PY="${PYTHON:-$ROOT/.venv/bin/python}"
[[ -x "$PY" ]] || command -v "$PY" >/dev/null 2>&1 \
  || fail "no Python at $PY; run bash tools/setup_env.sh"
export PYTHON="$PY"
free_port() {
  "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# ------------------------------------------------------------------ 2 dataset
GEN_HASH="$(cat dtop/datasets/demo_generator.py dtop/datasets/demo_meta.py | sha256sum | cut -c1-16)"
STAMP="seed0 $NUM_TRAIN $NUM_VAL $GEN_HASH"
if [[ -f "$DATA/.demo-stamp" && "$(cat "$DATA/.demo-stamp")" == "$STAMP" ]]; then
  say "[2/7] demo dataset: up to date in $DATA ($NUM_TRAIN train + $NUM_VAL val images)"
else
  # $DATA is ours (marker above); remove only the files the generator writes, so that
  # a smaller earlier set does not linger.
  find "$DATA/images" "$DATA/annotations" -name 'demo_*' -type f -delete 2>/dev/null || true
  run_step 2_dataset "[2/7] demo dataset -> $DATA ($NUM_TRAIN train + $NUM_VAL val images)" \
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

# ------------------------------------------------------------------ 3-4 training
# `train_or_reuse SUB LABEL CMD...`: train into $WORK/SUB, or reuse its checkpoint.
train_or_reuse() {
  local sub="$1" label="$2"; shift 2
  if [[ "$REUSE" == 1 ]]; then
    say "$label: reusing $(last_ckpt "$WORK/$sub")"
  else
    run_step "$sub" "$label" "$@"
  fi
  last_ckpt "$WORK/$sub" >/dev/null || fail "$label left no checkpoint in $WORK/$sub \
(see $LOGS/$sub.log)"
}

BASE_OPTS=("${DATA_OPTS[@]}")
[[ -n "${DEMO_BASE_ITERS:-}" ]] && BASE_OPTS+=(train_cfg.max_iters="$DEMO_BASE_ITERS")
train_or_reuse base "[3/7] BASE training" \
  env PORT="$(free_port)" bash tools/dist_train.sh "$BASE_CFG" "$WORK/base" \
  $(opts_flag BASE_OPTS) "${BASE_OPTS[@]}"
BASE_CKPT="$(last_ckpt "$WORK/base")"

P0_OPTS=()
[[ -n "${DEMO_P0:-}" ]] && P0_OPTS=(model.prune_threshold="$DEMO_P0")
DTOP_OPTS=("${DATA_OPTS[@]}" "${P0_OPTS[@]}")
[[ -n "${DEMO_PRUNE_ITERS:-}" ]] && DTOP_OPTS+=(train_cfg.max_iters="$DEMO_PRUNE_ITERS")
train_or_reuse dtop "[4/7] DToP prune fine-tune" \
  env PORT="$(free_port)" bash tools/dist_train_load.sh "$DTOP_CFG" "$WORK/dtop" "$BASE_CKPT" \
  $(opts_flag DTOP_OPTS) "${DTOP_OPTS[@]}"
DTOP_CKPT="$(last_ckpt "$WORK/dtop")"

if [[ "$CONTROL" == 1 ]]; then
  CTRL_OPTS=("${DATA_OPTS[@]}" model.prune_threshold=1.0)
  [[ -n "${DEMO_PRUNE_ITERS:-}" ]] && CTRL_OPTS+=(train_cfg.max_iters="$DEMO_PRUNE_ITERS")
  train_or_reuse base_ft "[4b/7] fair control: same fine-tune, p0 = 1" \
    env PORT="$(free_port)" bash tools/dist_train_load.sh "$DTOP_CFG" "$WORK/base_ft" \
    "$BASE_CKPT" $(opts_flag CTRL_OPTS) "${CTRL_OPTS[@]}"
  CTRL_CKPT="$(last_ckpt "$WORK/base_ft")"
fi

# ------------------------------------------------------------------ 5 tests
run_step test_base "[5/7] test BASE" \
  env PORT="$(free_port)" bash tools/dist_test.sh "$BASE_CFG" "$BASE_CKPT" \
  --work-dir "$WORK/test_base" $(opts_flag DATA_OPTS) "${DATA_OPTS[@]}"
REPORT_ARGS=()
if [[ "$CONTROL" == 1 ]]; then
  run_step test_base_ft "[5/7] test control" \
    env PORT="$(free_port)" bash tools/dist_test.sh "$BASE_CFG" "$CTRL_CKPT" \
    --work-dir "$WORK/test_base_ft" $(opts_flag DATA_OPTS) "${DATA_OPTS[@]}"
  REPORT_ARGS=(--control "$WORK/test_base_ft")
fi
rm -rf "$WORK/test_dtop/show"
DTOP_TEST_OPTS=("${DATA_OPTS[@]}" "${P0_OPTS[@]}")
run_step test_dtop "[5/7] test DToP (+ exit maps)" \
  env PORT="$(free_port)" bash tools/dist_test.sh "$DTOP_CFG" "$DTOP_CKPT" \
  --work-dir "$WORK/test_dtop" --show-dir "$WORK/test_dtop/show" --show-interval "$SHOW_EVERY" \
  $(opts_flag DTOP_TEST_OPTS) "${DTOP_TEST_OPTS[@]}"

mkdir -p "$WORK/exit_maps"
rm -f "$WORK/exit_maps"/*.png
while IFS= read -r -d '' f; do
  name="$(basename "$f")"          # test_<image>.jpg_<step>.png
  name="${name#test_}"; name="${name%%.jpg_*}"
  cp "$f" "$WORK/exit_maps/$name.png"
done < <(find "$WORK/test_dtop/show" -path '*vis_image*' -name '*.png' -print0)
N_MAPS=$(find "$WORK/exit_maps" -name '*.png' | wc -l)

# ------------------------------------------------------------------ 6 speed
BENCH_ARGS=()
if (( BENCH_CROPS > 0 )); then
  run_step benchmark "[6/7] speed: dense vs pruned on $BENCH_CROPS crops" \
    "$PY" tools/analysis_tools/benchmark.py "$DTOP_CFG" "$DTOP_CKPT" --variants dense pruned \
    --batch-sizes 1 16 --num-crops "$BENCH_CROPS" --repeats 3 --threads 1 --out "$WORK/benchmark.json" \
    $(opts_flag DTOP_TEST_OPTS) "${DTOP_TEST_OPTS[@]}"
  BENCH_ARGS=(--benchmark "$WORK/benchmark.json")
else
  say "[6/7] speed benchmark skipped (DEMO_BENCH_CROPS=0)"
fi

# ------------------------------------------------------------------ 7 report
(( VERBOSE )) && printf '\n===== [run_demo %4ss] %s\n' "$(( $(date +%s) - T0 ))" "7/7 report"
say ""
"$PY" tools/analysis_tools/demo_report.py --base "$WORK/test_base" --dtop "$WORK/test_dtop" \
  "${REPORT_ARGS[@]}" "${BENCH_ARGS[@]}" --out "$WORK/report.md" \
  || fail "the report failed (python tools/analysis_tools/demo_report.py, see above)"
say ""
PICK="$(find "$WORK/exit_maps" -name '*.png' | sort | head -n 1)"
rm -f "$WORK/demo_exit_map.png"
if [[ -f "$PICK" ]]; then
  cp "$PICK" "$WORK/demo_exit_map.png"
  if [[ "$UPDATE_README_IMAGE" == 1 ]]; then
    mkdir -p resources
    cp "$PICK" resources/demo_exit_map.png
    say "exit map for the README: resources/demo_exit_map.png (from $PICK)"
  else
    say "exit map: $WORK/demo_exit_map.png (--update-readme-image copies it to resources/)"
  fi
fi
say "report: $WORK/report.md; $N_MAPS exit maps in $WORK/exit_maps/; logs: $LOGS/"
say "run_demo: done in $(hms $(( $(date +%s) - T0 )))"
