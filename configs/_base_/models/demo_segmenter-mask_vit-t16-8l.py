# The Segmenter demo model: the demo ViT of demo_vit-t16-8l.py (with a cls token and a
# final norm, as Segmenter), the same stages and auxiliary ATM heads as the SegViT
# demo, and Segmenter's mask transformer (2 layers at the backbone width) as the final
# head, as dtop_segmenter-mask_vit-b16.py at ViT-B size.
_base_ = ['./demo_vit-t16-8l.py']
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
