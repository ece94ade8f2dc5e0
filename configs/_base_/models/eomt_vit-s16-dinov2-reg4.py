# EoMT-S as a DToP model: DINOv2-S/14 with 4 registers, resampled to patch 16; the
# ViT-B layout of eomt_vit-b16-dinov2-reg4.py at ViT-S size (384 wide, 6 heads, 12
# blocks: 8 in the backbone, the last 4 the query blocks), one ATM auxiliary head
# (192 wide, 3 heads) after 0-based block 5. Weights:
#   python tools/model_converters/dinov2_to_dtop.py SRC pretrain/dinov2_vits14_reg4_p16.pth \
#       --patch-size 16
_base_ = ['./eomt_vit-b16-dinov2-reg4.py']
__checkpoint = 'pretrain/dinov2_vits14_reg4_p16.pth'
__aux = dict(_base_.model.auxiliary_head[0], in_channels=384, channels=192, num_heads=3)
model = dict(
    backbone=dict(embed_dims=384, num_heads=6, init_cfg=dict(checkpoint=__checkpoint)),
    decode_head=dict(in_channels=384, num_heads=6,
                     init_cfg=dict(checkpoint=__checkpoint, vit_block_offset=8)),
    auxiliary_head=[__aux])
