# BASE model, PASCAL-Context-59 ViT-L/16 row: DToP's three-head SegViT trained densely
# (prune_threshold=1.0) from the ImageNet (Segmenter/AugReg) ViT-L.
# 4 GPUs x 4 images, 480x480 crops, 59 classes, heads 512 wide with 16
# attention heads, slide test 480/320, 160k iterations.
_base_ = [
    '../_base_/models/dtop_vit-l16.py', '../_base_/datasets/pascal_context_59.py',
    '../_base_/default_runtime.py', '../_base_/schedules/schedule_160k.py'
]
__crop_size = (480, 480)
__num_classes = 59
__head = dict(
    type='ATMPruneHead',
    in_channels=1024,
    channels=512,
    num_classes=__num_classes,
    num_heads=16,
    num_layers=3,
    dropout=0.1,
    align_corners=False,
    loss_decode=dict(
        type='ATMLoss',
        num_classes=__num_classes,
        eos_coef=0.1,
        mask_weight=20.0,
        dice_weight=1.0,
        loss_weight=1.0))
model = dict(
    data_preprocessor=dict(size=__crop_size),
    backbone=dict(img_size=__crop_size),
    decode_head=__head,
    auxiliary_head=[__head, __head],
    prune_threshold=1.0,
    test_cfg=dict(crop_size=__crop_size, stride=(320, 320)))
