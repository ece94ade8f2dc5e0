# The SETR-naive demo model: the demo ViT of demo_vit-t16-8l.py (with a cls token and
# a final norm, as SETR), cut into four stages after 0-based layers L/4-1, L/2-1,
# 3L/4-1, L-1 (ViT-B: 3/6/9/11; the demo's 8 layers: 1/3/5/7), each closed by SETR's
# own 1x1 naive head (DToPSETRUPHead: LN -> 1x1 conv + BN + ReLU -> x4 upsample ->
# conv_seg, computed token-wise), as dtop_setr-naive_vit-b16.py at ViT-B size.
# Plain BN: the demo runs one process on CPU.
_base_ = ['./demo_vit-t16-8l.py']
__bb = _base_.model.backbone
__L = __bb.num_layers
__head = dict(
    type='DToPSETRUPHead',
    in_channels=__bb.embed_dims,
    channels=__bb.embed_dims // 2,
    in_index=3,
    num_classes=_base_.num_classes,
    dropout_ratio=0,
    norm_cfg=dict(type='BN', requires_grad=True),
    num_convs=1,
    up_scale=4,
    kernel_size=1,
    align_corners=False,
    loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0))
__aux_loss = dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=0.4)
model = dict(
    backbone=dict(
        out_indices=[__L // 4 - 1, __L // 2 - 1, 3 * __L // 4 - 1, __L - 1],
        with_cls_token=True,
        patch_bias=False,
        final_norm=True),
    decode_head=dict(_delete_=True, **__head),
    auxiliary_head=[
        dict(__head, in_index=0, loss_decode=__aux_loss),
        dict(__head, in_index=1, loss_decode=__aux_loss),
        dict(__head, in_index=2, loss_decode=__aux_loss),
    ])
