# Demo prune fine-tune (DToP) of the SETR-naive demo BASE model.
#
#   bash tools/dist_train_load.sh configs/demo/dtop_setr-naive_vit-t16-8l_1xb8-100_demo-128x128.py \
#       work_dirs/demo_setr/dtop work_dirs/demo_setr/base/iter_1200.pth
#
# The model and data of setr-naive_vit-t16-8l_1xb8-1200_demo-128x128.py (same `_base_`
# files, so the BASE checkpoint loads exactly), the prune schedule and p0 of the
# SegViT demo prune config, with pruning live: after each of the three auxiliary
# heads, tokens whose softmax confidence is > p0 exit, except the k most confident
# per class.
_base_ = [
    '../_base_/models/demo_setr-naive_vit-t16-8l.py', '../_base_/datasets/demo.py',
    '../_base_/schedules/demo_prune.py'
]
model = dict(prune_threshold=0.97, keep_topk_per_class=5)
