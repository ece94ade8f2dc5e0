# Segmenter (mask transformer) ViT-B/16 with DToP: mmseg's segmenter_vit-b16_mask
# model run by DToPEncoderDecoder. The backbone is cut after 0-based layers 5 / 7 / 11
# (stages of 6 / 2 / 4 layers, as DToP's ViT-B): two auxiliary ATM prune heads
# (DToP's ViT-B head: d = 384, 6 heads, 3 layers) grade the tokens, and Segmenter's
# mask transformer stays the final head, attending only to the tokens still active
# plus its class embeddings (docs/other_segmenters.md).
#
# Backbone and decode head keep mmseg's parameter layout (patch_bias=False,
# final_norm=True, cls token, trainable LayerNorms), so an mmseg-trained Segmenter
# checkpoint loads with only the two auxiliary heads missing. Defaults: ADE20K (150
# classes, 512x512, slide 512/341). `prune_threshold` 1.0 = BASE (no pruning).
#
# Everything else (checkpoint, sizes, stages, the auxiliary ATM heads, test mode) is
# the DToP ViT-B/16 model of dtop_vit-b16.py.
_base_ = ['./dtop_vit-b16.py']
__bb = _base_.model.backbone
# mmseg's ViT layout; its config has no `patch_norm` key (the default, False).
__backbone = dict(
    __bb,
    with_cls_token=True,
    patch_bias=False,
    final_norm=True,
    norm_cfg=dict(__bb.norm_cfg, requires_grad=True))
__backbone.pop('patch_norm')
model = dict(
    # jax-style normalisation, as mmseg's Segmenter configs.
    data_preprocessor=dict(mean=[127.5] * 3, std=[127.5] * 3),
    backbone=dict(__backbone, _delete_=True),
    decode_head=dict(
        _delete_=True,
        type='DToPSegmenterMaskHead',
        in_channels=__bb.embed_dims,
        channels=__bb.embed_dims,
        num_classes=_base_.model.decode_head.num_classes,
        num_layers=2,
        num_heads=__bb.num_heads,
        embed_dims=__bb.embed_dims,
        dropout_ratio=0.0,
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)))
