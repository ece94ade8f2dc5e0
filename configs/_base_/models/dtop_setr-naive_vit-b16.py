# SETR-naive ViT-B/16 with DToP: mmseg's setr_naive layout at ViT-B size (the
# official DToP repository's config/_base_/models/setr_naive.py), run by
# DToPEncoderDecoder. Four stages: three auxiliary SETR-naive heads after 0-based
# layers 3 / 6 / 9 and the decode head after 11 (stages of 4 / 3 / 3 / 2 layers).
# Every head is SETR's own 1x1 head (LN -> 1x1 conv + BN + ReLU -> x4 upsample ->
# conv_seg), computed token-wise (DToPSETRUPHead), so an mmseg SETR-naive
# checkpoint prunes with no new parameters (docs/other_segmenters.md).
#
# The backbone is the mmseg-layout ViT-B/16 of dtop_segmenter-mask_vit-b16.py
# (patch_bias=False, cls token, final norm), so mmseg-trained SETR checkpoints load
# strictly; only its stage ends, the normalisation (ImageNet mean/std) and the heads
# differ. Defaults: ADE20K (150 classes, 512x512, slide 512/341).
# `prune_threshold` 1.0 = BASE (no pruning).
_base_ = ['./dtop_segmenter-mask_vit-b16.py']
__norm_cfg = dict(type='SyncBN', requires_grad=True)  # plain BN in 1-process runs

# Decode head (in_index 3, loss weight 1.0); the auxiliary heads differ only in
# in_index (mmseg layout; the stage loop feeds every head its own stage) and the
# loss weight 0.4 (mmseg's SETR recipe).
__head = dict(
    type='DToPSETRUPHead',
    in_channels=768,
    channels=256,
    in_index=3,
    num_classes=_base_.model.decode_head.num_classes,
    dropout_ratio=0,
    norm_cfg=__norm_cfg,
    num_convs=1,
    up_scale=4,
    kernel_size=1,
    align_corners=False,
    loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0))
__aux_loss = dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=0.4)

model = dict(
    data_preprocessor=dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375]),
    backbone=dict(out_indices=[3, 6, 9, 11]),
    decode_head=dict(_delete_=True, **__head),
    auxiliary_head=[
        dict(__head, in_index=0, loss_decode=__aux_loss),
        dict(__head, in_index=1, loss_decode=__aux_loss),
        dict(__head, in_index=2, loss_decode=__aux_loss),
    ])
