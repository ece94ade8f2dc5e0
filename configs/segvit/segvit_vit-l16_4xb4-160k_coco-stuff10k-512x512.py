# BASE model, COCO-Stuff-10K ViT-L/16 row: DToP's three-head SegViT trained densely
# (prune_threshold=1.0) from the ImageNet (Segmenter/AugReg) ViT-L.
# 4 GPUs x 4 images, 512x512 crops, 171 classes, heads 512 wide with 16
# attention heads, slide test 512/341, 160k iterations.
# Evaluated on test2014, as the official config.
# Model and data: _base_segvit_vit-l16_coco-stuff10k-512x512.py (shared with the
# prune config configs/dtop/dtop_segvit_vit-l16_4xb4-20k_coco-stuff10k-512x512.py).
_base_ = [
    './_base_segvit_vit-l16_coco-stuff10k-512x512.py',
    '../_base_/schedules/schedule_160k.py'
]
model = dict(prune_threshold=1.0)
