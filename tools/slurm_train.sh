#!/usr/bin/env bash
# Train on a Slurm cluster with srun (mmseg's tools/slurm_train.sh interface):
# GPUS tasks, one GPU each, GPUS_PER_NODE per node; tools/train.py --launcher slurm.
#
#   [GPUS=8] [GPUS_PER_NODE=8] [CPUS_PER_TASK=5] [SRUN_ARGS="..."] [PORT=29500] \
#     bash tools/slurm_train.sh PARTITION JOB_NAME CONFIG WORK_DIR [train.py options...]
#   GPUS=16 bash tools/slurm_train.sh gpu dtop_b16 \
#       configs/dtop/dtop_segvit_vit-b16_4xb4-40k_ade20k-512x512.py work_dirs/dtop_b16 \
#       --cfg-options load_from=work_dirs/base_b16/iter_160000.pth
#
# SRUN_ARGS adds srun options (e.g. "--time=2-00:00:00 --qos=high"); PORT is the
# job's MASTER_PORT (pick another one if two jobs share a node). On nodes without
# CUDA the tasks run DDP on CPU with gloo. See tools/_dist_common.sh (run_srun).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_dist_common.sh"

read_args train.py PARTITION JOB_NAME CONFIG WORK_DIR -- "$@"
shift 4

run_srun "$PARTITION" "$JOB_NAME" "$ROOT/tools/train.py" "$CONFIG" --work-dir "$WORK_DIR" "$@"
