#!/usr/bin/env bash
# Prune fine-tune: train CONFIG starting from the weights of BASE_CKPT
# (`--cfg-options load_from=BASE_CKPT`: weights only, a fresh optimizer and
# schedule), with torchrun on GPUS processes per node.
#
#   bash tools/dist_train_load.sh CONFIG WORK_DIR BASE_CKPT [tools/train.py options...]
#   bash tools/dist_train_load.sh configs/dtop/dtop_segvit_vit-b16_4xb4-40k_ade20k-512x512.py \
#       work_dirs/dtop_b16 work_dirs/base_b16/iter_160000.pth
#
# BASE_CKPT must fit CONFIG: a key or shape mismatch stops before training with the
# first mismatches (append --allow-partial-load for a deliberate partial load).
# See tools/_dist_common.sh for the environment knobs (GPUS, NNODES, ...).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_dist_common.sh"

read_args train.py CONFIG WORK_DIR BASE_CKPT -- "$@"
shift 3
check_checkpoint "$BASE_CKPT"

run_torchrun "$ROOT/tools/train.py" "$CONFIG" --work-dir "$WORK_DIR" \
  --cfg-options "load_from=$BASE_CKPT" "$@"
