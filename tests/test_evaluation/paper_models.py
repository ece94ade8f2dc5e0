"""Model configs with the paper's real dims (the four README rows), for FLOP tests.

These are the models of the paper's results tables (Sec. 4: ADE20K, Pascal Context,
COCO-Stuff-10K) as shipped in configs/segvit/: ViT-B/16 (768, 12 layers, 12 heads,
out_indices [5, 7, 11], head 384 / 6 heads) and ViT-L/16 (1024, 24 layers, 16 heads,
[7, 15, 23], head 512 / 8 or 16 heads).
"""
import copy

#: name -> (arch, num_classes, crop, head attention heads, README BASE GFLOPs)
README_ROWS = {
    'ade20k_vit-b16': ('b', 150, 512, 6, 109.9),
    'ade20k_vit-l16': ('l', 150, 640, 8, 617.0),
    'pascal-context-59_vit-l16': ('l', 59, 480, 16, 315.4),
    'coco-stuff10k_vit-l16': ('l', 171, 512, 16, 366.9),
}

_ARCH = dict(b=dict(embed_dims=768, num_layers=12, num_heads=12, out_indices=[5, 7, 11],
                    channels=384),
             l=dict(embed_dims=1024, num_layers=24, num_heads=16, out_indices=[7, 15, 23],
                    channels=512))


def paper_model_cfg(row: str, prune_threshold=1.0) -> dict:
    """``DToPEncoderDecoder`` config with the real dims of a README row."""
    arch, num_classes, crop, head_heads, _ = README_ROWS[row]
    a = _ARCH[arch]
    head = dict(type='ATMPruneHead', in_channels=a['embed_dims'], channels=a['channels'],
                num_classes=num_classes, num_heads=head_heads, num_layers=3,
                loss_decode=dict(type='ATMLoss', num_classes=num_classes))
    return dict(
        type='DToPEncoderDecoder',
        data_preprocessor=dict(type='SegDataPreProcessor', mean=[127.5] * 3, std=[127.5] * 3,
                               bgr_to_rgb=True, pad_val=0, seg_pad_val=255,
                               size=(crop, crop)),
        backbone=dict(type='DToPVisionTransformer', img_size=(crop, crop), patch_size=16,
                      embed_dims=a['embed_dims'], num_layers=a['num_layers'],
                      num_heads=a['num_heads'], mlp_ratio=4, out_indices=a['out_indices'],
                      drop_path_rate=0.0, norm_cfg=dict(type='LN', eps=1e-6),
                      interpolate_mode='bicubic'),
        decode_head=copy.deepcopy(head),
        auxiliary_head=[copy.deepcopy(head) for _ in range(2)],
        prune_threshold=prune_threshold,
        train_cfg=dict(),
        test_cfg=dict(mode='slide', crop_size=(crop, crop),
                      stride=(crop * 2 // 3, crop * 2 // 3)))
