# Demo prune fine-tune (DToP) of the Segmenter demo BASE model.
#
#   bash tools/dist_train_load.sh \
#       configs/demo/dtop_segmenter-mask_vit-t16-8l_1xb8-100_demo-128x128.py \
#       work_dirs/demo_segmenter/dtop work_dirs/demo_segmenter/base/iter_1200.pth
#
# The model and data of segmenter-mask_vit-t16-8l_1xb8-1200_demo-128x128.py (same
# `_base_` files, so the BASE checkpoint loads exactly), the prune schedule and p0 of
# the SegViT demo prune config, with pruning live after the two auxiliary ATM heads;
# the mask transformer decodes the tokens left.
_base_ = [
    '../_base_/models/demo_segmenter-mask_vit-t16-8l.py', '../_base_/datasets/demo.py',
    '../_base_/schedules/demo_prune.py'
]
model = dict(prune_threshold=0.97, keep_topk_per_class=5)
