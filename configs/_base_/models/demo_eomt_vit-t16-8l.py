# The EoMT demo model (Kerssies et al., CVPR 2025), shrunk for 2 CPU cores like the
# SegViT demo (demo_vit-t16-8l.py): 8 transformer layers of width 192, 3 attention
# heads, patch 16, trained from scratch (no init_cfg; DINOv2 weights cannot be
# downloaded here).
#
# * Backbone: a DINOv2-style ViT (DToPDinov2) of 6 layers with 2 register tokens and
#   layer scale; as in EoMT the cls token has no position embedding and there is no
#   final norm (the EoMT head normalises). Layer scale starts at 1.0 (no damping), so
#   that the from-scratch model trains like the plain ViT of the other demos.
# * Stages closed after 0-based layers [1, 3, 5]: the two auxiliary ATM prune heads
#   of the SegViT demo (d = 96, 3 heads, 2 decoder layers) read the tokens after
#   layers 1 and 3; the final stage is layers 4-5 plus the EoMT head's 2 query blocks
#   (4 of the 8 layers, EoMT-L's 4 of 24 query blocks scaled to the demo depth).
# * Final head: EoMTHead, 20 queries for 10 classes (EoMT: 100-200 queries for
#   150 ADE20K classes), its masked attention annealed away during BASE training
#   (MaskAnnealingHook of _base_/schedules/demo_eomt_1200.py). The auxiliary heads
#   write a 'probs' canvas, the space the EoMT head reads.
# * Loss: MaskClassificationLoss with num_points 1024 instead of EoMT's 12544
#   (= 112 x 112, for masks of 128 x 128 at stride 4 of a 512 crop): a 128 x 128
#   crop has 32 x 32 = 1024 mask logits, so sampling 12x more points than there are
#   logits would only cost time (the point sampling runs on CPU here).
# jax-style normalisation, whole-image test and the 128x128 crop: demo_vit-t16-8l.py.
_base_ = ['./demo_vit-t16-8l.py']
__bb = _base_.model.backbone
__embed_dims = __bb.embed_dims  # 192
__num_heads = __bb.num_heads  # 3
model = dict(
    backbone=dict(
        _delete_=True,
        type='DToPDinov2',
        img_size=__bb.img_size,
        patch_size=__bb.patch_size,
        embed_dims=__embed_dims,
        num_layers=6,
        num_heads=__num_heads,
        mlp_ratio=4,
        num_register_tokens=2,
        pos_embed_cls=False,
        final_norm=False,
        out_indices=[1, 3, 5],
        drop_path_rate=0.0,
        layer_scale_init=1.0),
    decode_head=dict(
        _delete_=True,
        type='EoMTHead',
        in_channels=__embed_dims,
        num_classes=_base_.num_classes,
        num_heads=__num_heads,
        num_blocks=2,
        num_queries=20,
        mlp_ratio=4,
        layer_scale_init=1.0,
        loss_decode=dict(type='MaskClassificationLoss', num_points=1024)))
