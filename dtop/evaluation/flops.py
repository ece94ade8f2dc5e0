"""Analytic FLOP model of DToP (``paper-results.md`` §3 and §5) and a library counter.

Counting conventions (fvcore's, which reproduce the README BASE numbers):

* one multiply-add = one FLOP;
* LayerNorm = ``5 * numel``; bilinear upsample = ``4 * output numel``;
* elementwise ops, softmax, GELU/ReLU, sorting and gathers are free.

Per-layer costs for ``n`` active tokens (``D`` backbone width, ``F`` its FFN width,
``d`` head width, ``Q`` classes, ``L_h`` head decoder layers, ``F_h`` head FFN width):

* ViT layer: ``4 n D^2 + 2 n D F + 2 n^2 D + 10 n D`` (= ``12 n D^2 + 2 n^2 D +
  10 n D`` for ``F = 4D``).
* Prune head: ``n D d + 5 n d + L_h (6 Q d^2 + 2 Q d F_h + 2 Q^2 d + 2 n d^2 + 2 Q n d
  + 15 Q d) + 2 Q d`` (``14 Q d^2`` for the Q-side terms when ``F_h = 4d``).
* Final head: adds the bilinear upsample of the ``Q`` maps to the crop, ``4 Q H W``.
* Patch embedding: ``N * D * 3 p^2`` for the ``N`` tokens of the full grid.
* SETR-naive head (``kind='setr_up'``, token-wise, ``c`` conv channels): LN
  ``5 n D`` + 1x1 conv ``n D c`` + BN ``2 n c`` + ``conv_seg`` ``n c Q``; as the
  final head its map is upsampled ``x u`` (``4 Q (u h)(u w)``) and resized to the
  crop (``4 Q H W``).
* Segmenter mask transformer (``kind='segmenter_mask'``, width ``E``, ``L_h``
  layers of FFN width ``F_h``): ``dec_proj`` ``n D E`` + ``L_h`` ViT layers on
  ``n + Q`` tokens + ``decoder_norm`` ``5 (n + Q) E`` + ``patch_proj`` ``n E^2`` +
  ``classes_proj`` ``Q E^2`` + masks ``n E Q`` + ``mask_norm`` ``5 n Q`` (the L2
  normalisations are free); the final map is resized to the crop, ``4 Q H W``.
* A cls token (``num_prefix_tokens = 1``) is one more token in every backbone
  layer (never pruned); ``final_norm`` costs ``5 n D`` on the ``n`` patch tokens
  the final head reads.

:func:`mmseg_dense_flops` gives the same for mmseg's dense ``EncoderDecoder`` with
the same parameters (what ``get_flops.py`` prints next to ours). It differs from
our dense count only where the computation differs: mmseg's SETR head runs
``conv_seg`` *after* its ``x u`` upsample, on ``u^2`` times more positions and with
the ``c``-channel map upsampled instead of the ``Q``-channel one (our head commutes
the two, which gives the same logits); mmseg's ``final_norm`` also normalises the
cls token (``5 D``).

A pruned model sums these with the active counts of each stage; head ``s`` is
evaluated at ``token_counts[:, s]`` — the auxiliary heads at the count *before* their
own pruning, the final head at the count left after the last pruning — which is
exactly what :class:`DToPEncoderDecoder` reports as ``active_counts`` /
``dtop_stats['token_counts']``.

Everything here works on plain numbers, numpy arrays or tensors of counts.
"""
import math
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

ArrayLike = Union[int, float, np.ndarray]

# --------------------------------------------------------------------- per layer


def vit_layer_flops(n: ArrayLike, embed_dims: int, ffn_channels: Optional[int] = None
                    ) -> ArrayLike:
    """FLOPs of one pre-norm ViT encoder layer on ``n`` tokens.

    Args:
        n: active tokens (number or array).
        embed_dims (int): ``D``.
        ffn_channels (int, optional): FFN hidden width ``F`` (default ``4 D``).

    Returns:
        FLOPs, same shape as ``n``: qkv + output projection ``4nD^2``, MLP
        ``2nDF``, ``QK^T`` and ``AV`` ``2n^2D``, two LayerNorms ``10nD``.
    """
    D = embed_dims
    F = 4 * D if ffn_channels is None else ffn_channels
    n = _as_float(n)
    return 4 * n * D * D + 2 * n * D * F + 2 * n * n * D + 10 * n * D


def prune_head_flops(n: ArrayLike, in_channels: int, channels: int, num_classes: int,
                     num_layers: int = 3, ffn_channels: Optional[int] = None) -> ArrayLike:
    """FLOPs of one :class:`ATMPruneHead` on ``n`` tokens (no upsample).

    Args:
        n: active tokens (number or array).
        in_channels (int): ``D_in`` (the backbone width).
        channels (int): ``d``.
        num_classes (int): ``Q`` (one query per class).
        num_layers (int): decoder layers ``L_h``.
        ffn_channels (int, optional): decoder FFN width (default ``4 d``).

    Returns:
        FLOPs, same shape as ``n``.
    """
    d, Q = channels, num_classes
    Fh = 4 * d if ffn_channels is None else ffn_channels
    n = _as_float(n)
    proj = n * in_channels * d + 5 * n * d
    # self-attn in/out proj 4Qd^2, cross q/proj 2Qd^2, FFN 2QdF.
    q_side = 6 * Q * d * d + 2 * Q * d * Fh + 2 * Q * Q * d + 15 * Q * d
    token_side = 2 * n * d * d + 2 * Q * n * d
    return proj + num_layers * (q_side + token_side) + 2 * Q * d


def upsample_flops(num_classes: int, height: int, width: int) -> float:
    """Bilinear upsample of ``Q`` maps to ``height x width`` (``4 * output numel``)."""
    return 4.0 * num_classes * height * width


def patch_embed_flops(num_tokens: ArrayLike, embed_dims: int, patch_size: int,
                      in_channels: int = 3) -> ArrayLike:
    """Patch-embedding convolution: ``N * D * C_in * p^2``."""
    return _as_float(num_tokens) * embed_dims * in_channels * patch_size * patch_size


def _as_float(n):
    if hasattr(n, 'detach'):  # torch tensor
        n = n.detach().cpu().numpy()
    return np.asarray(n, dtype=np.float64) if not isinstance(n, (int, float)) else float(n)


# --------------------------------------------------------------------- model dims


HEAD_KINDS = ('atm', 'setr_up', 'segmenter_mask')


def setr_up_head_flops(n: ArrayLike, in_channels: int, channels: int, num_classes: int,
                       with_norm: bool = True) -> ArrayLike:
    """FLOPs of the token-wise SETR-naive head on ``n`` tokens (no upsample).

    LN ``5 n D`` + 1x1 conv ``n D c`` + BN (eval: scale and shift) ``2 n c`` +
    ``conv_seg`` ``n c Q``.
    """
    n = _as_float(n)
    D, c, Q = in_channels, channels, num_classes
    return 5 * n * D + n * D * c + (2 * n * c if with_norm else 0) + n * c * Q


def segmenter_mask_head_flops(n: ArrayLike, in_channels: int, embed_dims: int,
                              num_classes: int, num_layers: int = 2,
                              ffn_channels: Optional[int] = None) -> ArrayLike:
    """FLOPs of Segmenter's mask transformer on ``n`` patch tokens (no resize).

    ``dec_proj`` + ``num_layers`` ViT layers on ``n + Q`` tokens + ``decoder_norm``
    + ``patch_proj`` / ``classes_proj`` + masks + ``mask_norm``.
    """
    n = _as_float(n)
    D, E, Q = in_channels, embed_dims, num_classes
    return (n * D * E + num_layers * vit_layer_flops(n + Q, E, ffn_channels)
            + 5 * (n + Q) * E + n * E * E + Q * E * E + n * E * Q + 5 * n * Q)


@dataclass(frozen=True)
class HeadDims:
    """Dimensions of one stage head.

    Attributes:
        in_channels (int): ``D_in`` (the backbone width).
        channels (int): ``d`` (ATM), the conv channels ``c`` (SETR) or the
            transformer width ``E`` (Segmenter).
        num_classes (int): ``Q``.
        num_layers (int): decoder layers (ATM, Segmenter); 1 for SETR.
        ffn_channels (int): decoder FFN width (ATM, Segmenter).
        kind (str): ``'atm'``, ``'setr_up'`` or ``'segmenter_mask'``.
        up_scale (int): SETR's upsampling factor ``u``.
        with_norm (bool): SETR's conv module has a BN.
    """
    in_channels: int
    channels: int
    num_classes: int
    num_layers: int = 3
    ffn_channels: Optional[int] = None
    kind: str = 'atm'
    up_scale: int = 4
    with_norm: bool = True

    def __post_init__(self):
        if self.kind not in HEAD_KINDS:
            raise ValueError(f'head kind must be one of {HEAD_KINDS}, got {self.kind!r}')

    def flops(self, n: ArrayLike) -> ArrayLike:
        """Token-side FLOPs on ``n`` active tokens (what the stage loop runs)."""
        if self.kind == 'setr_up':
            return setr_up_head_flops(n, self.in_channels, self.channels,
                                      self.num_classes, self.with_norm)
        if self.kind == 'segmenter_mask':
            return segmenter_mask_head_flops(n, self.in_channels, self.channels,
                                             self.num_classes, self.num_layers,
                                             self.ffn_channels)
        return prune_head_flops(n, self.in_channels, self.channels, self.num_classes,
                                self.num_layers, self.ffn_channels)

    def pixel_flops(self, grid_h: float, grid_w: float, height: int, width: int,
                    patch_size: int) -> float:
        """Cost of turning the final ``(Q, grid_h, grid_w)`` map into a
        ``height x width`` crop (the final head's ``to_pixels``)."""
        Q = self.num_classes
        if self.kind == 'setr_up':
            u = float(self.up_scale)
            return (upsample_flops(Q, int(grid_h * u), int(grid_w * u))
                    + upsample_flops(Q, height, width))
        if self.kind == 'segmenter_mask':
            return upsample_flops(Q, height, width)
        return upsample_flops(Q, grid_h * patch_size, grid_w * patch_size)

    def mmseg_flops(self, grid_h: int, grid_w: int) -> float:
        """FLOPs of mmseg's dense head ``forward`` on a full ``grid_h x grid_w``
        grid (SETR: ``x u`` upsample of the ``c`` channels, then ``conv_seg`` on
        every upsampled pixel)."""
        N = grid_h * grid_w
        if self.kind == 'setr_up':
            c, Q = self.channels, self.num_classes
            hu, wu = int(grid_h * float(self.up_scale)), int(grid_w * float(self.up_scale))
            token_side = setr_up_head_flops(N, self.in_channels, c, Q, self.with_norm)
            return token_side - N * c * Q + upsample_flops(c, hu, wu) + hu * wu * c * Q
        if self.kind == 'segmenter_mask':
            return float(self.flops(N))
        raise ValueError(f'a {self.kind!r} head has no mmseg counterpart')


@dataclass(frozen=True)
class DToPCostDims:
    """Everything the analytic cost model needs to know about a DToP model.

    Attributes:
        embed_dims (int): backbone width ``D``.
        ffn_channels (int): backbone FFN width ``F``.
        stage_layers (tuple[int]): backbone layers per stage (e.g. ``(6, 2, 4)``).
        heads (tuple[HeadDims]): one per stage (auxiliary heads, then the decode head).
        patch_size (int): pixels per token side.
        in_channels (int): image channels.
        crop_size (tuple[int, int]): training crop ``(H, W)``, the static-count input.
        pre_norm (bool): whether a LayerNorm runs after the position embedding.
        num_prefix_tokens (int): tokens in every backbone layer besides the patch
            tokens, never pruned (1 with a cls token).
        final_norm (bool): a LayerNorm on the tokens the final head reads.
    """
    embed_dims: int
    ffn_channels: int
    stage_layers: Tuple[int, ...]
    heads: Tuple[HeadDims, ...]
    patch_size: int = 16
    in_channels: int = 3
    crop_size: Tuple[int, int] = (512, 512)
    pre_norm: bool = False
    num_prefix_tokens: int = 0
    final_norm: bool = False

    def __post_init__(self):
        if len(self.stage_layers) != len(self.heads):
            raise ValueError(f'{len(self.stage_layers)} stages but {len(self.heads)} heads')
        if any(h.in_channels != self.embed_dims for h in self.heads):
            raise ValueError('every head must read the backbone width')

    @property
    def num_stages(self) -> int:
        return len(self.stage_layers)

    @property
    def num_classes(self) -> int:
        return self.heads[-1].num_classes

    def grid_tokens(self, crop_shape: Optional[Sequence[int]] = None) -> int:
        """Tokens of the full grid of a crop (corner padding rounds sides up)."""
        H, W = crop_shape or self.crop_size
        p = self.patch_size
        return math.ceil(H / p) * math.ceil(W / p)

    def to_dict(self) -> dict:
        """Plain-python form (for configs / JSON); :meth:`from_dict` inverts it."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> 'DToPCostDims':
        d = dict(d)
        d['heads'] = tuple(h if isinstance(h, HeadDims) else HeadDims(**h)
                           for h in d['heads'])
        d['stage_layers'] = tuple(d['stage_layers'])
        d['crop_size'] = tuple(d['crop_size'])
        return cls(**d)

    @classmethod
    def from_model(cls, model) -> 'DToPCostDims':
        """Read the dims of a built :class:`DToPEncoderDecoder` (any device, incl. meta).

        Args:
            model: the segmentor (a DDP wrapper is unwrapped).

        Returns:
            DToPCostDims.
        """
        model = getattr(model, 'module', model)
        bb = model.backbone
        if not hasattr(bb, 'stage_ranges'):
            raise TypeError(f'expected a DToP model with a stage-wise backbone, got '
                            f'{type(model).__name__} / {type(bb).__name__}')
        layer0 = bb.layers[0]
        D = layer0.ln1.normalized_shape[0]
        ffn = _ffn_hidden(layer0.ffn)
        conv = bb.patch_embed.projection
        if conv.kernel_size[0] != conv.kernel_size[1] or conv.stride != conv.kernel_size:
            raise ValueError('the cost model assumes a square, non-overlapping patch conv')
        heads = [_head_dims(head) for head in model.stage_heads]
        crop = getattr(model, 'test_cfg', None) or {}
        crop = crop.get('crop_size', None) if hasattr(crop, 'get') else None
        img_size = tuple(bb.img_size) if crop is None else tuple(crop)
        return cls(embed_dims=D, ffn_channels=ffn,
                   stage_layers=tuple(e - s for s, e in bb.stage_ranges),
                   heads=tuple(heads), patch_size=conv.kernel_size[0],
                   in_channels=conv.in_channels, crop_size=img_size,
                   pre_norm=bool(getattr(bb, 'pre_norm', False)),
                   num_prefix_tokens=int(getattr(bb, 'num_prefix_tokens', 0)),
                   final_norm=bool(getattr(bb, 'final_norm', False)))

    @classmethod
    def from_config(cls, model_cfg: dict) -> 'DToPCostDims':
        """Build the model on the ``meta`` device (no memory, no init) and read its dims.

        Args:
            model_cfg (dict): a ``DToPEncoderDecoder`` config (``cfg.model``).

        Returns:
            DToPCostDims.
        """
        import copy

        import torch
        from mmseg.registry import MODELS

        import dtop  # noqa: F401  (registers the modules)
        cfg = copy.deepcopy(dict(model_cfg))
        cfg.pop('pretrained', None)
        cfg.pop('init_cfg', None)
        try:
            with _MetaParameters():
                model = MODELS.build(cfg)
        except Exception:  # a constructor that needs real values: build on CPU
            model = MODELS.build(cfg)
        return cls.from_model(model)


def _head_dims(head) -> HeadDims:
    """:class:`HeadDims` of a built stage head (ATM, SETR-naive or Segmenter)."""
    if hasattr(head, 'input_proj') and hasattr(head, 'decoder'):  # ATMPruneHead
        return HeadDims(in_channels=head.input_proj.in_features,
                        channels=head.input_proj.out_features,
                        num_classes=head.q.num_embeddings,
                        num_layers=len(head.decoder.layers),
                        ffn_channels=head.decoder.layers[0].linear1.out_features)
    if hasattr(head, 'up_convs'):  # DToPSETRUPHead
        module = head.up_convs[0][0]
        return HeadDims(in_channels=module.conv.in_channels,
                        channels=module.conv.out_channels,
                        num_classes=head.conv_seg.out_channels, num_layers=1,
                        kind='setr_up', up_scale=int(head.up_scale),
                        with_norm=bool(module.with_norm))
    if hasattr(head, 'dec_proj') and hasattr(head, 'cls_emb'):  # DToPSegmenterMaskHead
        return HeadDims(in_channels=head.dec_proj.in_features,
                        channels=head.dec_proj.out_features,
                        num_classes=int(head.cls_emb.shape[1]),
                        num_layers=len(head.layers),
                        ffn_channels=_ffn_hidden(head.layers[0].ffn),
                        kind='segmenter_mask')
    raise TypeError(f'the cost model does not know the head {type(head).__name__}')


class _MetaParameters:
    """Context that creates tensors on the ``meta`` device (no memory, no init),
    except ``torch.linspace``, whose values mmseg's ViT reads for drop-path rates."""

    def __enter__(self):
        import torch
        from torch.overrides import TorchFunctionMode
        from torch.utils._device import _device_constructors

        constructors = _device_constructors() - {torch.linspace}

        class Mode(TorchFunctionMode):

            def __torch_function__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                if func in constructors and kwargs.get('device') is None:
                    kwargs['device'] = 'meta'
                return func(*args, **kwargs)

        self._mode = Mode()
        self._mode.__enter__()
        return self

    def __exit__(self, *exc):
        return self._mode.__exit__(*exc)


def _ffn_hidden(ffn) -> int:
    for attr in ('feedforward_channels', 'hidden_features'):
        if hasattr(ffn, attr):
            return int(getattr(ffn, attr))
    linears = [m for m in ffn.modules() if m.__class__.__name__ == 'Linear']
    return int(linears[0].out_features)


# --------------------------------------------------------------------- model cost


def dense_flops(dims: DToPCostDims, crop_shape: Optional[Sequence[int]] = None
                ) -> Dict[str, float]:
    """FLOPs of the dense model (nothing pruned) on one crop.

    Args:
        dims (DToPCostDims): model dims.
        crop_shape (tuple, optional): crop ``(H, W)``; default the training crop.

    Returns:
        dict: ``patch_embed``, ``backbone`` (incl. patch embed), ``heads`` (list,
        without upsample), ``upsample``, ``final_head`` (decode head + upsample),
        ``aux_heads``, ``backbone_final_head`` (the README convention) and
        ``backbone_all_heads``.
    """
    N = dims.grid_tokens(crop_shape)
    counts = np.full((1, dims.num_stages), N)
    out = model_flops(dims, counts, crop_shape)
    return {k: (v[0].tolist() if k == 'heads' else float(v[0])) for k, v in out.items()}


def model_flops(dims: DToPCostDims, token_counts, crop_shape: Optional[Sequence[int]] = None,
                grid_tokens: Optional[int] = None,
                heads_run: Optional[Sequence[bool]] = None) -> Dict[str, np.ndarray]:
    """FLOPs of each crop given its active-token counts.

    Args:
        dims (DToPCostDims): model dims.
        token_counts: ``(num_crops, S)`` active tokens processed by each stage's
            layers and head (``dtop_stats['token_counts']``).
        crop_shape (tuple, optional): crop ``(H, W)`` in pixels; default the
            training crop.
        grid_tokens (int, optional): full-grid tokens (default from ``crop_shape``).
        heads_run (Sequence[bool], optional): per stage, whether its head ran
            (a model may skip an auxiliary head whose stage does not prune); a
            skipped auxiliary head costs 0. Default: all ran.

    Returns:
        dict of float64 arrays over crops: ``patch_embed``, ``backbone``, ``heads``
        ``(num_crops, S)``, ``upsample``, ``final_head``, ``aux_heads``,
        ``backbone_final_head`` (pruned cost without the auxiliary heads) and
        ``backbone_all_heads`` (with them).
    """
    counts = _as_float(token_counts)
    counts = np.atleast_2d(counts)
    if counts.shape[1] != dims.num_stages:
        raise ValueError(f'token_counts must be (num_crops, {dims.num_stages}), got '
                         f'{counts.shape}')
    crop_shape = tuple(crop_shape or dims.crop_size)
    N = dims.grid_tokens(crop_shape) if grid_tokens is None else int(grid_tokens)
    if (counts > N).any() or (counts < 0).any():
        raise ValueError(f'token counts must lie in [0, {N}] (the full grid)')
    p = dims.patch_size
    grid_h, grid_w = math.ceil(crop_shape[0] / p), math.ceil(crop_shape[1] / p)
    if grid_h * grid_w != N:  # grid_tokens given explicitly for an odd layout
        grid_h, grid_w = crop_shape[0] / p, crop_shape[1] / p
    num = counts.shape[0]
    P = dims.num_prefix_tokens
    embed = patch_embed_flops(N, dims.embed_dims, p, dims.in_channels)
    if dims.pre_norm:
        embed += 5.0 * (N + P) * dims.embed_dims
    backbone = np.full(num, embed)
    for s, layers in enumerate(dims.stage_layers):
        backbone = backbone + layers * vit_layer_flops(counts[:, s] + P, dims.embed_dims,
                                                       dims.ffn_channels)
    if dims.final_norm:  # on the patch tokens the final head reads
        backbone = backbone + 5.0 * counts[:, -1] * dims.embed_dims
    heads = np.stack([h.flops(counts[:, s]) for s, h in enumerate(dims.heads)], axis=1)
    if heads_run is not None:
        run = np.asarray(heads_run, dtype=bool).reshape(-1)
        if run.shape[0] != dims.num_stages or not run[-1]:
            raise ValueError(f'heads_run needs {dims.num_stages} flags and the final '
                             f'head always runs; got {list(heads_run)}')
        heads = heads * run[None, :]
    # The final map is brought from the (padded) grid to the crop's pixels.
    up = np.full(num, dims.heads[-1].pixel_flops(grid_h, grid_w, crop_shape[0],
                                                 crop_shape[1], p))
    final = heads[:, -1] + up
    aux = heads[:, :-1].sum(axis=1)
    return dict(patch_embed=np.full(num, embed), backbone=backbone, heads=heads,
                upsample=up, final_head=final, aux_heads=aux,
                backbone_final_head=backbone + final,
                backbone_all_heads=backbone + final + aux)


def mmseg_dense_flops(dims: DToPCostDims, crop_shape: Optional[Sequence[int]] = None
                      ) -> Dict[str, object]:
    """FLOPs of mmseg's dense ``EncoderDecoder`` with the same parameters, one crop.

    Backbone as :func:`dense_flops` except that ``final_norm`` also normalises the
    cls token; each head is mmseg's dense ``forward`` (every auxiliary head counted
    as if it ran, as in training); the decode head's output is resized to the crop
    (``predict_by_feat``). Only models whose heads have mmseg counterparts (SETR,
    Segmenter; auxiliary ATM heads are skipped) can be counted.

    Args:
        dims (DToPCostDims): model dims.
        crop_shape (tuple, optional): crop ``(H, W)``; default the training crop.

    Returns:
        dict: ``backbone``, ``heads`` (list; ``None`` for heads without an mmseg
        counterpart), ``upsample``, ``final_head``, ``aux_heads``,
        ``backbone_final_head`` and ``backbone_all_heads``.
    """
    H, W = tuple(crop_shape or dims.crop_size)
    p = dims.patch_size
    gh, gw = math.ceil(H / p), math.ceil(W / p)
    N, P, D = gh * gw, dims.num_prefix_tokens, dims.embed_dims
    backbone = float(patch_embed_flops(N, D, p, dims.in_channels))
    if dims.pre_norm:
        backbone += 5.0 * (N + P) * D
    backbone += sum(dims.stage_layers) * vit_layer_flops(N + P, D, dims.ffn_channels)
    if dims.final_norm:
        backbone += 5.0 * (N + P) * D
    heads = [h.mmseg_flops(gh, gw) if h.kind != 'atm' else None for h in dims.heads]
    if heads[-1] is None:
        raise ValueError('the decode head (ATM) has no mmseg counterpart')
    up = upsample_flops(dims.num_classes, H, W)
    final = heads[-1] + up
    aux = sum(h for h in heads[:-1] if h is not None)
    return dict(backbone=backbone, heads=heads, upsample=up, final_head=final,
                aux_heads=aux, backbone_final_head=backbone + final,
                backbone_all_heads=backbone + final + aux)


def gflops_table(dims: DToPCostDims, crop_shape: Optional[Sequence[int]] = None
                 ) -> List[Tuple[str, float]]:
    """Rows ``(name, GFLOPs)`` of the dense static count, as get_flops prints them."""
    d = dense_flops(dims, crop_shape)
    rows = [('backbone', d['backbone'])]
    S = dims.num_stages
    for s, f in enumerate(d['heads']):
        name = 'decode_head' if s == S - 1 else f'auxiliary_head.{s}'
        rows.append((name + (' (+ upsample)' if s == S - 1 else ''),
                     f + (d['upsample'] if s == S - 1 else 0.)))
    rows.append(('backbone + final head (README convention)', d['backbone_final_head']))
    rows.append(('backbone + all heads', d['backbone_all_heads']))
    return [(k, v / 1e9) for k, v in rows]


# --------------------------------------------------------------------- library counter

#: Ops that carry real FLOPs; if a trace meets one without a handle the count is wrong.
#: (``upsample_bicubic2d``, used to resize the position embedding for a crop other than
#: the training one, is free under fvcore conventions and not listed.)
_COSTLY_OPS = ('conv', 'linear', 'matmul', 'mm', 'bmm', 'einsum', 'attention', 'norm',
               'upsample_bilinear', 'upsample_nearest')
#: Unhandled ops that match :data:`_COSTLY_OPS` by name but are free under fvcore
#: conventions (the L2 normalisation of Segmenter's head is a reduction + division,
#: which fvcore does not count for mmseg's dense model either).
_FREE_OPS = ('aten::linalg_vector_norm', 'aten::norm', 'aten::frobenius_norm')


def _sdpa_flop_jit(inputs, outputs):
    """``aten::scaled_dot_product_attention``: ``QK^T`` plus ``AV`` (fvcore style).

    For query ``(..., L, E)``, key ``(..., S, E)`` and value ``(..., S, Ev)`` this
    is ``prod(...) * L * S * (E + Ev)``; the softmax, scale and mask are free.
    """
    from mmengine.analysis.jit_handles import get_shape
    q, k, v = (get_shape(t) for t in inputs[:3])
    batch = int(np.prod(q[:-2])) if len(q) > 2 else 1
    return batch * q[-2] * k[-2] * (q[-1] + v[-1])


class _HeadScopes:
    """While tracing, route every stage head's ``forward_tokens`` through the
    module's ``__call__`` so that the counter attributes all of the head's ops
    (functional ones included, e.g. ``F.linear`` on its conv weights or the packed
    attention of its layers) to the head's scope."""

    def __init__(self, heads):
        self.heads = list(heads)

    def __enter__(self):
        import torch.nn as nn
        for head in self.heads:
            original = head.forward_tokens
            head.forward = original

            def routed(tokens, segments, _head=head):
                return nn.Module.__call__(_head, tokens, segments)
            head.forward_tokens = routed
        return self

    def __exit__(self, *exc):
        for head in self.heads:
            for name in ('forward', 'forward_tokens'):
                head.__dict__.pop(name, None)
        return False


class _DenseTrace(object):
    """Factory of the traced wrappers (kept lazy so numpy-only users skip torch)."""

    @staticmethod
    def build(model):
        import torch.nn as nn

        class DenseForward(nn.Module):
            """Runs the segmentor's own stage loop and returns every head's output,
            so no head is dead code for the tracer."""

            def __init__(self, segmentor):
                super().__init__()
                self.model = segmentor

            def forward(self, inputs):
                out = self.model.run_stages(inputs, all_heads=True)
                seg = self.model.decode_head.to_pixels(out.final_map, inputs.shape[-2:],
                                                       self.model.backbone.patch_size)
                return (seg, ) + tuple(t for item in out.head_outputs if item is not None
                                       for ho, canvas in [item]
                                       for t in (ho.token_values, ho.image_values, canvas)
                                       if t is not None)

        return DenseForward(model)

    @staticmethod
    def build_mmseg(model):
        """mmseg's dense ``EncoderDecoder``: backbone, every head's ``forward`` and
        the decode head's ``predict_by_feat`` resize."""
        import torch.nn as nn
        from mmseg.models.utils import resize

        class MMSegDenseForward(nn.Module):

            def __init__(self, segmentor):
                super().__init__()
                self.model = segmentor

            def forward(self, inputs):
                feats = self.model.extract_feat(inputs)
                seg = self.model.decode_head(feats)
                seg = resize(seg, size=inputs.shape[-2:], mode='bilinear',
                             align_corners=self.model.align_corners)
                aux = []
                if self.model.with_auxiliary_head:
                    aux = [head(feats) for head in self.model.auxiliary_head]
                return (seg, *aux)

        return MMSegDenseForward(model)


def _run_analyzer(wrapper, inputs, backend: str):
    if backend == 'mmengine':
        from mmengine.analysis import FlopAnalyzer as Analyzer
    elif backend == 'fvcore':
        from fvcore.nn import FlopCountAnalysis as Analyzer
    else:
        raise ValueError(f'backend must be "mmengine" or "fvcore", got {backend!r}')
    import torch
    with torch.enable_grad():  # keep nn.MultiheadAttention off its fused fast path
        analyzer = Analyzer(wrapper, (inputs, ))
        analyzer.set_op_handle('aten::scaled_dot_product_attention', _sdpa_flop_jit)
        analyzer.unsupported_ops_warnings(False)
        analyzer.uncalled_modules_warnings(False)
        total = float(analyzer.total())
        by_module = analyzer.by_module()
        by_operator = analyzer.by_operator()
        unsupported = analyzer.unsupported_ops()
    costly = sorted(op for op in unsupported
                    if op not in _FREE_OPS and any(c in op for c in _COSTLY_OPS))
    if costly:
        raise RuntimeError(f'the FLOP counter met ops it cannot count: {costly}')
    return total, by_module, by_operator


def count_flops_library(model, crop_shape: Optional[Sequence[int]] = None,
                        backend: str = 'mmengine') -> Dict[str, object]:
    """Count the dense model's FLOPs with a library counter, per module.

    The segmentor's stage loop (:meth:`DToPEncoderDecoder.run_stages` with pruning
    disabled) is traced on one random crop, batch 1, with every head's output kept
    alive. Each head's ``forward_tokens`` is counted in the head's scope; the final
    ``to_pixels`` (bilinear resampling) is counted at the segmentor level; the
    backbone is the rest. ``aten::scaled_dot_product_attention`` (unknown to the
    counters) gets a fvcore-style handle. Any other unhandled op that would carry
    FLOPs raises.

    Args:
        model (DToPEncoderDecoder): a built model (weights need not be trained).
        crop_shape (tuple, optional): ``(H, W)``; default the training crop.
        backend (str): ``'mmengine'`` (``mmengine.analysis.FlopAnalyzer``) or
            ``'fvcore'`` (``fvcore.nn.FlopCountAnalysis``).

    Returns:
        dict: ``total`` (everything traced), ``backbone``, ``heads`` (list),
        ``upsample``, ``final_head``, ``aux_heads``, ``backbone_final_head``,
        ``backbone_all_heads`` and ``by_operator`` (Counter).
    """
    import torch
    model = getattr(model, 'module', model)
    dims = DToPCostDims.from_model(model)
    H, W = crop_shape or dims.crop_size
    param = next(model.parameters())
    inputs = torch.randn(1, dims.in_channels, H, W, device=param.device, dtype=param.dtype)
    saved_threshold, was_training = model.prune_threshold, model.training
    model.prune_threshold = [None] * len(saved_threshold)
    model.eval()
    try:
        with _HeadScopes(model.stage_heads):
            total, by_module, by_operator = _run_analyzer(_DenseTrace.build(model),
                                                          inputs, backend)
    finally:
        model.prune_threshold = saved_threshold
        model.train(was_training)
    S = dims.num_stages
    names = [f'model.auxiliary_head.{s}' for s in range(S - 1)] + ['model.decode_head']
    heads = [float(by_module[n]) for n in names]
    up = float(by_operator.get('upsample_bilinear2d', 0))
    backbone = total - sum(heads) - up
    final = heads[-1] + up
    aux = sum(heads[:-1])
    return dict(total=total, backbone=backbone, heads=heads, upsample=up,
                final_head=final, aux_heads=aux, backbone_final_head=backbone + final,
                backbone_all_heads=backbone + final + aux, by_operator=by_operator)


def count_flops_mmseg(model, crop_shape: Sequence[int],
                      backend: str = 'mmengine') -> Dict[str, object]:
    """Count mmseg's dense ``EncoderDecoder`` (e.g. built from
    :func:`dtop.models.mmseg_dense.mmseg_dense_model_cfg`) the same way.

    Every auxiliary head's ``forward`` is counted (as in training); the decode head
    is ``forward`` + ``predict_by_feat``'s resize to the crop.

    Args:
        model (EncoderDecoder): mmseg's model.
        crop_shape (tuple): ``(H, W)``.
        backend (str): ``'mmengine'`` or ``'fvcore'``.

    Returns:
        dict: as :func:`count_flops_library` (``heads`` lists the auxiliary heads
        the mmseg model has, then the decode head).
    """
    import torch
    model = getattr(model, 'module', model)
    H, W = crop_shape
    param = next(model.parameters())
    inputs = torch.randn(1, 3, H, W, device=param.device, dtype=param.dtype)
    was_training = model.training
    model.eval()
    try:
        total, by_module, by_operator = _run_analyzer(_DenseTrace.build_mmseg(model),
                                                      inputs, backend)
    finally:
        model.train(was_training)
    num_aux = len(model.auxiliary_head) if model.with_auxiliary_head else 0
    names = [f'model.auxiliary_head.{s}' for s in range(num_aux)] + ['model.decode_head']
    heads = [float(by_module[n]) for n in names]
    # Upsampling inside a head (SETR's x4) is the head's; the final resize is the
    # only op outside the backbone and the heads.
    backbone = float(by_module['model.backbone'])
    up = total - backbone - sum(heads)
    final = heads[-1] + up
    aux = sum(heads[:-1])
    return dict(total=total, backbone=backbone, heads=heads, upsample=up,
                final_head=final, aux_heads=aux, backbone_final_head=backbone + final,
                backbone_all_heads=backbone + final + aux, by_operator=by_operator)
