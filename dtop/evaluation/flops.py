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


@dataclass(frozen=True)
class HeadDims:
    """Dimensions of one prune head.

    Attributes:
        in_channels (int): ``D_in``.
        channels (int): ``d``.
        num_classes (int): ``Q``.
        num_layers (int): decoder layers.
        ffn_channels (int): decoder FFN width.
    """
    in_channels: int
    channels: int
    num_classes: int
    num_layers: int = 3
    ffn_channels: Optional[int] = None

    def flops(self, n: ArrayLike) -> ArrayLike:
        return prune_head_flops(n, self.in_channels, self.channels, self.num_classes,
                                self.num_layers, self.ffn_channels)


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
    """
    embed_dims: int
    ffn_channels: int
    stage_layers: Tuple[int, ...]
    heads: Tuple[HeadDims, ...]
    patch_size: int = 16
    in_channels: int = 3
    crop_size: Tuple[int, int] = (512, 512)
    pre_norm: bool = False

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
        heads = []
        for head in model.stage_heads:
            heads.append(HeadDims(
                in_channels=head.input_proj.in_features,
                channels=head.input_proj.out_features,
                num_classes=head.q.num_embeddings,
                num_layers=len(head.decoder.layers),
                ffn_channels=head.decoder.layers[0].linear1.out_features))
        crop = getattr(model, 'test_cfg', None) or {}
        crop = crop.get('crop_size', None) if hasattr(crop, 'get') else None
        img_size = tuple(bb.img_size) if crop is None else tuple(crop)
        return cls(embed_dims=D, ffn_channels=ffn,
                   stage_layers=tuple(e - s for s, e in bb.stage_ranges),
                   heads=tuple(heads), patch_size=conv.kernel_size[0],
                   in_channels=conv.in_channels, crop_size=img_size,
                   pre_norm=bool(getattr(bb, 'pre_norm', False)))

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
    embed = patch_embed_flops(N, dims.embed_dims, p, dims.in_channels)
    if dims.pre_norm:
        embed += 5.0 * N * dims.embed_dims
    backbone = np.full(num, embed)
    for s, layers in enumerate(dims.stage_layers):
        backbone = backbone + layers * vit_layer_flops(counts[:, s], dims.embed_dims,
                                                       dims.ffn_channels)
    heads = np.stack([h.flops(counts[:, s]) for s, h in enumerate(dims.heads)], axis=1)
    if heads_run is not None:
        run = np.asarray(heads_run, dtype=bool).reshape(-1)
        if run.shape[0] != dims.num_stages or not run[-1]:
            raise ValueError(f'heads_run needs {dims.num_stages} flags and the final '
                             f'head always runs; got {list(heads_run)}')
        heads = heads * run[None, :]
    # The final map is upsampled from the (padded) grid to grid * patch pixels.
    up = np.full(num, upsample_flops(dims.num_classes, grid_h * p, grid_w * p))
    final = heads[:, -1] + up
    aux = heads[:, :-1].sum(axis=1)
    return dict(patch_embed=np.full(num, embed), backbone=backbone, heads=heads,
                upsample=up, final_head=final, aux_heads=aux,
                backbone_final_head=backbone + final,
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


def _sdpa_flop_jit(inputs, outputs):
    """``aten::scaled_dot_product_attention``: ``QK^T`` plus ``AV`` (fvcore style).

    For query ``(..., L, E)``, key ``(..., S, E)`` and value ``(..., S, Ev)`` this
    is ``prod(...) * L * S * (E + Ev)``; the softmax, scale and mask are free.
    """
    from mmengine.analysis.jit_handles import get_shape
    q, k, v = (get_shape(t) for t in inputs[:3])
    batch = int(np.prod(q[:-2])) if len(q) > 2 else 1
    return batch * q[-2] * k[-2] * (q[-1] + v[-1])


class _DenseTrace(object):
    """Factory of the traced wrapper (kept lazy so numpy-only users skip torch)."""

    @staticmethod
    def build(model):
        import torch.nn as nn

        from ..models.utils import grid_to_pixels

        class DenseForward(nn.Module):
            """Runs the segmentor's own stage loop and returns every head's output,
            so no head is dead code for the tracer."""

            def __init__(self, segmentor):
                super().__init__()
                self.model = segmentor

            def forward(self, inputs):
                out = self.model.run_stages(inputs, all_heads=True)
                probs = grid_to_pixels(out.final_probs(), inputs.shape[-2:],
                                       self.model.backbone.patch_size,
                                       self.model.align_corners)
                return (probs, ) + tuple(t for ho in out.head_outputs for t in ho)

        return DenseForward(model)


def count_flops_library(model, crop_shape: Optional[Sequence[int]] = None,
                        backend: str = 'mmengine') -> Dict[str, object]:
    """Count the dense model's FLOPs with a library counter, per module.

    The segmentor's stage loop (:meth:`DToPEncoderDecoder.run_stages` with pruning
    disabled) is traced on one random crop, batch 1, with every head's output kept
    alive. Heads are module calls, so their counts come from their scopes; the final
    bilinear upsample is the only counted op at the segmentor level; the backbone is
    the rest. ``aten::scaled_dot_product_attention`` (unknown to the counters) gets a
    fvcore-style handle. Any other unhandled op that would carry FLOPs raises.

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
    if backend == 'mmengine':
        from mmengine.analysis import FlopAnalyzer as Analyzer
    elif backend == 'fvcore':
        from fvcore.nn import FlopCountAnalysis as Analyzer
    else:
        raise ValueError(f'backend must be "mmengine" or "fvcore", got {backend!r}')
    dims = DToPCostDims.from_model(model)
    H, W = crop_shape or dims.crop_size
    param = next(model.parameters())
    inputs = torch.randn(1, dims.in_channels, H, W, device=param.device, dtype=param.dtype)
    saved_threshold, was_training = model.prune_threshold, model.training
    model.prune_threshold = [None] * len(saved_threshold)
    model.eval()
    try:
        with torch.enable_grad():  # keep nn.MultiheadAttention off its fused fast path
            analyzer = Analyzer(_DenseTrace.build(model), (inputs, ))
            analyzer.set_op_handle('aten::scaled_dot_product_attention', _sdpa_flop_jit)
            analyzer.unsupported_ops_warnings(False)
            analyzer.uncalled_modules_warnings(False)
            total = float(analyzer.total())
            by_module = analyzer.by_module()
            by_operator = analyzer.by_operator()
            unsupported = analyzer.unsupported_ops()
    finally:
        model.prune_threshold = saved_threshold
        model.train(was_training)
    costly = sorted(op for op in unsupported if any(c in op for c in _COSTLY_OPS))
    if costly:
        raise RuntimeError(f'the FLOP counter met ops it cannot count: {costly}')
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
