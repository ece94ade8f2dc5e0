# BASE model, PASCAL-Context-59 ViT-L/16 row: DToP's three-head SegViT trained densely
# (prune_threshold=1.0) from the ImageNet (Segmenter/AugReg) ViT-L.
# 4 GPUs x 4 images, 480x480 crops, 59 classes, heads 512 wide with 16
# attention heads, slide test 480/320, 160k iterations.
# Model and data: _base_segvit_vit-l16_pascal-context-59-480x480.py (shared with
# the prune config configs/dtop/dtop_segvit_vit-l16_4xb4-40k_pascal-context-59-480x480.py).
_base_ = [
    './_base_segvit_vit-l16_pascal-context-59-480x480.py',
    '../_base_/schedules/schedule_160k.py'
]
model = dict(prune_threshold=1.0)
