# Segmenter (mask transformer) ViT-B/16 with DToP (issue 10): mmseg's
# segmenter_vit-b16_mask model run by DToPEncoderDecoder. The backbone is cut after
# 0-based layers 5 / 7 / 11 (stages of 6 / 2 / 4 layers, as DToP's ViT-B): two
# auxiliary ATM prune heads (DToP's ViT-B head: d = 384, 6 heads, 3 layers) grade the
# tokens, and Segmenter's mask transformer stays the final head, attending only to
# the tokens still active plus its class embeddings (docs/other_segmenters.md).
#
# Backbone and decode head keep mmseg's parameter layout (patch_bias=False,
# final_norm=True, cls token), so an mmseg-trained Segmenter checkpoint loads with
# only the two auxiliary heads missing. Defaults: ADE20K (150 classes, 512x512,
# slide 512/341). `prune_threshold` 1.0 = BASE (no pruning).
__crop_size = (512, 512)
__num_classes = 150
__checkpoint = ('https://download.openmmlab.com/mmsegmentation/v0.5/pretrain/'
                'segmenter/vit_base_p16_384_20220308-96dfe169.pth')
__aux_head = dict(
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
    data_preprocessor=dict(
        type='SegDataPreProcessor',
        mean=[127.5, 127.5, 127.5],
        std=[127.5, 127.5, 127.5],
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
        out_indices=[5, 7, 11],
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
    decode_head=dict(
        type='DToPSegmenterMaskHead',
        in_channels=768,
        channels=768,
        num_classes=__num_classes,
        num_layers=2,
        num_heads=12,
        embed_dims=768,
        dropout_ratio=0.0,
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    auxiliary_head=[__aux_head, __aux_head],
    prune_threshold=1.0,
    keep_topk_per_class=5,
    train_cfg=dict(),
    test_cfg=dict(
        mode='slide', crop_size=__crop_size, stride=(341, 341), crop_batch_size=4))
