"""FLOP formulas and :class:`HeadCost`, the cost a stage head declares (``head.cost()``).

Counting conventions (fvcore's, which reproduce the README BASE numbers):

* one multiply-add = one FLOP;
* LayerNorm = ``5 * numel``; bilinear resize = ``4 * output numel``;
* elementwise ops, softmax, GELU/ReLU, sorting and gathers are free.

Per-layer costs for ``n`` active tokens (``D`` width, ``F`` FFN width):

* ViT layer: ``4 n D^2 + 2 n D F + 2 n^2 D + 10 n D`` (= ``12 n D^2 + 2 n^2 D +
  10 n D`` for ``F = 4D``), :func:`vit_layer_flops`; with a SwiGLU FFN (DINOv2-g)
  the FFN costs ``3 n D F`` instead of ``2 n D F`` (:func:`ffn_flops`); layer scale
  is elementwise, hence free;
* LayerNorm on ``n`` tokens of ``D`` channels: ``5 n D``, :func:`layer_norm_flops`;
* patch embedding: ``N * D * C_in * p^2`` for the ``N`` tokens of the full grid,
  :func:`patch_embed_flops`;
* bilinear resize of ``C`` maps to ``H x W``: ``4 C H W``, :func:`upsample_flops`.

A stage head's cost (:class:`HeadCost`) is a polynomial in the ``n`` active tokens
of one image (optionally also counting the backbone's prefix tokens, plus a term
in the tokens of the full grid), plus the resize steps that turn the final head's
``(Q, h, w)`` map into a crop, plus optionally what it costs more once tokens have
exited and the cost of mmseg's dense head it stands for. The
head computes it from its own modules (``cost()``, part of the stage-head contract
in :mod:`dtop.models.decode_heads.stage_head`); the cost model
(:mod:`dtop.evaluation.flops`) only sums what the heads declare.

Pure Python/numpy: no torch import, so the dims can be read anywhere.
"""
from dataclasses import asdict, dataclass
from typing import Mapping, NamedTuple, Optional, Tuple, Union

import numpy as np

from .dinov2_layers import FFN_TYPES

ArrayLike = Union[int, float, np.ndarray]

#: :attr:`ResizeStep.to` target: the pixels the token grid covers (each side times
#: the patch size; a corner-padded grid covers more than the crop, the rest is cut).
PATCH = 'patch'
#: :attr:`ResizeStep.to` target: the crop ``(H, W)`` itself.
CROP = 'crop'


def as_float(n) -> ArrayLike:
    """A number, or a float64 array for arrays and tensors of counts."""
    if hasattr(n, 'detach'):  # a torch tensor
        n = n.detach().cpu().numpy()
    return float(n) if isinstance(n, (int, float)) else np.asarray(n, dtype=np.float64)


# --------------------------------------------------------------------- per layer


def ffn_flops(embed_dims: int, ffn_channels: int, ffn_type: str = 'mlp') -> int:
    """FFN FLOPs per token: ``2 D F`` (``fc1`` + ``fc2``) or, for SwiGLU, ``3 D F``
    (``fc1`` to ``2 F`` for the gate and the value, ``fc2`` back to ``D``)."""
    if ffn_type not in FFN_TYPES:
        raise ValueError(f'ffn_type must be one of {FFN_TYPES}, got {ffn_type!r}')
    return (3 if ffn_type == 'swiglu' else 2) * embed_dims * ffn_channels


def vit_layer_coeffs(embed_dims: int, ffn_channels: Optional[int] = None,
                     extra_tokens: int = 0, ffn_type: str = 'mlp') -> Tuple[int, int, int]:
    """One pre-norm ViT layer on ``n + extra_tokens`` tokens as a polynomial in ``n``.

    Args:
        embed_dims (int): ``D``.
        ffn_channels (int, optional): FFN hidden width ``F`` (default ``4 D``).
        extra_tokens (int): tokens in the sequence besides the ``n`` counted ones
            (e.g. Segmenter's ``Q`` class embeddings).
        ffn_type (str): ``'mlp'`` or ``'swiglu'`` (:func:`ffn_flops`).

    Returns:
        tuple: ``(per_image, per_token, per_token_sq)`` with the FLOPs
        ``per_image + per_token * n + per_token_sq * n**2``.
    """
    D, e = embed_dims, extra_tokens
    F = 4 * D if ffn_channels is None else ffn_channels
    linear = 4 * D * D + ffn_flops(D, F, ffn_type) + 10 * D  # qkv + proj, FFN, two LNs
    # attention 2 m^2 D on m = n + e tokens
    return linear * e + 2 * D * e * e, linear + 4 * D * e, 2 * D


def vit_layer_flops(n: ArrayLike, embed_dims: int, ffn_channels: Optional[int] = None,
                    ffn_type: str = 'mlp') -> ArrayLike:
    """FLOPs of one pre-norm ViT encoder layer on ``n`` tokens.

    Args:
        n: active tokens (number or array).
        embed_dims (int): ``D``.
        ffn_channels (int, optional): FFN hidden width ``F`` (default ``4 D``).
        ffn_type (str): ``'mlp'`` or ``'swiglu'`` (``3nDF`` instead of ``2nDF``).

    Returns:
        FLOPs, same shape as ``n``: qkv + output projection ``4nD^2``, MLP
        ``2nDF``, ``QK^T`` and ``AV`` ``2n^2D``, two LayerNorms ``10nD``.
    """
    _, per_token, per_token_sq = vit_layer_coeffs(embed_dims, ffn_channels,
                                                  ffn_type=ffn_type)
    n = as_float(n)
    return per_token * n + per_token_sq * n * n


def layer_norm_flops(n: ArrayLike, channels: int) -> ArrayLike:
    """LayerNorm of ``n`` tokens of ``channels`` channels: ``5 n C``."""
    return 5 * n * channels


def upsample_flops(num_classes: int, height, width) -> float:
    """Bilinear resize of ``num_classes`` maps to ``height x width`` (``4 * output numel``)."""
    return 4.0 * num_classes * height * width


def patch_embed_flops(num_tokens: ArrayLike, embed_dims: int, patch_size: int,
                      in_channels: int = 3) -> ArrayLike:
    """Patch-embedding convolution: ``N * D * C_in * p^2``."""
    return as_float(num_tokens) * embed_dims * in_channels * patch_size * patch_size


# --------------------------------------------------------------------- head cost


class ResizeStep(NamedTuple):
    """One bilinear resize on the way from the token grid to pixels.

    A step with ``channels=0`` resizes nothing and only counts ``per_pixel`` work at
    that size (e.g. a nearest-neighbour resize, 1 FLOP per output pixel).

    Attributes:
        channels (int): maps resized (``4`` FLOPs per channel and output pixel).
        to (float | str): the output size: a factor (each side becomes
            ``int(side * to)``), :data:`PATCH` (each side times the patch size) or
            :data:`CROP` (the crop ``(H, W)``).
        per_pixel (float): FLOPs per output pixel spent after the resize (e.g.
            mmseg SETR's ``conv_seg`` on the upsampled map: ``c * Q``). Default 0.
    """
    channels: int
    to: Union[float, str]
    per_pixel: float = 0


@dataclass(frozen=True)
class HeadCost:
    """The FLOPs of one stage head, as the head declares them (``head.cost()``).

    The token side — what :meth:`forward_tokens` costs on the ``n`` active tokens of
    one image — is ``per_image + per_token * n + per_token_sq * n**2`` (linear for
    token-wise heads; quadratic when the head attends over the tokens, e.g.
    Segmenter's layers on ``n + Q`` tokens). The pixel side — what ``to_pixels``
    costs to bring the final head's ``(Q, h, w)`` map to an ``H x W`` crop — is a
    chain of :class:`ResizeStep`. Everything is plain data, so
    :class:`~dtop.evaluation.flops.DToPCostDims` serialises it (``to_dict``).

    Heads that read the token grid (EoMT) add three things: ``with_prefix_tokens``
    (the polynomial's ``n`` also counts the backbone's prefix tokens — cls,
    registers — which the head processes but does not know the number of; the cost
    model adds them), ``per_grid_token`` (work on every cell of the full grid
    inside ``forward_tokens``, e.g. convolutions on the grid, whatever the number of
    active tokens) and ``if_exited`` (what the head costs more once some tokens
    exited before it: both its token side, at the same ``n``, and its pixel steps).

    Attributes:
        num_classes (int): ``Q``, the maps the head outputs.
        per_image (float): FLOPs independent of the tokens (e.g. query-side work).
        per_token (float): FLOPs per active token.
        per_token_sq (float): FLOPs per squared active-token count.
        pixel_steps (tuple[ResizeStep]): ``to_pixels`` as resize steps from the grid.
        mmseg (HeadCost, optional): mmseg's dense head this one stands for: the
            polynomial of its ``forward`` on the full grid, and as ``pixel_steps``
            the resizes *inside* that ``forward`` (the segmentor's final resize to
            the crop is not included). ``None``: no mmseg counterpart.
        name (str): the head class that declared it (informational only).
        note (str): how the head's computation differs from its mmseg counterpart
            (printed by ``get_flops.py``), or ``''``.
        with_prefix_tokens (bool): the polynomial is in ``n + P``, ``P`` the
            backbone's prefix tokens (:meth:`flops` ``prefix_tokens``).
        per_grid_token (float): FLOPs per token of the full grid (``h * w``,
            exited tokens included).
        if_exited (HeadCost, optional): added when fewer than the grid's tokens
            reach the head (``n < h * w``): its :meth:`flops` to the token side,
            its :attr:`pixel_steps` to the pixel side.
    """
    num_classes: int
    per_image: float = 0
    per_token: float = 0
    per_token_sq: float = 0
    pixel_steps: Tuple[ResizeStep, ...] = ()
    mmseg: Optional['HeadCost'] = None
    name: str = ''
    note: str = ''
    with_prefix_tokens: bool = False
    per_grid_token: float = 0
    if_exited: Optional['HeadCost'] = None

    def __post_init__(self):
        steps = tuple(ResizeStep(**s) if isinstance(s, Mapping) else ResizeStep(*s)
                      for s in self.pixel_steps)
        object.__setattr__(self, 'pixel_steps', steps)
        for key in ('mmseg', 'if_exited'):
            if isinstance(getattr(self, key), Mapping):
                object.__setattr__(self, key, HeadCost(**getattr(self, key)))
        for step in steps:
            if step.to not in (PATCH, CROP) and (isinstance(step.to, str)
                                                 or not float(step.to) > 0):
                raise ValueError(f'pixel step {tuple(step)} of {self.name or "a head"}: '
                                 f'`to` must be a factor > 0, {PATCH!r} or {CROP!r}')

    def flops(self, n: ArrayLike, grid_tokens: Optional[ArrayLike] = None,
              prefix_tokens: int = 0) -> ArrayLike:
        """Token-side FLOPs on ``n`` active tokens of one image (number or array).

        Args:
            n: active patch tokens the head reads.
            grid_tokens: tokens of the full grid (default ``n``: nothing exited);
                only heads with :attr:`per_grid_token` / :attr:`if_exited` read it.
            prefix_tokens (int): the backbone's prefix tokens; only heads
                :attr:`with_prefix_tokens` read it.
        """
        n = as_float(n)
        m = n + prefix_tokens if self.with_prefix_tokens else n
        out = self.per_image + self.per_token * m + self.per_token_sq * m * m
        if self.per_grid_token or self.if_exited is not None:
            grid = n if grid_tokens is None else as_float(grid_tokens)
            out = out + self.per_grid_token * grid
            if self.if_exited is not None:
                extra = self.if_exited.flops(n, grid, prefix_tokens)
                out = out + np.where(np.asarray(n) < grid, extra, 0.)
                out = float(out) if np.ndim(out) == 0 else out
        return out

    def pixel_flops(self, grid_h: float, grid_w: float, height: int, width: int,
                    patch_size: int, exited: bool = False) -> float:
        """FLOPs of the :attr:`pixel_steps` from a ``grid_h x grid_w`` map to a
        ``height x width`` crop with patches of ``patch_size`` pixels (plus those of
        :attr:`if_exited` when ``exited``: some tokens exited before the head)."""
        h, w, total = grid_h, grid_w, 0.
        if exited and self.if_exited is not None:
            total = self.if_exited.pixel_flops(grid_h, grid_w, height, width, patch_size)
        for channels, to, per_pixel in self.pixel_steps:
            if to == PATCH:
                h, w = h * patch_size, w * patch_size
            elif to == CROP:
                h, w = height, width
            else:
                h, w = int(h * float(to)), int(w * float(to))
            total += upsample_flops(channels, h, w) + per_pixel * h * w
        return total

    def to_dict(self) -> dict:
        """Plain-python form; ``HeadCost(**d)`` inverts it (lists are accepted)."""
        return asdict(self)
