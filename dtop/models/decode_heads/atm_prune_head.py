"""ATM prune head: one query per class, cross-attention logits as mask logits.

A single-stage ATM decoder (docs/method.md §2). Parameter names follow the official
checkpoint layout (``input_proj``, ``proj_norm``, ``decoder.layers.N.{self_attn,
multihead_attn.{q,k,v,proj}, linear1, linear2, norm1..3}``, ``q``, ``class_embed``)
so official checkpoints load unchanged.

The head is stateless and implements the stage-head contract
(:mod:`dtop.models.decode_heads.stage_head`): :meth:`forward_tokens` takes the
packed active tokens of a batch and returns per-token mask logits and per-image
class logits; the segmentor owns the canvas and the pruning.
"""
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.model.weight_init import constant_init, trunc_normal_init
from mmseg.models.decode_heads.decode_head import BaseDecodeHead
from mmseg.models.losses import accuracy
from mmseg.registry import MODELS
from mmseg.utils import SampleList
from torch import Tensor

from ..cost import PATCH, HeadCost, ResizeStep, layer_norm_flops
from ..packing import Segments
from ..utils import grid_to_pixels
from .stage_head import HeadOutput, StageHeadMixin


def class_presence(cls_logits: Tensor) -> Tensor:
    """Probability that each query's class is present.

    Args:
        cls_logits (Tensor): ``(..., Q, 2)`` logits of ["present", "no object"].

    Returns:
        Tensor: ``(..., Q)`` softmax probability of "present".
    """
    return cls_logits.softmax(dim=-1)[..., 0]


def token_scores(cls_logits: Tensor, mask_logits: Tensor) -> Tensor:
    """Per-class, per-token probabilities ``P_c * sigmoid(A(c, t))`` (dense layout).

    Args:
        cls_logits (Tensor): ``(B, Q, 2)`` class-presence logits.
        mask_logits (Tensor): ``(B, Q, N)`` mask logits (attention logits).

    Returns:
        Tensor: ``(B, Q, N)`` scores in ``[0, 1]``.
    """
    return class_presence(cls_logits).unsqueeze(-1) * mask_logits.sigmoid()


class MaskCrossAttention(nn.Module):
    """Query→token attention that also returns its head-averaged logits.

    Args:
        dim (int): channels ``d``.
        num_heads (int): attention heads.
        attn_drop (float): dropout on the attention probabilities.
    """

    def __init__(self, dim: int, num_heads: int, attn_drop: float = 0.1) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f'channels ({dim}) must be divisible by num_heads ({num_heads})')
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.attn_drop = nn.Dropout(attn_drop)

    def forward(self, query: Tensor, tokens: Tensor,
                segments: Segments) -> Tuple[Tensor, Tensor]:
        """Args:
            query (Tensor): ``(B, Q, d)``.
            tokens (Tensor): ``(T, d)`` packed active tokens of the ``B`` images.
            segments (Segments): image boundaries of ``tokens``.

        Returns:
            tuple: output ``(B, Q, d)`` and packed mask logits ``(T, Q)`` (mean
            over heads of the scaled pre-softmax logits). An image without active
            tokens gets a zero attention output.
        """
        B, Q, d = query.shape
        h = self.num_heads
        q = self.q(query).view(B, Q, h, d // h).transpose(1, 2)
        # Token-side projections run on the packed tokens; only the Q x n products
        # need the per-image layout.
        k = segments.pad(self.k(tokens).view(-1, h, d // h)).transpose(1, 2)
        v = segments.pad(self.v(tokens).view(-1, h, d // h)).transpose(1, 2)
        logits = (q @ k.transpose(-2, -1)) * self.scale  # (B, h, Q, n)
        if segments.is_uniform:
            attn = logits.softmax(dim=-1)
        else:
            valid = segments.valid_mask()[:, None, None, :]
            attn = logits.masked_fill(~valid, float('-inf')).softmax(dim=-1)
            attn = attn.masked_fill(~valid, 0.0)  # rows of empty images: 0, not nan
        out = (self.attn_drop(attn) @ v).transpose(1, 2).reshape(B, Q, d)
        mask_logits = segments.unpad(logits.mean(dim=1).transpose(1, 2))  # (T, Q)
        return self.proj(out), mask_logits


class ATMDecoderLayer(nn.Module):
    """Post-norm decoder layer: query self-attention, mask cross-attention, FFN.

    Same semantics as ``nn.TransformerDecoderLayer`` (post-norm, ReLU FFN of
    ``4d``, dropout 0.1) with the cross-attention replaced by
    :class:`MaskCrossAttention`.
    """

    def __init__(self, dim: int, num_heads: int, ffn_ratio: int = 4,
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout,
                                               batch_first=True)
        self.multihead_attn = MaskCrossAttention(dim, num_heads, attn_drop=dropout)
        self.linear1 = nn.Linear(dim, dim * ffn_ratio)
        self.linear2 = nn.Linear(dim * ffn_ratio, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)

    def forward(self, query: Tensor, tokens: Tensor,
                segments: Segments) -> Tuple[Tensor, Tensor]:
        q = self.norm1(query + self.dropout1(
            self.self_attn(query, query, query, need_weights=False)[0]))
        cross, mask_logits = self.multihead_attn(q, tokens, segments)
        q = self.norm2(q + self.dropout2(cross))
        ffn = self.linear2(self.dropout(F.relu(self.linear1(q))))
        q = self.norm3(q + self.dropout3(ffn))
        return q, mask_logits


class ATMDecoder(nn.Module):
    """A stack of :class:`ATMDecoderLayer`; returns the last layer's mask logits."""

    def __init__(self, dim: int, num_heads: int, num_layers: int,
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            ATMDecoderLayer(dim, num_heads, dropout=dropout) for _ in range(num_layers))

    def forward(self, query: Tensor, tokens: Tensor,
                segments: Segments) -> Tuple[Tensor, Tensor]:
        mask_logits = None
        for layer in self.layers:
            query, mask_logits = layer(query, tokens, segments)
        return query, mask_logits


@MODELS.register_module()
class ATMPruneHead(StageHeadMixin, BaseDecodeHead):
    """Single-stage ATM head used after every DToP stage.

    Args:
        in_channels (int): backbone width ``D``.
        channels (int): head width ``d`` (384 for ViT-B, 512 for ViT-L).
        num_classes (int): number of classes ``Q`` (one query each).
        num_heads (int): attention heads of the decoder. Default 6.
        num_layers (int): decoder layers. Default 3.
        dropout (float): dropout in the decoder. Default 0.1.
        loss_decode (dict): the mask-classification loss (``ATMLoss``).
        **kwargs: other ``BaseDecodeHead`` arguments (``align_corners``,
            ``ignore_index``, ...). ``conv_seg`` and mmseg's dropout are unused.
    """

    canvas_space = 'atm'
    supported_spaces = ('atm', 'log_probs', 'probs')

    def __init__(self,
                 in_channels: int,
                 channels: int,
                 num_classes: int,
                 num_heads: int = 6,
                 num_layers: int = 3,
                 dropout: float = 0.1,
                 loss_decode: dict = dict(type='ATMLoss'),
                 init_cfg: Optional[dict] = None,
                 **kwargs) -> None:
        if isinstance(loss_decode, dict) and loss_decode.get('type') == 'ATMLoss':
            loss_decode = dict(loss_decode)
            loss_decode.setdefault('num_classes', num_classes)
        super().__init__(in_channels, channels, num_classes=num_classes,
                         loss_decode=loss_decode, init_cfg=init_cfg,
                         dropout_ratio=0., **kwargs)
        del self.conv_seg
        if num_layers < 1:
            raise ValueError(f'num_layers must be >= 1, got {num_layers}')
        self.num_heads = num_heads
        self.input_proj = nn.Linear(in_channels, channels)
        self.proj_norm = nn.LayerNorm(channels)
        self.decoder = ATMDecoder(channels, num_heads, num_layers, dropout)
        self.q = nn.Embedding(num_classes, channels)
        self.class_embed = nn.Linear(channels, 2)

    def init_weights(self) -> None:
        """Truncated-normal Linear (std 0.02, bias 0), LN (1, 0); queries N(0, 1)."""
        if self.init_cfg is not None:
            super().init_weights()
            return
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_init(m, std=.02, bias=0)
            elif isinstance(m, nn.LayerNorm):
                constant_init(m, val=1.0, bias=0.0)
        # As the official head: nn.MultiheadAttention's in_proj keeps PyTorch's
        # xavier init (it is not an nn.Linear); its out_proj is re-initialised above.
        self._is_init = True

    def forward_tokens(self, tokens: Tensor, segments: Segments) -> HeadOutput:
        """Decode one stage.

        Args:
            tokens (Tensor): ``(T, D)`` packed active backbone tokens.
            segments (Segments): image boundaries of ``tokens``.

        Returns:
            HeadOutput: mask logits ``(T, Q)`` and class logits ``(B, Q, 2)``.
        """
        if tokens.dim() != 2:
            raise ValueError(f'ATMPruneHead expects packed tokens (T, C), got '
                             f'{tuple(tokens.shape)}')
        x = self.proj_norm(self.input_proj(tokens))
        query = self.q.weight.unsqueeze(0).expand(segments.batch_size, -1, -1)
        query, mask_logits = self.decoder(query, x, segments)
        return HeadOutput(mask_logits, self.class_embed(query))

    def forward(self, tokens: Tensor, segments: Optional[Segments] = None
                ) -> Tuple[Tensor, Tensor]:
        """Dense convenience form: ``(B, n, D)`` tokens → ``(B, Q, 2)``, ``(B, Q, n)``."""
        if segments is None:
            if tokens.dim() != 3:
                raise ValueError(f'ATMPruneHead expects tokens (B, n, C), got '
                                 f'{tuple(tokens.shape)}')
            B, n, _ = tokens.shape
            segments = Segments.uniform(B, n, tokens.device)
            out = self.forward_tokens(tokens.reshape(B * n, -1), segments)
            return out.image_values, out.token_values.view(B, n, -1).transpose(1, 2)
        out = self.forward_tokens(tokens, segments)
        return out.image_values, out.token_values

    def token_probs(self, out: HeadOutput, segments: Segments) -> Tensor:
        """``P_c * sigmoid(A(c, t))`` per packed token, ``(T, Q)``."""
        presence = class_presence(out.image_values)[segments.batch_index]  # (T, Q)
        return presence * out.token_values.sigmoid()

    def canvas_values(self, out: HeadOutput, segments: Segments, space: str) -> Tensor:
        """Mask logits (``'atm'``), log of the score normalised over classes
        (``'log_probs'``) or the score itself (``'probs'``)."""
        if space == 'atm':
            return out.token_values
        if space == 'probs':
            return self.token_probs(out, segments)
        if space == 'log_probs':
            scores = self.token_probs(out, segments).clamp_min(1e-12)
            return scores.log() - scores.sum(-1, keepdim=True).log()
        raise ValueError(f'ATMPruneHead cannot write a {space!r} canvas')

    def final_map(self, out: HeadOutput, canvas: Tensor) -> Tensor:
        """``P_final(c) * sigmoid(canvas)`` (docs/method.md §4), ``(B, Q, h, w)``."""
        return class_presence(out.image_values)[..., None, None] * canvas.sigmoid()

    def cost(self) -> HeadCost:
        """FLOPs of :meth:`forward_tokens` and :meth:`to_pixels` (see :meth:`cost_of`)."""
        return self.cost_of(self.input_proj.in_features, self.input_proj.out_features,
                            self.num_classes, len(self.decoder.layers),
                            self.decoder.layers[0].linear1.out_features)

    @classmethod
    def cost_of(cls, in_channels: int, channels: int, num_classes: int,
                num_layers: int = 3, ffn_channels: Optional[int] = None) -> HeadCost:
        """:class:`HeadCost` of an ATM head of these dims (linear in ``n``).

        ``n D d + 5 n d`` (``input_proj``, ``proj_norm``) + ``L`` decoder layers of
        ``6 Q d^2 + 2 Q d F + 2 Q^2 d + 15 Q d`` on the query side (self-attention
        in/out projections, cross-attention q/proj, FFN, ``Q x Q`` attention, three
        LNs) and ``2 n d^2 + 2 Q n d`` on the token side (k/v projections, ``Q x n``
        logits and ``AV``) + ``2 Q d`` (``class_embed``); :meth:`to_pixels`
        upsamples the ``Q`` maps to the grid's pixels. No mmseg counterpart.
        """
        D, d, Q, L = in_channels, channels, num_classes, num_layers
        F = 4 * d if ffn_channels is None else ffn_channels
        query = 6 * Q * d * d + 2 * Q * d * F + 2 * Q * Q * d + 3 * layer_norm_flops(Q, d)
        return HeadCost(num_classes=Q, per_image=L * query + 2 * Q * d,
                        per_token=D * d + layer_norm_flops(1, d) + L * (2 * d * d + 2 * Q * d),
                        pixel_steps=(ResizeStep(Q, PATCH), ), name=cls.__name__)

    def loss_by_canvas(self, out: HeadOutput, canvas: Tensor, batch_data_samples,
                       patch_size: int) -> Dict[str, Tensor]:
        """ATM losses on the mask-logit canvas; see :meth:`loss_by_feat`."""
        return self.loss_by_feat((out.image_values, canvas), batch_data_samples,
                                 patch_size=patch_size)

    def loss_by_feat(self, seg_logits: Tuple[Tensor, Tensor],
                     batch_data_samples: SampleList,
                     patch_size: Optional[int] = None) -> Dict[str, Tensor]:
        """Mask-classification losses of one head.

        Args:
            seg_logits (tuple): class logits ``(B, Q, 2)`` and the canvas of mask
                logits ``(B, Q, h, w)`` at token resolution.
            batch_data_samples (list[SegDataSample]): with ``gt_sem_seg``.
            patch_size (int, optional): pixels per token side; when given, the
                grid is mapped to pixels exactly (corner padding aware), else it
                is resized to the label size.

        Returns:
            dict: ``loss_ce``, ``loss_mask``, ``loss_dice`` and ``acc_seg``.
        """
        cls_logits, mask_logits = seg_logits
        seg_label = self._stack_batch_gt(batch_data_samples).squeeze(1)  # (B, H, W)
        size = seg_label.shape[-2:]
        if patch_size is None:
            patch_size = -(-size[0] // mask_logits.shape[-2])
            if patch_size * mask_logits.shape[-1] < size[1]:
                patch_size = -(-size[1] // mask_logits.shape[-1])

        def upsample(t: Tensor) -> Tensor:
            return grid_to_pixels(t, size, patch_size, self.align_corners)

        losses = dict(self.loss_decode(cls_logits, mask_logits, seg_label, upsample))
        with torch.no_grad():
            pred = class_presence(cls_logits)[..., None, None] * upsample(mask_logits).sigmoid()
            losses['acc_seg'] = accuracy(pred, seg_label, ignore_index=self.ignore_index)
        return losses

    def predict_by_feat(self, seg_logits: Tensor, batch_img_metas: List[dict]) -> Tensor:
        raise NotImplementedError('ATMPruneHead is driven by DToPEncoderDecoder, which '
                                  'assembles the final map from all stages.')
