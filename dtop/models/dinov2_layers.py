"""DINOv2 transformer blocks (layer scale, optional SwiGLU FFN), dense and packed.

One :class:`Dinov2Block` serves the DINOv2 backbone (:mod:`.backbones.dinov2`) and
the query blocks of the EoMT head (:mod:`.decode_heads.eomt_head`). Parameter names
follow timm's ``Block`` (``norm1``, ``attn.qkv``, ``attn.proj``, ``ls1.gamma``,
``norm2``, ``mlp.fc1``, ``mlp.fc2``, ``ls2.gamma``); the converters map
``transformers``' DINOv2 / EoMT names onto them.

* :meth:`Dinov2Block.forward` — ``(B, L, C)`` tokens, optional attention mask
  (EoMT's masked attention in training);
* :meth:`Dinov2Block.forward_packed` — ``(T, C)`` packed tokens of ragged images
  (:mod:`dtop.models.packing`), attention within each image.
"""
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .packing import Segments, drop_path_packed, packed_attention

FFN_TYPES = ('mlp', 'swiglu')


def swiglu_hidden(dim: int, mlp_ratio: float) -> int:
    """DINOv2's SwiGLU width: 2/3 of ``dim * mlp_ratio``, rounded up to a multiple of 8."""
    return (int(int(dim * mlp_ratio) * 2 / 3) + 7) // 8 * 8


class LayerScale(nn.Module):
    """``x * gamma`` with a learned per-channel ``gamma``."""

    def __init__(self, dim: int, init_value: float = 1.0) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_value)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class Mlp(nn.Module):
    """``fc2(act(fc1(x)))`` (GELU) or SwiGLU ``fc2(silu(a) * b)``, ``a, b = fc1(x)``."""

    def __init__(self, dim: int, mlp_ratio: float = 4.0, ffn_type: str = 'mlp') -> None:
        super().__init__()
        if ffn_type not in FFN_TYPES:
            raise ValueError(f'ffn_type must be one of {FFN_TYPES}, got {ffn_type!r}')
        self.ffn_type = ffn_type
        if ffn_type == 'swiglu':
            hidden = swiglu_hidden(dim, mlp_ratio)
            self.fc1 = nn.Linear(dim, 2 * hidden)
        else:
            hidden = int(dim * mlp_ratio)
            self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    @property
    def hidden_features(self) -> int:
        return self.fc2.in_features

    def forward(self, x: Tensor) -> Tensor:
        x = self.fc1(x)
        if self.ffn_type == 'swiglu':
            a, b = x.chunk(2, dim=-1)
            x = F.silu(a) * b
        else:
            x = F.gelu(x)
        return self.fc2(x)


class Attention(nn.Module):
    """Multi-head self-attention with a fused ``qkv`` projection."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True,
                 attn_drop: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f'dim {dim} is not divisible by num_heads {num_heads}')
        self.num_heads = num_heads
        self.attn_drop = attn_drop
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, attn_mask: Optional[Tensor] = None) -> Tensor:
        """``(B, L, C)`` → ``(B, L, C)``; ``attn_mask`` as SDPA's (bool: True attends,
        or additive float), broadcastable to ``(B, heads, L, L)``."""
        B, L, C = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.num_heads, C // self.num_heads) \
            .permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask,
            dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj(out.transpose(1, 2).reshape(B, L, C))

    def forward_packed(self, x: Tensor, segments: Segments, backend: str = 'auto') -> Tensor:
        """``(T, C)`` packed tokens → ``(T, C)``, attention within each image."""
        T, C = x.shape
        q, k, v = self.qkv(x).view(T, 3, self.num_heads, C // self.num_heads).unbind(1)
        out = packed_attention(q, k, v, segments,
                               dropout_p=self.attn_drop if self.training else 0.0,
                               backend=backend)
        return self.proj(out.reshape(T, C))


def _drop_path_dense(x: Tensor, p: float, training: bool) -> Tensor:
    if p == 0.0 or not training:
        return x
    keep = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(1 - p)
    return x * keep / (1 - p)


class Dinov2Block(nn.Module):
    """Pre-norm ViT block with layer scale: ``x + ls1(attn(norm1(x)))``, then
    ``x + ls2(mlp(norm2(x)))`` (DINOv2, EoMT).

    Args:
        dim (int): token width.
        num_heads (int): attention heads.
        mlp_ratio (float): FFN width ratio. Default 4.
        ffn_type (str): ``'mlp'`` (GELU) or ``'swiglu'`` (DINOv2-g).
        layer_scale_init (float, optional): initial ``gamma``; ``None`` = no layer
            scale (a plain ViT block).
        qkv_bias (bool): bias of the ``qkv`` projection.
        eps (float): LayerNorm epsilon (DINOv2: 1e-6).
        drop_path (float): stochastic-depth rate (per image).
        attn_drop (float): attention dropout.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0,
                 ffn_type: str = 'mlp', layer_scale_init: Optional[float] = 1.0,
                 qkv_bias: bool = True, eps: float = 1e-6, drop_path: float = 0.0,
                 attn_drop: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads, qkv_bias, attn_drop)
        self.ls1 = LayerScale(dim, layer_scale_init) if layer_scale_init is not None \
            else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, mlp_ratio, ffn_type)
        self.ls2 = LayerScale(dim, layer_scale_init) if layer_scale_init is not None \
            else nn.Identity()
        self.drop_path = float(drop_path)

    def forward(self, x: Tensor, attn_mask: Optional[Tensor] = None) -> Tensor:
        """``(B, L, C)`` → ``(B, L, C)`` (``attn_mask``: see :meth:`Attention.forward`)."""
        x = x + _drop_path_dense(self.ls1(self.attn(self.norm1(x), attn_mask)),
                                 self.drop_path, self.training)
        return x + _drop_path_dense(self.ls2(self.mlp(self.norm2(x))),
                                    self.drop_path, self.training)

    def forward_packed(self, x: Tensor, segments: Segments, backend: str = 'auto') -> Tensor:
        """``(T, C)`` packed tokens → ``(T, C)``; equals :meth:`forward` on each image."""
        out = self.ls1(self.attn.forward_packed(self.norm1(x), segments, backend))
        x = x + drop_path_packed(out, self.drop_path, self.training, segments)
        out = self.ls2(self.mlp(self.norm2(x)))
        return x + drop_path_packed(out, self.drop_path, self.training, segments)
