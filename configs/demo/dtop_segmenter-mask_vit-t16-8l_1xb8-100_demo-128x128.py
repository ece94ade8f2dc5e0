# Demo prune fine-tune (DToP) of the Segmenter demo BASE model (issue 10).
#
#   bash tools/dist_train_load.sh \
#       configs/demo/dtop_segmenter-mask_vit-t16-8l_1xb8-100_demo-128x128.py \
#       work_dirs/demo_segmenter/dtop work_dirs/demo_segmenter/base/iter_1200.pth
#
# Schedule, data, runtime and p0 come from the SegViT demo prune config; the model
# is the Segmenter demo BASE model (same definition as
# segmenter-mask_vit-t16-8l_1xb8-1200_demo-128x128.py; tests/test_models/
# test_other_segmenters.py checks that the two stay identical) with pruning live
# after the two auxiliary ATM heads; the mask transformer decodes the tokens left.
_base_ = ['./dtop_segvit_vit-t16-8l_1xb8-100_demo-128x128.py']

__bb = _base_.model.backbone
model = dict(
    backbone=dict(with_cls_token=True, patch_bias=False, final_norm=True),
    decode_head=dict(
        _delete_=True,
        type='DToPSegmenterMaskHead',
        in_channels=__bb.embed_dims,
        channels=__bb.embed_dims,
        num_classes=_base_.num_classes,
        num_layers=2,
        num_heads=__bb.num_heads,
        embed_dims=__bb.embed_dims,
        drop_path_rate=0.0,
        dropout_ratio=0.0,
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)))
