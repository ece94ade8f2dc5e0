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

(( $# >= 2 )) || die "usage: bash tools/dist_test.sh CONFIG CHECKPOINT [test.py options...]"
CONFIG="$1"
CHECKPOINT="$2"
shift 2
[[ -f "$CONFIG" ]] || die "config file not found: $CONFIG"
check_checkpoint "$CHECKPOINT"

run_torchrun "$ROOT/tools/test.py" "$CONFIG" "$CHECKPOINT" "$@"
