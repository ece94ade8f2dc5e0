#!/usr/bin/env bash
# Evaluate CHECKPOINT with CONFIG's test settings (slide inference, mIoU) with
# torchrun on GPUS processes per node (NCCL on GPUs, gloo on CPU).
#
#   bash tools/dist_test.sh CONFIG CHECKPOINT [tools/test.py options...]
#   bash tools/dist_test.sh configs/dtop/dtop_segvit_vit-b16_4xb4-40k_ade20k-512x512.py \
#       work_dirs/dtop_b16/iter_40000.pth --work-dir work_dirs/dtop_b16/test
#
# See tools/_dist_common.sh for the environment knobs (GPUS, NNODES, ...).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_dist_common.sh"

read_args test.py CONFIG CHECKPOINT -- "$@"
shift 2
check_checkpoint "$CHECKPOINT"

run_torchrun "$ROOT/tools/test.py" "$CONFIG" "$CHECKPOINT" "$@"
