# EoMT BASE model, ADE20K 512x512: EoMT-S (DINOv2 reg4, patch 16, 100 queries) with
# DToP's auxiliary heads trained densely (prune_threshold=1.0: no token exits), on
# EoMT's recipe (_base_/schedules/eomt_39k.py). 4 GPUs x 4 images, slide test 512/341.
#
#   bash tools/dist_train.sh THIS_CONFIG WORK_DIR
_base_ = [
    '../_base_/models/eomt_vit-s16-dinov2-reg4.py', '../_base_/datasets/ade20k.py',
    '../_base_/schedules/eomt_39k.py'
]
model = dict(prune_threshold=1.0)
