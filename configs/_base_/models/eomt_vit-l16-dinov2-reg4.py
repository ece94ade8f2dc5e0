# EoMT-L (Kerssies et al., "Your ViT is Secretly an Image Segmentation Model", CVPR
# 2025) as a DToP model: DINOv2-L/14 with 4 registers, resampled to patch 16, 512x512
# crops, ADE20K (150 classes), 100 queries.
#
# The 24 ViT blocks are split where EoMT's queries join: the first 20 are the
# backbone (DToPDinov2, no final norm), the last 4 the query blocks of the EoMTHead
# (which owns the ViT's final norm as its `norm`). DToP's stages follow its ViT-L
# placement (docs/eomt.md): ATM auxiliary heads after 0-based blocks 7 and 15 (as in
# DToP ViT-L, 8 / 8 / 8 blocks), the final stage being blocks 16-19 of the backbone
# plus the 4 query blocks. The auxiliary heads are those of dtop_vit-l16.py (ATM, 512
# wide, 8 attention heads); they grade the tokens and are trained with their ATM losses,
# EoMT's head with Mask2Former's mask-classification loss (MaskClassificationLoss:
# EoMT's weights, 12544 points). `prune_threshold` 1.0 = BASE (no pruning).
#
# ImageNet-free DINOv2 weights (not downloaded here): convert timm's
# vit_large_patch14_reg4_dinov2 or transformers' facebook/dinov2-with-registers-large
# once with
#   python tools/model_converters/dinov2_to_dtop.py SRC pretrain/dinov2_vitl14_reg4_p16.pth \
#       --patch-size 16
# The backbone loads blocks 0-19, the head blocks 20-23 and the final norm
# (`vit_block_offset`).
_base_ = ['./dtop_vit-l16.py']
__crop_size = (512, 512)
__num_classes = 150
__checkpoint = 'pretrain/dinov2_vitl14_reg4_p16.pth'
__aux = dict(_base_.model.decode_head, num_classes=__num_classes)
model = dict(
    # ImageNet mean/std (DINOv2's normalisation)
    data_preprocessor=dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375],
                           size=__crop_size),
    backbone=dict(
        _delete_=True,
        type='DToPDinov2',
        img_size=__crop_size,
        patch_size=16,
        embed_dims=1024,
        num_layers=20,
        num_heads=16,
        mlp_ratio=4,
        layer_scale_init=1e-5,
        num_register_tokens=4,
        pos_embed_cls=False,
        final_norm=False,
        out_indices=[7, 15, 19],
        drop_path_rate=0.0,
        init_cfg=dict(type='Pretrained', checkpoint=__checkpoint)),
    decode_head=dict(
        _delete_=True,
        type='EoMTHead',
        in_channels=1024,
        num_classes=__num_classes,
        num_heads=16,
        num_blocks=4,
        num_queries=100,
        mlp_ratio=4,
        layer_scale_init=1e-5,
        loss_decode=dict(type='MaskClassificationLoss'),
        init_cfg=dict(type='Pretrained', checkpoint=__checkpoint, vit_block_offset=20)),
    auxiliary_head=[__aux, __aux],
    test_cfg=dict(crop_size=__crop_size, stride=(341, 341)))
