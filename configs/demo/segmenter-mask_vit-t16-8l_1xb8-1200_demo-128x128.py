# Demo BASE model: Segmenter (mask transformer) with DToP's auxiliary ATM heads, on
# the embedded synthetic dataset, sized for 2 CPU cores (issue 10).
#
#   bash tools/run_demo.sh --model segmenter  # BASE -> prune -> test
#
# Data, schedule and runtime come from the SegViT demo BASE config; the model is the
# same small ViT (with a cls token and a final norm, as Segmenter) and the same
# stages and auxiliary ATM heads as the SegViT demo, with Segmenter's mask
# transformer (2 layers at the backbone width) as the final head.
_base_ = ['./segvit_vit-t16-8l_1xb8-1200_demo-128x128.py']

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
