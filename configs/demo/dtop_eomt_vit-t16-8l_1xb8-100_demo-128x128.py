# Demo prune fine-tune (DToP) of the EoMT demo BASE model.
#
#   bash tools/dist_train_load.sh configs/demo/dtop_eomt_vit-t16-8l_1xb8-100_demo-128x128.py \
#       work_dirs/demo_eomt/dtop work_dirs/demo_eomt/base/iter_1200.pth
#
# The model and data of eomt_vit-t16-8l_1xb8-1200_demo-128x128.py (same `_base_`
# files, so the BASE checkpoint loads exactly) with pruning live after the two
# auxiliary ATM heads; the EoMT query blocks see the queries, the prefix tokens and
# the tokens left. Schedule: the prune schedule of the other demos (demo_prune.py,
# 100 iterations at lr 2e-5) with no MaskAnnealingHook: the checkpoint's
# attn_mask_probs are 0 and stay 0, so masked attention is not switched back on.
_base_ = [
    '../_base_/models/demo_eomt_vit-t16-8l.py', '../_base_/datasets/demo.py',
    '../_base_/schedules/demo_prune.py'
]
model = dict(prune_threshold=0.97, keep_topk_per_class=5)
