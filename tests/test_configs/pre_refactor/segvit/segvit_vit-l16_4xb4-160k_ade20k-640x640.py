# BASE model, ADE20K ViT-L/16 row: DToP's three-head SegViT trained densely
# (prune_threshold=1.0) from the ImageNet (Segmenter/AugReg) ViT-L.
# 4 GPUs x 4 images, 640x640 crops, heads 512 wide with 8 attention heads, slide
# test 640/320, 160k iterations.
_base_ = [
    '../_base_/models/dtop_vit-l16.py', '../_base_/datasets/ade20k_640x640.py',
    '../_base_/default_runtime.py', '../_base_/schedules/schedule_160k.py'
]
model = dict(prune_threshold=1.0)
