# DToP ViT-L/16 model (spec §1): plain ViT-L/16 (cls token dropped), three
# independent ATM prune heads after 0-based layers [7, 15, 23] (stages of 8 / 8 / 8
# layers): two auxiliary heads, then the decode head. Defaults are those of the
# ADE20K row (150 classes, 640x640 crops, head 512 wide with 8 attention heads,
# slide 640/320); the PC-59 and COCO-Stuff-10K configs override classes, crop and
# head attention heads (16).
#
# `prune_threshold` is p0 of the two auxiliary stages; 1.0 (the default here)
# disables pruning, i.e. the BASE model.
# Helper names start with "__" so that they stay out of the merged config.
__crop_size = (640, 640)
__num_classes = 150
__checkpoint = ('https://download.openmmlab.com/mmsegmentation/v0.5/pretrain/'
                'segmenter/vit_large_p16_384_20220308-d4efb41d.pth')
__data_preprocessor = dict(
    type='SegDataPreProcessor',
    # jax-style normalisation, as every official ViT-L config.
    mean=[127.5, 127.5, 127.5],
    std=[127.5, 127.5, 127.5],
    bgr_to_rgb=True,
    pad_val=0,
    seg_pad_val=255,
    size=__crop_size)
__head = dict(
    type='ATMPruneHead',
    in_channels=1024,
    channels=512,
    num_classes=__num_classes,
    num_heads=8,
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
        embed_dims=1024,
        num_layers=24,
        num_heads=16,
        mlp_ratio=4,
        out_indices=[7, 15, 23],
        qkv_bias=True,
        drop_rate=0.0,
        attn_drop_rate=0.0,
        drop_path_rate=0.3,
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
        mode='slide', crop_size=__crop_size, stride=(320, 320), crop_batch_size=4))
