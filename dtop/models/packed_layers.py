"""One mmseg ViT encoder layer over packed tokens (see :mod:`dtop.models.packing`).

Used by the backbone for its layers and by the Segmenter head for its mask
transformer: token-wise work runs on the packed ``(T, C)`` tokens, attention within
each image.
"""
import torch.nn as nn
import torch.nn.functional as F
from mmseg.models.backbones.vit import TransformerEncoderLayer
from torch import Tensor

from .packing import Segments, drop_path_packed, packed_attention


def _residual_dropout(module: nn.Module, x: Tensor, training: bool,
                      segments: Segments) -> Tensor:
    """Apply an mmcv ``dropout_layer`` (DropPath or Dropout) to a packed branch."""
    if isinstance(module, nn.Identity):
        return x
    if hasattr(module, 'drop_prob'):  # DropPath: one draw per image
        return drop_path_packed(x, float(module.drop_prob), training, segments)
    return module(x)  # element-wise dropout is token-wise already


def packed_layer_forward(layer: TransformerEncoderLayer, x: Tensor, segments: Segments,
                         attention_backend: str = 'auto') -> Tensor:
    """One mmseg ViT encoder layer on packed tokens.

    Numerically the same as ``layer(x_b)`` for each image ``b`` alone (mmcv
    ``MultiheadAttention`` + ``FFN``), with fused attention within each image.

    Args:
        layer (TransformerEncoderLayer): mmseg's layer (its parameters are used).
        x (Tensor): ``(T, C)`` packed tokens.
        segments (Segments): image boundaries.
        attention_backend (str): see :func:`dtop.models.packing.packed_attention`.

    Returns:
        Tensor: ``(T, C)``.
    """
    mha = layer.attn.attn  # nn.MultiheadAttention holding the parameters
    T, C = x.shape
    heads = mha.num_heads
    training = layer.training
    qkv = F.linear(layer.ln1(x), mha.in_proj_weight, mha.in_proj_bias)
    q, k, v = qkv.view(T, 3, heads, C // heads).unbind(1)
    out = packed_attention(q, k, v, segments,
                           dropout_p=mha.dropout if training else 0.0,
                           backend=attention_backend)
    out = F.linear(out.reshape(T, C), mha.out_proj.weight, mha.out_proj.bias)
    x = x + _residual_dropout(layer.attn.dropout_layer, layer.attn.proj_drop(out),
                              training, segments)
    ffn = layer.ffn
    out = ffn.layers(layer.ln2(x))
    out = getattr(ffn, 'gamma2', nn.Identity())(out)
    return x + _residual_dropout(ffn.dropout_layer, out, training, segments)
