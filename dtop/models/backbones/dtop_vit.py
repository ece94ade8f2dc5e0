"""Plain ViT that runs stage by stage over the active tokens only.

The parameters are exactly those of mmseg's :class:`VisionTransformer` (this class
subclasses it), so mmseg/Segmenter ViT checkpoints load unchanged. What is new is
the execution: :meth:`embed` builds the token sequence and :meth:`forward_layers`
runs layers ``[start, end)`` on a *padded* batch of per-image active tokens, with a
key-padding mask through :func:`torch.nn.functional.scaled_dot_product_attention`.
Every image's real tokens attend only to each other, exactly as if that image ran
alone, and the cost follows the number of active tokens.
"""
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from mmseg.models.backbones.vit import TransformerEncoderLayer, VisionTransformer
from mmseg.registry import MODELS
from torch import Tensor


def attention_mask_from_valid(valid: Optional[Tensor]) -> Optional[Tensor]:
    """Key-padding mask in the form SDPA takes.

    Args:
        valid (Tensor, optional): ``(B, n)`` bool, True for real tokens.

    Returns:
        Tensor or None: ``(B, 1, 1, n)`` bool (True = may be attended), or
        ``None`` when every slot is real (the unmasked fused kernel then runs).
    """
    if valid is None or bool(valid.all()):
        return None
    return valid[:, None, None, :]


def encoder_layer_forward(layer: TransformerEncoderLayer, x: Tensor,
                          attn_mask: Optional[Tensor] = None) -> Tensor:
    """One mmseg ViT encoder layer with fused, optionally masked attention.

    Numerically the same as ``layer(x)`` (mmcv ``MultiheadAttention`` + ``FFN``)
    when ``attn_mask`` is None; with a mask, padding keys are excluded.

    Args:
        layer (TransformerEncoderLayer): mmseg's layer (its parameters are used).
        x (Tensor): ``(B, n, C)`` tokens.
        attn_mask (Tensor, optional): ``(B, 1, 1, n)`` bool key mask.

    Returns:
        Tensor: ``(B, n, C)``.
    """
    mha = layer.attn.attn  # nn.MultiheadAttention holding the parameters
    B, n, C = x.shape
    heads = mha.num_heads
    h = layer.ln1(x)
    qkv = F.linear(h, mha.in_proj_weight, mha.in_proj_bias)
    q, k, v = qkv.view(B, n, 3, heads, C // heads).permute(2, 0, 3, 1, 4).unbind(0)
    out = F.scaled_dot_product_attention(
        q, k, v, attn_mask=attn_mask,
        dropout_p=mha.dropout if layer.training else 0.0)
    out = out.transpose(1, 2).reshape(B, n, C)
    out = F.linear(out, mha.out_proj.weight, mha.out_proj.bias)
    x = x + layer.attn.dropout_layer(layer.attn.proj_drop(out))
    return layer.ffn(layer.ln2(x), identity=x)


@MODELS.register_module()
class DToPVisionTransformer(VisionTransformer):
    """mmseg ``VisionTransformer`` with stage-wise execution over active tokens.

    Args:
        out_indices (Sequence[int]): 0-based layer indices that close a stage;
            a head runs after each (e.g. ``[5, 7, 11]`` for ViT-B).
        with_cls_token (bool): must be False (DToP drops the cls token before
            layer 0; its position-embedding slot is kept for checkpoint layout).
        patch_bias (bool): bias in the patch-embedding conv. Default True (mmseg's
            default is False): the Segmenter ImageNet checkpoints and the official
            DToP checkpoints carry ``patch_embed.projection.bias``.
        **kwargs: everything else of mmseg's ``VisionTransformer``.
    """

    def __init__(self,
                 out_indices: Sequence[int] = (5, 7, 11),
                 with_cls_token: bool = False,
                 patch_bias: bool = True,
                 **kwargs) -> None:
        if with_cls_token or kwargs.get('output_cls_token', False):
            raise ValueError('DToPVisionTransformer needs with_cls_token=False and '
                             'output_cls_token=False: DToP prunes patch tokens only.')
        if kwargs.get('final_norm', False) or kwargs.get('out_origin', False):
            raise ValueError('DToPVisionTransformer supports final_norm=False and '
                             'out_origin=False only (as every DToP config).')
        out_indices = list(out_indices) if not isinstance(out_indices, int) else [out_indices]
        super().__init__(out_indices=out_indices, with_cls_token=False,
                         patch_bias=patch_bias, **kwargs)
        num_layers = len(self.layers)
        resolved = [i % num_layers for i in out_indices]
        if sorted(set(resolved)) != resolved or resolved[-1] != num_layers - 1:
            raise ValueError(f'out_indices must be strictly increasing and end at the '
                             f'last layer ({num_layers - 1}); got {out_indices}.')
        self.out_indices = resolved

    @property
    def stage_ranges(self) -> List[Tuple[int, int]]:
        """``[(start, end), ...]`` layer ranges of the stages."""
        starts = [0] + [i + 1 for i in self.out_indices[:-1]]
        return [(s, e + 1) for s, e in zip(starts, self.out_indices)]

    @property
    def num_stages(self) -> int:
        return len(self.out_indices)

    def embed(self, inputs: Tensor) -> Tuple[Tensor, Tuple[int, int]]:
        """Patch embedding + position embedding; the cls token is dropped.

        Args:
            inputs (Tensor): ``(B, 3, H, W)`` images (any H, W; sides that are not
                multiples of the patch size are corner-padded).

        Returns:
            tuple: tokens ``(B, h*w, C)`` and the grid ``(h, w)``.
        """
        if inputs.dim() != 4:
            raise ValueError(f'expected images of shape (B, C, H, W), got {tuple(inputs.shape)}')
        x, hw_shape = self.patch_embed(inputs)
        cls_tokens = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat((cls_tokens, x), dim=1)
        x = self._pos_embeding(x, hw_shape, self.pos_embed)[:, 1:]
        if self.pre_norm:
            x = self.pre_ln(x)
        return x, tuple(hw_shape)

    def forward_layers(self, x: Tensor, start: int, end: int,
                       valid: Optional[Tensor] = None) -> Tensor:
        """Run layers ``[start, end)`` on a padded batch of active tokens.

        Args:
            x (Tensor): ``(B, n, C)`` active tokens (padding slots anywhere).
            start (int): first layer index.
            end (int): one past the last layer index.
            valid (Tensor, optional): ``(B, n)`` bool, False for padding.

        Returns:
            Tensor: ``(B, n, C)``; padding slots hold unspecified values.
        """
        mask = attention_mask_from_valid(valid)
        for layer in self.layers[start:end]:
            x = encoder_layer_forward(layer, x, mask)
        return x

    def forward(self, inputs: Tensor) -> Tuple[Tensor, ...]:
        """Dense forward, as mmseg's: features ``(B, C, h, w)`` at ``out_indices``."""
        x, (h, w) = self.embed(inputs)
        outs = []
        for start, end in self.stage_ranges:
            x = self.forward_layers(x, start, end)
            outs.append(x.transpose(1, 2).reshape(x.shape[0], -1, h, w).contiguous())
        return tuple(outs)
