# SETR-naive ViT-B/16 with DToP (issue 10): mmseg's setr_naive layout at ViT-B
# size (the official DToP repository's config/_base_/models/setr_naive.py), run by
# DToPEncoderDecoder. Four stages: three auxiliary SETR-naive heads after 0-based
# layers 3 / 6 / 9 and the decode head after 11 (stages of 4 / 3 / 3 / 2 layers).
# Every head is SETR's own 1x1 head (LN -> 1x1 conv + BN + ReLU -> x4 upsample ->
# conv_seg), computed token-wise (DToPSETRUPHead), so an mmseg SETR-naive
# checkpoint prunes with no new parameters (docs/other_segmenters.md).
#
# Parameter layout = mmseg's VisionTransformer + SETRUPHead (patch_bias=False as in
# mmseg), so mmseg-trained SETR checkpoints load strictly. Defaults: ADE20K (150
# classes, 512x512, slide 512/341). `prune_threshold` 1.0 = BASE (no pruning).
__crop_size = (512, 512)
__num_classes = 150
__checkpoint = ('https://download.openmmlab.com/mmsegmentation/v0.5/pretrain/'
                'segmenter/vit_base_p16_384_20220308-96dfe169.pth')
__norm_cfg = dict(type='SyncBN', requires_grad=True)  # plain BN in 1-process runs


# Decode head (in_index 3, loss weight 1.0); the auxiliary heads differ only in
# in_index (mmseg layout; the stage loop feeds every head its own stage) and the
# loss weight 0.4 (mmseg's SETR recipe).
__head = dict(
    type='DToPSETRUPHead',
    in_channels=768,
    channels=256,
    in_index=3,
    num_classes=__num_classes,
    dropout_ratio=0,
    norm_cfg=__norm_cfg,
    num_convs=1,
    up_scale=4,
    kernel_size=1,
    align_corners=False,
    loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0))
__aux_loss = dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=0.4)

model = dict(
    type='DToPEncoderDecoder',
    data_preprocessor=dict(
        type='SegDataPreProcessor',
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        bgr_to_rgb=True,
        pad_val=0,
        seg_pad_val=255,
        size=__crop_size),
    backbone=dict(
        type='DToPVisionTransformer',
        img_size=__crop_size,
        patch_size=16,
        in_channels=3,
        embed_dims=768,
        num_layers=12,
        num_heads=12,
        mlp_ratio=4,
        out_indices=[3, 6, 9, 11],
        qkv_bias=True,
        drop_rate=0.0,
        attn_drop_rate=0.0,
        drop_path_rate=0.1,
        with_cls_token=True,
        patch_bias=False,
        final_norm=True,
        norm_cfg=dict(type='LN', eps=1e-6, requires_grad=True),
        act_cfg=dict(type='GELU'),
        interpolate_mode='bicubic',
        init_cfg=dict(type='Pretrained', checkpoint=__checkpoint)),
    decode_head=__head,
    auxiliary_head=[
        dict(__head, in_index=0, loss_decode=__aux_loss),
        dict(__head, in_index=1, loss_decode=__aux_loss),
        dict(__head, in_index=2, loss_decode=__aux_loss),
    ],
    prune_threshold=1.0,
    keep_topk_per_class=5,
    train_cfg=dict(),
    test_cfg=dict(
        mode='slide', crop_size=__crop_size, stride=(341, 341), crop_batch_size=4))
