"""The analytic FLOP model of a DToP model (docs/benchmarks.md).

Conventions and per-layer formulas: :mod:`dtop.models.cost`. The model is
:class:`DToPCostDims`: the backbone's dims, read from the built model, and one
:class:`~dtop.models.cost.HeadCost` per stage, which each head declares itself
(``head.cost()``, the stage-head contract). Per crop:

* backbone: patch embedding of the full grid (+ ``pre_norm`` on it), then the
  layers of stage ``s`` on the ``n_s`` active tokens plus the prefix tokens (a cls
  token — and DINOv2's registers — is one more token in every layer and never
  exits); ``final_norm`` costs ``5 n D`` on the patch tokens the final head reads;
  a SwiGLU FFN costs ``3 D F`` per token instead of ``2 D F``;
* head ``s``: its polynomial at ``n_s`` (at ``n_s + P`` for heads that also
  process the ``P`` prefix tokens, plus its work on the full grid and, when tokens
  exited before it, its ``if_exited`` extra); the final head adds its pixel steps
  from the (padded) token grid to the crop.

A pruned model sums these with the active counts of each stage; head ``s`` is
evaluated at ``token_counts[:, s]`` — the auxiliary heads at the count *before*
their own pruning, the final head at the count left after the last pruning —
which is exactly what :class:`DToPEncoderDecoder` reports as ``active_counts`` /
``dtop_stats['token_counts']``.

:func:`mmseg_dense_flops` gives the same for mmseg's dense ``EncoderDecoder`` with
the same parameters, from the ``mmseg`` counterpart each head declares. It differs
from our dense count only where the computation differs (e.g. mmseg's SETR head
runs ``conv_seg`` after its ``x u`` upsample; mmseg's ``final_norm`` also
normalises the cls token, ``5 D``).

Everything here works on plain numbers, numpy arrays or tensors of counts.
"""
import copy
import math
from dataclasses import asdict, dataclass, fields
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from dtop.models.cost import (HeadCost, as_float, layer_norm_flops, patch_embed_flops,
                              upsample_flops, vit_layer_flops)

_HEAD_COST_FIELDS = frozenset(f.name for f in fields(HeadCost))


@dataclass(frozen=True)
class DToPCostDims:
    """Everything the analytic cost model needs to know about a DToP model.

    Attributes:
        embed_dims (int): backbone width ``D``.
        ffn_channels (int): backbone FFN width ``F``.
        stage_layers (tuple[int]): backbone layers per stage (e.g. ``(6, 2, 4)``).
        heads (tuple[HeadCost]): one per stage (auxiliary heads, then the decode
            head), as the heads declare them.
        patch_size (int): pixels per token side.
        in_channels (int): image channels.
        crop_size (tuple[int, int]): training crop ``(H, W)``, the static-count input.
        pre_norm (bool): whether a LayerNorm runs after the position embedding.
        num_prefix_tokens (int): tokens in every backbone layer besides the patch
            tokens, never pruned (1 with a cls token).
        final_norm (bool): a LayerNorm on the tokens the final head reads.
        ffn_type (str): backbone FFN, ``'mlp'`` or ``'swiglu'`` (DINOv2-g).
    """
    embed_dims: int
    ffn_channels: int
    stage_layers: Tuple[int, ...]
    heads: Tuple[HeadCost, ...]
    patch_size: int = 16
    in_channels: int = 3
    crop_size: Tuple[int, int] = (512, 512)
    pre_norm: bool = False
    num_prefix_tokens: int = 0
    final_norm: bool = False
    ffn_type: str = 'mlp'

    def __post_init__(self):
        if len(self.stage_layers) != len(self.heads):
            raise ValueError(f'{len(self.stage_layers)} stages but {len(self.heads)} heads')
        bad = [type(h).__name__ for h in self.heads if not isinstance(h, HeadCost)]
        if bad:
            raise TypeError(f'heads must be HeadCost (head.cost()), got {bad}')

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
        d['heads'] = tuple(_head_cost(h) for h in d['heads'])
        d['stage_layers'] = tuple(d['stage_layers'])
        d['crop_size'] = tuple(d['crop_size'])
        return cls(**d)

    @classmethod
    def from_model(cls, model) -> 'DToPCostDims':
        """Read the dims of a built :class:`DToPEncoderDecoder` (any device, incl. meta):
        the backbone's from its modules, each head's from its ``cost()``.

        Backbones: :class:`DToPVisionTransformer` (mmseg layers ``ln1`` / ``ffn``,
        ``patch_embed.projection``) and :class:`DToPDinov2` (``norm1`` / ``mlp``,
        ``patch_embed.proj``, cls + register prefix tokens).

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
        norm = layer0.ln1 if hasattr(layer0, 'ln1') else layer0.norm1
        ffn = layer0.ffn if hasattr(layer0, 'ffn') else layer0.mlp
        pe = bb.patch_embed
        conv = pe.projection if hasattr(pe, 'projection') else pe.proj
        if conv.kernel_size[0] != conv.kernel_size[1] or conv.stride != conv.kernel_size:
            raise ValueError('the cost model assumes a square, non-overlapping patch conv')
        crop = getattr(model, 'test_cfg', None) or {}
        crop = crop.get('crop_size', None) if hasattr(crop, 'get') else None
        img_size = tuple(bb.img_size) if crop is None else tuple(crop)
        return cls(embed_dims=norm.normalized_shape[0],
                   ffn_channels=_ffn_hidden(ffn),
                   stage_layers=tuple(e - s for s, e in bb.stage_ranges),
                   heads=tuple(head.cost() for head in model.stage_heads),
                   patch_size=conv.kernel_size[0], in_channels=conv.in_channels,
                   crop_size=img_size, pre_norm=bool(getattr(bb, 'pre_norm', False)),
                   num_prefix_tokens=int(getattr(bb, 'num_prefix_tokens', 0)),
                   final_norm=bool(getattr(bb, 'final_norm', False)),
                   ffn_type=str(getattr(ffn, 'ffn_type', 'mlp')))

    @classmethod
    def from_config(cls, model_cfg: dict) -> 'DToPCostDims':
        """Build the model on the ``meta`` device (no memory, no init) and read its dims.

        Args:
            model_cfg (dict): a ``DToPEncoderDecoder`` config (``cfg.model``).

        Returns:
            DToPCostDims.
        """
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


def _head_cost(h) -> HeadCost:
    """A :class:`HeadCost` or its ``to_dict()`` form."""
    if isinstance(h, HeadCost):
        return h
    unknown = set(h) - _HEAD_COST_FIELDS
    if unknown:
        raise ValueError(f'not a HeadCost dict (unknown keys {sorted(unknown)}): dims '
                         'saved by an older dtop; read them again from the model or '
                         'its config (DToPCostDims.from_model / from_config)')
    return HeadCost(**h)


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
    """Hidden width of a backbone FFN (mmcv ``FFN`` or a timm-style ``Mlp``)."""
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
    counts = np.atleast_2d(as_float(token_counts))
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
    P, D = dims.num_prefix_tokens, dims.embed_dims
    embed = patch_embed_flops(N, D, p, dims.in_channels)
    if dims.pre_norm:
        embed += layer_norm_flops(N + P, float(D))
    backbone = np.full(num, embed)
    for s, layers in enumerate(dims.stage_layers):
        backbone = backbone + layers * vit_layer_flops(counts[:, s] + P, D, dims.ffn_channels,
                                                       dims.ffn_type)
    if dims.final_norm:  # on the patch tokens the final head reads
        backbone = backbone + layer_norm_flops(counts[:, -1], float(D))
    heads = np.stack([h.flops(counts[:, s], N, P) for s, h in enumerate(dims.heads)], axis=1)
    if heads_run is not None:
        run = np.asarray(heads_run, dtype=bool).reshape(-1)
        if run.shape[0] != dims.num_stages or not run[-1]:
            raise ValueError(f'heads_run needs {dims.num_stages} flags and the final '
                             f'head always runs; got {list(heads_run)}')
        heads = heads * run[None, :]
    # The final map is brought from the (padded) grid to the crop's pixels.
    last = dims.heads[-1]
    up = np.full(num, last.pixel_flops(grid_h, grid_w, crop_shape[0], crop_shape[1], p))
    if last.if_exited is not None:  # e.g. EoMT's final map mixes in the exit heads'
        more = last.pixel_flops(grid_h, grid_w, crop_shape[0], crop_shape[1], p, True)
        up = np.where(counts[:, -1] < N, more, up)
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
    cls token; each head is the ``mmseg`` counterpart it declares, on the full
    grid (every auxiliary head counted as if it ran, as in training); the decode
    head's output is resized to the crop (``predict_by_feat``). Only models whose
    decode head has an mmseg counterpart can be counted; auxiliary heads without
    one are skipped.

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
        backbone += layer_norm_flops(N + P, float(D))
    backbone += sum(dims.stage_layers) * vit_layer_flops(N + P, D, dims.ffn_channels,
                                                         dims.ffn_type)
    if dims.final_norm:
        backbone += layer_norm_flops(N + P, float(D))
    heads = [None if h.mmseg is None else
             h.mmseg.flops(N) + h.mmseg.pixel_flops(gh, gw, H, W, p) for h in dims.heads]
    if heads[-1] is None:
        raise ValueError(f'the decode head ({dims.heads[-1].name or "?"}) has no mmseg '
                         'counterpart')
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
