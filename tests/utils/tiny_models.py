"""Tiny ``DToPEncoderDecoder`` configs for unit tests and smoke runs (CPU, milliseconds).

One builder per model family, all on the same backbone/segmentor skeleton and with
no pretrained weights:

- ``'segvit'``: ATM prune heads at every stage (the paper's model, Sec. 3.3);
- ``'setr'``: SETR-naive, one ``DToPSETRUPHead`` per stage;
- ``'segmenter'``: ATM auxiliary heads and a ``DToPSegmenterMaskHead`` final head;
- ``'eomt'``: a ``DToPDinov2`` backbone (registers, layer scale), ATM auxiliary
  heads and an ``EoMTHead`` final head (query blocks on top of the backbone).

``tiny_model_cfg(family, **overrides)`` picks one; the per-family functions take the
same keyword arguments directly.
"""
import copy
from typing import Optional, Sequence, Union

Threshold = Union[float, Sequence[float], None]

_DATA_PREPROCESSOR = dict(type='SegDataPreProcessor', mean=[123.675, 116.28, 103.53],
                          std=[58.395, 57.12, 57.375], bgr_to_rgb=True,
                          pad_val=0, seg_pad_val=255)


def _backbone(embed_dims, num_layers, num_heads, out_indices, img_size, drop_path_rate,
              **extra):
    return dict(type='DToPVisionTransformer', img_size=tuple(img_size), patch_size=16,
                embed_dims=embed_dims, num_layers=num_layers, num_heads=num_heads,
                mlp_ratio=2, out_indices=list(out_indices), drop_path_rate=drop_path_rate,
                **extra, norm_cfg=dict(type='LN', eps=1e-6), interpolate_mode='bicubic')


def _atm_head(embed_dims, channels, num_classes, num_heads, num_layers):
    return dict(type='ATMPruneHead', in_channels=embed_dims, channels=channels,
                num_classes=num_classes, num_heads=num_heads, num_layers=num_layers,
                loss_decode=dict(type='ATMLoss', num_classes=num_classes))


def _segmentor(backbone, decode_head, auxiliary_head, prune_threshold, keep_topk_per_class,
               img_size, test_mode):
    test_cfg = dict(mode=test_mode)
    if test_mode == 'slide':
        test_cfg.update(crop_size=tuple(img_size),
                        stride=(img_size[0] // 2, img_size[1] // 2))
    return dict(
        type='DToPEncoderDecoder',
        data_preprocessor=copy.deepcopy(_DATA_PREPROCESSOR),
        backbone=backbone, decode_head=decode_head, auxiliary_head=auxiliary_head,
        prune_threshold=prune_threshold, keep_topk_per_class=keep_topk_per_class,
        train_cfg=dict(), test_cfg=test_cfg)


def tiny_dtop_model_cfg(num_classes: int = 5,
                        embed_dims: int = 32,
                        num_layers: int = 6,
                        out_indices: Sequence[int] = (1, 3, 5),
                        num_heads: int = 2,
                        channels: int = 16,
                        head_heads: int = 2,
                        head_layers: int = 2,
                        img_size=(64, 64),
                        prune_threshold: Threshold = 1.0,
                        keep_topk_per_class: int = 5,
                        test_mode: str = 'whole') -> dict:
    """SegViT-style DToP (``'segvit'``): one ``ATMPruneHead`` per stage, the backbone's
    own defaults for the cls token, patch bias and final norm.

    Returns:
        dict: a model config for ``mmseg.registry.MODELS.build``.
    """
    head = _atm_head(embed_dims, channels, num_classes, head_heads, head_layers)
    return _segmentor(
        _backbone(embed_dims, num_layers, num_heads, out_indices, img_size, 0.0),
        copy.deepcopy(head), [copy.deepcopy(head) for _ in range(len(out_indices) - 1)],
        prune_threshold, keep_topk_per_class, img_size, test_mode)


def _mmseg_vit(embed_dims, num_layers, num_heads, out_indices, img_size, drop_path_rate):
    """The ViT of mmseg's SETR/Segmenter configs: cls token, no patch bias, final norm."""
    return _backbone(embed_dims, num_layers, num_heads, out_indices, img_size,
                     drop_path_rate, with_cls_token=True, patch_bias=False, final_norm=True)


def tiny_setr_model_cfg(num_classes: int = 5,
                        embed_dims: int = 32,
                        num_layers: int = 4,
                        out_indices: Sequence[int] = (0, 1, 2, 3),
                        num_heads: int = 2,
                        channels: int = 16,
                        norm_type: str = 'BN',
                        img_size=(64, 64),
                        prune_threshold: Threshold = 1.0,
                        keep_topk_per_class: int = 5,
                        drop_path_rate: float = 0.0,
                        test_mode: str = 'whole') -> dict:
    """SETR-naive DToP (``'setr'``): one ``DToPSETRUPHead`` per stage (auxiliary heads
    with loss weight 0.4, then the decode head).

    Returns:
        dict: a model config for ``mmseg.registry.MODELS.build``.
    """
    head = dict(type='DToPSETRUPHead', in_channels=embed_dims, channels=channels,
                in_index=len(out_indices) - 1, num_classes=num_classes, dropout_ratio=0,
                norm_cfg=dict(type=norm_type, requires_grad=True), num_convs=1,
                up_scale=4, kernel_size=1, align_corners=False,
                loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False,
                                 loss_weight=1.0))
    aux = [dict(copy.deepcopy(head), in_index=i,
                loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False,
                                 loss_weight=0.4))
           for i in range(len(out_indices) - 1)]
    return _segmentor(
        _mmseg_vit(embed_dims, num_layers, num_heads, out_indices, img_size, drop_path_rate),
        head, aux, prune_threshold, keep_topk_per_class, img_size, test_mode)


def tiny_segmenter_model_cfg(num_classes: int = 5,
                             embed_dims: int = 32,
                             num_layers: int = 4,
                             out_indices: Sequence[int] = (1, 2, 3),
                             num_heads: int = 2,
                             head_layers: int = 2,
                             atm_channels: int = 16,
                             img_size=(64, 64),
                             prune_threshold: Threshold = 1.0,
                             keep_topk_per_class: int = 5,
                             drop_path_rate: float = 0.0,
                             test_mode: str = 'whole',
                             head_drop_path_rate: Optional[float] = 0.0) -> dict:
    """Segmenter DToP (``'segmenter'``): ``ATMPruneHead`` auxiliary heads (2 attention
    heads, 2 layers) and a ``DToPSegmenterMaskHead`` final head.

    Returns:
        dict: a model config for ``mmseg.registry.MODELS.build``.
    """
    aux = _atm_head(embed_dims, atm_channels, num_classes, num_heads=2, num_layers=2)
    decode = dict(type='DToPSegmenterMaskHead', in_channels=embed_dims,
                  channels=embed_dims, num_classes=num_classes, num_layers=head_layers,
                  num_heads=num_heads, embed_dims=embed_dims,
                  drop_path_rate=head_drop_path_rate, dropout_ratio=0.0,
                  align_corners=False,
                  loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False,
                                   loss_weight=1.0))
    return _segmentor(
        _mmseg_vit(embed_dims, num_layers, num_heads, out_indices, img_size, drop_path_rate),
        decode, [copy.deepcopy(aux) for _ in range(len(out_indices) - 1)],
        prune_threshold, keep_topk_per_class, img_size, test_mode)


def tiny_eomt_model_cfg(num_classes: int = 5,
                        embed_dims: int = 64,
                        num_layers: int = 6,
                        out_indices: Sequence[int] = (1, 3, 5),
                        num_heads: int = 4,
                        num_register_tokens: int = 2,
                        ffn_type: str = 'mlp',
                        final_norm: bool = False,
                        atm_channels: int = 16,
                        num_blocks: int = 2,
                        num_queries: int = 8,
                        img_size=(64, 64),
                        prune_threshold: Threshold = 1.0,
                        keep_topk_per_class: int = 5,
                        test_mode: str = 'whole') -> dict:
    """EoMT DToP (``'eomt'``): a DINOv2 backbone of ``num_layers`` layers (patch 16,
    no position for the cls token, as EoMT), ``ATMPruneHead`` auxiliary heads (2
    attention heads, 1 layer) and an ``EoMTHead`` of ``num_blocks`` query blocks.

    Returns:
        dict: a model config for ``mmseg.registry.MODELS.build``.
    """
    backbone = dict(type='DToPDinov2', img_size=tuple(img_size), patch_size=16,
                    embed_dims=embed_dims, num_layers=num_layers, num_heads=num_heads,
                    ffn_type=ffn_type, num_register_tokens=num_register_tokens,
                    pos_embed_cls=False, final_norm=final_norm,
                    out_indices=list(out_indices))
    aux = _atm_head(embed_dims, atm_channels, num_classes, num_heads=2, num_layers=1)
    decode = dict(type='EoMTHead', in_channels=embed_dims, num_classes=num_classes,
                  num_heads=num_heads, num_blocks=num_blocks, num_queries=num_queries,
                  ffn_type=ffn_type, loss_decode=dict(type='MaskClassificationLoss'))
    return _segmentor(backbone, decode,
                      [copy.deepcopy(aux) for _ in range(len(out_indices) - 1)],
                      prune_threshold, keep_topk_per_class, img_size, test_mode)


FAMILIES = dict(segvit=tiny_dtop_model_cfg, setr=tiny_setr_model_cfg,
                segmenter=tiny_segmenter_model_cfg, eomt=tiny_eomt_model_cfg)


def tiny_model_cfg(family: str = 'segvit', **overrides) -> dict:
    """A tiny model config of ``family`` (``'segvit'``, ``'setr'``, ``'segmenter'`` or
    ``'eomt'``);
    ``overrides`` are the keyword arguments of that family's function above.

    Returns:
        dict: a model config for ``mmseg.registry.MODELS.build``.
    """
    if family not in FAMILIES:
        raise ValueError(f'unknown family {family!r}; choose one of {sorted(FAMILIES)}')
    return FAMILIES[family](**overrides)
