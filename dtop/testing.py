"""Tiny model configs for unit tests and smoke runs (CPU, milliseconds)."""
import copy
from typing import Optional, Sequence


def tiny_dtop_model_cfg(num_classes: int = 5,
                        embed_dims: int = 32,
                        num_layers: int = 6,
                        out_indices: Sequence[int] = (1, 3, 5),
                        num_heads: int = 2,
                        channels: int = 16,
                        head_heads: int = 2,
                        head_layers: int = 2,
                        img_size=(64, 64),
                        prune_threshold: Optional[float] = 1.0,
                        keep_topk_per_class: int = 5,
                        test_mode: str = 'whole') -> dict:
    """A DToPEncoderDecoder config with tiny dims (no pretrained weights).

    Returns:
        dict: a model config for ``mmseg.registry.MODELS.build``.
    """
    head = dict(type='ATMPruneHead', in_channels=embed_dims, channels=channels,
                num_classes=num_classes, num_heads=head_heads, num_layers=head_layers,
                loss_decode=dict(type='ATMLoss', num_classes=num_classes))
    test_cfg = dict(mode=test_mode)
    if test_mode == 'slide':
        test_cfg.update(crop_size=tuple(img_size), stride=(img_size[0] // 2, img_size[1] // 2))
    return dict(
        type='DToPEncoderDecoder',
        data_preprocessor=dict(type='SegDataPreProcessor', mean=[123.675, 116.28, 103.53],
                               std=[58.395, 57.12, 57.375], bgr_to_rgb=True,
                               pad_val=0, seg_pad_val=255),
        backbone=dict(type='DToPVisionTransformer', img_size=tuple(img_size), patch_size=16,
                      embed_dims=embed_dims, num_layers=num_layers, num_heads=num_heads,
                      mlp_ratio=2, out_indices=list(out_indices), drop_path_rate=0.0,
                      norm_cfg=dict(type='LN', eps=1e-6), interpolate_mode='bicubic'),
        decode_head=copy.deepcopy(head),
        auxiliary_head=[copy.deepcopy(head) for _ in range(len(out_indices) - 1)],
        prune_threshold=prune_threshold,
        keep_topk_per_class=keep_topk_per_class,
        train_cfg=dict(),
        test_cfg=test_cfg)
