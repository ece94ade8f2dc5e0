# Demo prune fine-tune (DToP) of the SETR-naive demo BASE model (issue 10).
#
#   bash tools/dist_train_load.sh configs/demo/dtop_setr-naive_vit-t16-8l_1xb8-100_demo-128x128.py \
#       work_dirs/demo_setr/dtop work_dirs/demo_setr/base/iter_1200.pth
#
# Schedule, data, runtime and p0 come from the SegViT demo prune config; the model
# is the SETR-naive demo BASE model (same definition as
# setr-naive_vit-t16-8l_1xb8-1200_demo-128x128.py; tests/test_models/
# test_other_segmenters.py checks that the two stay identical) with pruning live:
# after each of the three auxiliary heads, tokens whose softmax confidence is > p0
# exit, except the k most confident per class.
_base_ = ['./dtop_segvit_vit-t16-8l_1xb8-100_demo-128x128.py']

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
