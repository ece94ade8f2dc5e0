# EoMT-B as a DToP model: DINOv2-B/14 with 4 registers, resampled to patch 16; the
# model of eomt_vit-l16-dinov2-reg4.py at ViT-B size (768 wide, 12 heads, 12 blocks:
# 8 in the backbone, the last 4 the EoMT query blocks). One ATM auxiliary head after
# 0-based block 5 (DToP ViT-B prunes after blocks 5 and 7; block 7 is where EoMT's
# queries join, so the final stage starts after block 5 here). Weights:
#   python tools/model_converters/dinov2_to_dtop.py SRC pretrain/dinov2_vitb14_reg4_p16.pth \
#       --patch-size 16
_base_ = ['./eomt_vit-l16-dinov2-reg4.py']
__checkpoint = 'pretrain/dinov2_vitb14_reg4_p16.pth'
__aux = dict(_base_.model.auxiliary_head[0], in_channels=768, channels=384, num_heads=6)
model = dict(
    backbone=dict(embed_dims=768, num_layers=8, num_heads=12, out_indices=[5, 7],
                  init_cfg=dict(checkpoint=__checkpoint)),
    decode_head=dict(in_channels=768, num_heads=12,
                     init_cfg=dict(checkpoint=__checkpoint, vit_block_offset=8)),
    auxiliary_head=[__aux])
