# DToP ViT-B/16 model (Tang et al., ICCV 2023): plain ViT-B/16 (cls token dropped),
# three independent ATM prune heads after 0-based layers [5, 7, 11] (stages of
# 6 / 2 / 4 layers): two auxiliary heads, then the decode head. Defaults are those of
# the ADE20K row (150 classes, 512x512 crops, slide 512/341).
#
# `prune_threshold` is p0 of the two auxiliary stages; 1.0 (the default here)
# disables pruning, i.e. the BASE model. There is no final-head threshold: nothing
# follows the final head (docs/differences.md).
# Helper names start with "__" so that they stay out of the merged config.
__crop_size = (512, 512)
__num_classes = 150
__checkpoint = ('https://download.openmmlab.com/mmsegmentation/v0.5/pretrain/'
                'segmenter/vit_base_p16_384_20220308-96dfe169.pth')
__data_preprocessor = dict(
    type='SegDataPreProcessor',
    # ViT-B uses ImageNet mean/std as the official ADE20K ViT-B configs do (the
    # ViT-L configs use 127.5/127.5; see docs/differences.md).
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    bgr_to_rgb=True,
    pad_val=0,
    seg_pad_val=255,
    size=__crop_size)
__head = dict(
    type='ATMPruneHead',
    in_channels=768,
    channels=384,
    num_classes=__num_classes,
    num_heads=6,
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
    type='DToPEncoderDecoder',
    data_preprocessor=__data_preprocessor,
    backbone=dict(
        type='DToPVisionTransformer',
        img_size=__crop_size,
        patch_size=16,
        in_channels=3,
        embed_dims=768,
        num_layers=12,
        num_heads=12,
        mlp_ratio=4,
        out_indices=[5, 7, 11],
        qkv_bias=True,
        drop_rate=0.0,
        attn_drop_rate=0.0,
        drop_path_rate=0.1,
        with_cls_token=False,
        norm_cfg=dict(type='LN', eps=1e-6),
        act_cfg=dict(type='GELU'),
        patch_norm=False,
        final_norm=False,
        interpolate_mode='bicubic',
        init_cfg=dict(type='Pretrained', checkpoint=__checkpoint)),
    decode_head=__head,
    auxiliary_head=[__head, __head],
    prune_threshold=1.0,
    keep_topk_per_class=5,
    train_cfg=dict(),
    test_cfg=dict(
        mode='slide', crop_size=__crop_size, stride=(341, 341), crop_batch_size=4))
