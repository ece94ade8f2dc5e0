#!/usr/bin/env bash
# Train with torchrun on GPUS processes per node (NCCL on GPUs, gloo on CPU).
#
#   bash tools/dist_train.sh CONFIG WORK_DIR [tools/train.py options...]
#   GPUS=4 bash tools/dist_train.sh configs/segvit/segvit_vit-b16_4xb4-160k_ade20k-512x512.py work_dirs/base_b16
#   bash tools/dist_train.sh CONFIG WORK_DIR --resume          # continue an interrupted run
#
# Multi-node: NNODES=2 NODE_RANK=0|1 MASTER_ADDR=host0 PORT=29500 on every node.
# See tools/_dist_common.sh for all environment knobs.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_dist_common.sh"

read_args train.py CONFIG WORK_DIR -- "$@"
shift 2

run_torchrun "$ROOT/tools/train.py" "$CONFIG" --work-dir "$WORK_DIR" "$@"
