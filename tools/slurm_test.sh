#!/usr/bin/env bash
# Evaluate CHECKPOINT on a Slurm cluster with srun (mmseg's tools/slurm_test.sh
# interface): GPUS tasks, GPUS_PER_NODE per node; tools/test.py --launcher slurm.
#
#   [GPUS=4] [GPUS_PER_NODE=4] [CPUS_PER_TASK=5] [SRUN_ARGS="..."] [PORT=29500] \
#     bash tools/slurm_test.sh PARTITION JOB_NAME CONFIG CHECKPOINT [test.py options...]
#   bash tools/slurm_test.sh gpu test_b16 \
#       configs/dtop/dtop_segvit_vit-b16_4xb4-40k_ade20k-512x512.py \
#       work_dirs/dtop_b16/iter_40000.pth --work-dir work_dirs/dtop_b16/test
#
# See tools/slurm_train.sh and tools/_dist_common.sh (run_srun) for the knobs.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_dist_common.sh"

read_args test.py PARTITION JOB_NAME CONFIG CHECKPOINT -- "$@"
shift 4
check_checkpoint "$CHECKPOINT"

GPUS="${GPUS:-4}" GPUS_PER_NODE="${GPUS_PER_NODE:-4}" \
  run_srun "$PARTITION" "$JOB_NAME" "$ROOT/tools/test.py" "$CONFIG" "$CHECKPOINT" "$@"
