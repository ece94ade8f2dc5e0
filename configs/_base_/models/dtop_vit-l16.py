# DToP ViT-L/16 model (Tang et al., ICCV 2023): plain ViT-L/16 (cls token dropped),
# three independent ATM prune heads after 0-based layers [7, 15, 23] (stages of
# 8 / 8 / 8 layers): two auxiliary heads, then the decode head. Defaults are those of
# the ADE20K row (150 classes, 640x640 crops, head 512 wide with 8 attention heads,
# slide 640/320); the PC-59 and COCO-Stuff-10K configs override classes, crop and
# head attention heads (16).
#
# Everything else is the ViT-B/16 model of dtop_vit-b16.py (ATM head and loss
# settings, stage layout rules, `prune_threshold` 1.0 = BASE, `keep_topk_per_class`);
# only the sizes, the checkpoint and the normalisation differ.
# Helper names start with "__" so that they stay out of the merged config.
_base_ = ['./dtop_vit-b16.py']
__crop_size = (640, 640)
__checkpoint = ('https://download.openmmlab.com/mmsegmentation/v0.5/pretrain/'
                'segmenter/vit_large_p16_384_20220308-d4efb41d.pth')
# The same ATM head, 1024 -> 512 wide with 8 attention heads.
__head = dict(_base_.model.decode_head, in_channels=1024, channels=512, num_heads=8)
model = dict(
    # jax-style normalisation, as every official ViT-L config.
    data_preprocessor=dict(mean=[127.5] * 3, std=[127.5] * 3, size=__crop_size),
    backbone=dict(
        img_size=__crop_size,
        embed_dims=1024,
        num_layers=24,
        num_heads=16,
        out_indices=[7, 15, 23],
        drop_path_rate=0.3,
        init_cfg=dict(checkpoint=__checkpoint)),
    decode_head=__head,
    auxiliary_head=[__head, __head],
    test_cfg=dict(crop_size=__crop_size, stride=(320, 320)))
