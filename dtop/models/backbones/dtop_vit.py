"""Plain ViT that runs stage by stage over the active tokens only.

The parameters are exactly those of mmseg's :class:`VisionTransformer` (this class
subclasses it), so mmseg/Segmenter/SETR ViT checkpoints load unchanged. What is new
is the execution: :meth:`embed_packed` builds the token sequence of every image and
:meth:`forward_layers_packed` runs layers ``[start, end)`` on the *packed* active
tokens of the whole batch (``(T, C)``, ``T = sum_b n_b``, see
:mod:`dtop.models.packing`): token-wise work costs the sum of active tokens, and
attention runs within each image (variable-length kernels on CUDA).

A cls token (``with_cls_token=True``, as Segmenter and SETR use) is part of every
image's sequence, attends and is attended to in every layer, and is never pruned;
heads read the patch tokens only (:meth:`head_tokens`), with ``final_norm`` applied
to the tokens the final head reads, exactly where mmseg's dense ViT applies it.
"""
import math
from typing import Sequence, Tuple

import torch
import torch.utils.checkpoint as cp
from mmseg.models.backbones.vit import VisionTransformer
from mmseg.registry import MODELS
from torch import Tensor

from ..packed_layers import packed_layer_forward
from ..packing import Segments
from .stages import StagesMixin, resolve_out_indices

CLS_POS = -1  # grid index given to the cls token in packed position vectors


@MODELS.register_module()
class DToPVisionTransformer(StagesMixin, VisionTransformer):
    """mmseg ``VisionTransformer`` with stage-wise execution over packed active tokens.

    Args:
        out_indices (Sequence[int]): 0-based layer indices that close a stage;
            a head runs after each (e.g. ``[5, 7, 11]`` for ViT-B).
        with_cls_token (bool): keep the cls token in the sequence (Segmenter,
            SETR). It is never pruned. DToP's SegViT configs drop it (False).
        patch_bias (bool): bias in the patch-embedding conv. Default True (mmseg's
            default is False): the Segmenter ImageNet checkpoints and the official
            DToP checkpoints carry ``patch_embed.projection.bias``.
        final_norm (bool): LayerNorm after the last layer (Segmenter); applied to
            the tokens the final head reads.
        attention_backend (str): ``'auto'`` (default) or a fixed backend of
            :func:`dtop.models.packing.packed_attention`.
        **kwargs: everything else of mmseg's ``VisionTransformer`` (``with_cp``
            turns on gradient checkpointing of every layer in training).
    """

    def __init__(self,
                 out_indices: Sequence[int] = (5, 7, 11),
                 with_cls_token: bool = False,
                 patch_bias: bool = True,
                 attention_backend: str = 'auto',
                 **kwargs) -> None:
        if kwargs.get('output_cls_token', False) or kwargs.get('out_origin', False):
            raise ValueError('DToPVisionTransformer supports output_cls_token=False and '
                             'out_origin=False only (heads read the patch tokens).')
        out_indices = list(out_indices) if not isinstance(out_indices, int) else [out_indices]
        super().__init__(out_indices=out_indices, with_cls_token=with_cls_token,
                         patch_bias=patch_bias, **kwargs)
        self.out_indices = resolve_out_indices(out_indices, len(self.layers))
        self.attention_backend = attention_backend

    def init_weights(self) -> None:
        """mmseg's init; an ImageNet ``init_cfg=Pretrained`` load (an expected partial
        load: the checkpoint has no heads, maybe no cls/pos slots of this size) logs
        one summary of what was not loaded instead of mmengine's unbounded list."""
        cfg = self.init_cfg
        if not (isinstance(cfg, dict) and cfg.get('type') == 'Pretrained'):
            return super().init_weights()
        from dtop.utils.checkpoint import read_checkpoint, summarize_partial_load

        # the safe loader (nothing in the file runs); NaN/Inf ImageNet weights: refused
        ckpt = read_checkpoint(cfg['checkpoint'])
        state_dict = dict(ckpt.get('state_dict', ckpt))
        pos = state_dict.get('pos_embed')
        if pos is not None and pos.shape != self.pos_embed.shape:
            side = int(math.sqrt(pos.shape[1] - 1))  # checkpoints hold a square grid
            state_dict['pos_embed'] = self.resize_pos_embed(
                pos, (self.img_size[0] // self.patch_size, self.img_size[1] // self.patch_size),
                (side, side), self.interpolate_mode)
        summarize_partial_load(self, state_dict, f'ImageNet weights {cfg["checkpoint"]}')
        self.load_state_dict(state_dict, strict=False)
        self._is_init = True

    @property
    def num_prefix_tokens(self) -> int:
        """Tokens per image that are not patches (the cls token, if kept)."""
        return 1 if self.with_cls_token else 0

    def embed(self, inputs: Tensor) -> Tuple[Tensor, Tuple[int, int]]:
        """Patch embedding + position embedding (+ pre-norm).

        Args:
            inputs (Tensor): ``(B, 3, H, W)`` images (any H, W; sides that are not
                multiples of the patch size are corner-padded).

        Returns:
            tuple: tokens ``(B, P + h*w, C)`` (``P`` = :attr:`num_prefix_tokens`,
            the cls token first) and the grid ``(h, w)``.
        """
        if inputs.dim() != 4:
            raise ValueError(f'expected images of shape (B, C, H, W), got {tuple(inputs.shape)}')
        x, hw_shape = self.patch_embed(inputs)
        cls_tokens = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat((cls_tokens, x), dim=1)
        x = self._pos_embeding(x, hw_shape, self.pos_embed)
        if not self.with_cls_token:
            x = x[:, 1:]
        if self.pre_norm:
            x = self.pre_ln(x)
        return x, tuple(hw_shape)

    def embed_packed(self, inputs: Tensor) -> Tuple[Tensor, Tensor, Segments, Tuple[int, int]]:
        """:meth:`embed`, packed.

        Returns:
            tuple: ``x`` ``(T, C)`` tokens, ``pos`` ``(T,)`` long grid index of each
            token (:data:`CLS_POS` for the cls token), :class:`Segments` and the
            grid ``(h, w)``.
        """
        x, (h, w) = self.embed(inputs)
        B, L, C = x.shape
        P = self.num_prefix_tokens
        pos = torch.arange(-P, h * w, device=x.device).clamp_min(CLS_POS)
        return (x.reshape(B * L, C), pos.repeat(B), Segments.uniform(B, L, x.device),
                (h, w))

    def forward_layers_packed(self, x: Tensor, segments: Segments, start: int,
                              end: int) -> Tensor:
        """Run layers ``[start, end)`` on packed tokens.

        Args:
            x (Tensor): ``(T, C)`` packed active tokens.
            segments (Segments): image boundaries.
            start (int): first layer index.
            end (int): one past the last layer index.

        Returns:
            Tensor: ``(T, C)``.
        """
        for layer in self.layers[start:end]:
            if getattr(layer, 'with_cp', False) and self.training and x.requires_grad:
                x = cp.checkpoint(packed_layer_forward, layer, x, segments,
                                  self.attention_backend, use_reentrant=False)
            else:
                x = packed_layer_forward(layer, x, segments, self.attention_backend)
        return x

    def head_tokens(self, x: Tensor, pos: Tensor, segments: Segments,
                    final: bool) -> Tuple[Tensor, Tensor, Segments]:
        """The patch tokens a stage head reads.

        Drops the cls token and, for the final stage, applies ``final_norm``
        (mmseg's ViT normalises after its last layer).

        Args:
            x (Tensor): ``(T, C)`` packed tokens after the stage's last layer.
            pos (Tensor): ``(T,)`` grid index per token (``CLS_POS`` = cls).
            segments (Segments): image boundaries of ``x``.
            final (bool): whether the stage is the last one.

        Returns:
            tuple: patch tokens ``(T_p, C)``, their grid indices ``(T_p,)`` and
            their :class:`Segments`.
        """
        if self.num_prefix_tokens:
            keep = ~self.prefix_mask(pos)
            x, pos = x[keep], pos[keep]
            segments = segments.select(
                keep, [n - self.num_prefix_tokens for n in segments.lengths])
        if final and self.final_norm:
            x = self.ln1(x)
        return x, pos, segments
