# The demo model: DToP's 3-head SegViT (dtop_vit-b16.py), shrunk for 2 CPU cores.
# A ViT with embed 192, 8 layers, 3 attention heads, patch 16, trained from scratch
# (no ImageNet weights can be downloaded here, so no init_cfg), and three ATM prune
# heads (d = 96, 3 attention heads, 2 decoder layers) after 0-based layers [2, 5, 7],
# i.e. stages of 3 / 3 / 2 layers (ViT-L's split is 8 / 8 / 8 of 24). 10 classes,
# 128x128 training crops, whole-image test (the demo dataset's test scale).
# `prune_threshold` 1.0 = BASE (no pruning); the prune demo configs set p0.
_base_ = ['./dtop_vit-b16.py']
__crop_size = (128, 128)  # crop_size of _base_/datasets/demo.py
num_classes = 10
__head = dict(
    _base_.model.decode_head,
    in_channels=192,
    channels=96,
    num_classes=num_classes,
    num_heads=3,
    num_layers=2,
    loss_decode=dict(_base_.model.decode_head.loss_decode, num_classes=num_classes))
__backbone = dict(
    _base_.model.backbone,
    img_size=__crop_size,
    embed_dims=192,
    num_layers=8,
    num_heads=3,
    out_indices=[2, 5, 7],
    drop_path_rate=0.0)
__backbone.pop('init_cfg')  # trained from scratch
model = dict(
    # jax-style normalisation, as the ViT-L configs.
    data_preprocessor=dict(mean=[127.5] * 3, std=[127.5] * 3, size=__crop_size),
    backbone=dict(__backbone, _delete_=True),
    decode_head=__head,
    auxiliary_head=[__head, __head],
    test_cfg=dict(_delete_=True, mode='whole'))
