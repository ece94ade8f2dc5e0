# Demo prune fine-tune (DToP) of the demo BASE model, sized for 2 CPU cores.
#
#   bash tools/dist_train_load.sh configs/demo/dtop_segvit_vit-t16-8l_1xb8-100_demo-128x128.py \
#       work_dirs/demo/dtop work_dirs/demo/base/iter_1200.pth
#
# The model and data of segvit_vit-t16-8l_1xb8-1200_demo-128x128.py (same `_base_`
# files, so the BASE checkpoint loads exactly) with pruning live (Tang et al., ICCV
# 2023, Sec. 3): after each auxiliary head, tokens whose confidence
# max_c P_c * sigmoid(A) is > p0 exit, except the k = 5 most confident of each class.
# p0 = 0.97: at 0.95 (the paper's ViT-L value) this minutes-old model already lets a
# third of the tokens exit after 3 of 8 layers, and the tokens that stay lose accuracy
# without that context (docs/benchmarks.md, "The demo"); 0.97 keeps the cut at ~20 %
# of the GFLOPs and the mIoU at the control's. Schedule: _base_/schedules/demo_prune.py
# (100 iterations at lr 2e-5).
_base_ = [
    '../_base_/models/demo_vit-t16-8l.py', '../_base_/datasets/demo.py',
    '../_base_/schedules/demo_prune.py'
]
model = dict(prune_threshold=0.97, keep_topk_per_class=5)
