# Model + data of the COCO-Stuff-10K ViT-L/16 row, shared by its BASE config
# (configs/segvit/, + schedule_160k) and its prune config (configs/dtop/,
# + schedule_20k). Not a runnable config by itself (no schedule); the leading
# underscore keeps it apart from the configs of the results table.
#
# The heads are those of _base_/models/dtop_vit-l16.py (whose ATM head and loss
# settings are declared once, in dtop_vit-b16.py) with 171 classes and 16 attention
# heads, as the official COCO-Stuff-10K config; 512x512 crops, slide test 512/341;
# evaluated on test2014.
_base_ = [
    '../_base_/models/dtop_vit-l16.py', '../_base_/datasets/coco-stuff10k.py',
    '../_base_/default_runtime.py'
]
__crop_size = (512, 512)
__num_classes = 171
__head = dict(
    _base_.model.decode_head,
    num_classes=__num_classes,
    num_heads=16,
    loss_decode=dict(_base_.model.decode_head.loss_decode, num_classes=__num_classes))
model = dict(
    data_preprocessor=dict(size=__crop_size),
    backbone=dict(img_size=__crop_size),
    decode_head=__head,
    auxiliary_head=[__head, __head],
    test_cfg=dict(crop_size=__crop_size, stride=(341, 341)))
