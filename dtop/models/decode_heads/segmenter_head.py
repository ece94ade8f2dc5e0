"""Segmenter's mask transformer as a DToP stage head (the final head).

mmseg's :class:`SegmenterMaskTransformerHead` projects the patch tokens
(``dec_proj``), appends ``Q`` learned class embeddings, runs a few ViT encoder
layers over the joint sequence, normalises (``decoder_norm``), projects patches and
classes (``patch_proj`` / ``classes_proj``), L2-normalises both, and takes the mask
logit of class ``c`` at token ``t`` as ``<patch_t, class_c>``, followed by a
LayerNorm over classes (``mask_norm``).

:class:`DToPSegmenterMaskHead` does exactly this on the *active* tokens of every
image: each image's joint sequence is its active patch tokens followed by its ``Q``
class embeddings, packed for the whole batch (:class:`Segments` of lengths
``n_b + Q``), and the transformer layers run through
:func:`~dtop.models.packed_layers.packed_layer_forward` (attention within each
image). Exited tokens take no part: the class embeddings attend only to tokens
still active. With nothing pruned this is mmseg's head; parameters are mmseg's, so
mmseg Segmenter checkpoints load unchanged.
"""
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from mmseg.models.decode_heads import SegmenterMaskTransformerHead
from mmseg.models.utils import resize
from mmseg.registry import MODELS
from torch import Tensor

from ..cost import CROP, HeadCost, ResizeStep, layer_norm_flops, vit_layer_coeffs
from ..packed_layers import packed_layer_forward
from ..packing import Segments
from .stage_head import HeadOutput, StageHeadMixin


@MODELS.register_module()
class DToPSegmenterMaskHead(StageHeadMixin, SegmenterMaskTransformerHead):
    """Segmenter's mask transformer running on the packed active tokens.

    Args:
        attention_backend (str): backend of the packed attention of its layers
            (see :func:`dtop.models.packing.packed_attention`). Default ``'auto'``.
        **kwargs: mmseg's ``SegmenterMaskTransformerHead`` arguments
            (``in_channels``, ``num_layers``, ``num_heads``, ``embed_dims``,
            ``num_classes``, ``drop_path_rate``, ...).
    """

    canvas_space = 'log_probs'
    supported_spaces = ('log_probs',)

    def __init__(self, attention_backend: str = 'auto', **kwargs) -> None:
        super().__init__(**kwargs)
        self.attention_backend = attention_backend

    def forward_tokens(self, tokens: Tensor, segments: Segments) -> HeadOutput:
        """Mask logits of the active tokens.

        Args:
            tokens (Tensor): ``(T, C)`` packed active patch tokens (after the
                backbone's final norm).
            segments (Segments): image boundaries of ``tokens``.

        Returns:
            HeadOutput: ``token_values`` ``(T, Q)`` — ``mask_norm`` of
            ``<l2(patch_proj(x_t)), l2(classes_proj(c_q))>``, mmseg's mask logits.
        """
        if tokens.dim() != 2:
            raise ValueError(f'DToPSegmenterMaskHead expects packed tokens (T, C), got '
                             f'{tuple(tokens.shape)}')
        Q = self.num_classes
        B = segments.batch_size
        x = self.dec_proj(tokens)  # (T, E)
        E = x.shape[-1]
        joint, token_dest, cls_dest = segments.append(Q)
        cls_emb = self.cls_emb.to(x.dtype).expand(B, -1, -1).reshape(B * Q, E)
        z = x.new_zeros((joint.total, E)).index_put(
            (torch.cat([token_dest, cls_dest.reshape(-1)]), ), torch.cat([x, cls_emb]))
        for layer in self.layers:
            z = packed_layer_forward(layer, z, joint, self.attention_backend)
        z = self.decoder_norm(z)
        patches = F.normalize(self.patch_proj(z[token_dest]), dim=-1, p=2)  # (T, E)
        classes = F.normalize(self.classes_proj(z[cls_dest]), dim=-1, p=2)  # (B, Q, E)
        # Only the (n_b x Q) products need the per-image layout.
        masks = segments.unpad(segments.pad(patches) @ classes.transpose(1, 2))  # (T, Q)
        return HeadOutput(self.mask_norm(masks))

    def cost(self) -> HeadCost:
        """FLOPs of :meth:`forward_tokens` and :meth:`to_pixels`, and of mmseg's
        dense head (see :meth:`cost_of`)."""
        return self.cost_of(self.dec_proj.in_features, self.dec_proj.out_features,
                            self.num_classes, len(self.layers),
                            int(self.layers[0].ffn.feedforward_channels))

    @classmethod
    def cost_of(cls, in_channels: int, embed_dims: int, num_classes: int,
                num_layers: int = 2, ffn_channels: Optional[int] = None) -> HeadCost:
        """:class:`HeadCost` of a mask transformer of these dims (quadratic in ``n``).

        ``dec_proj`` ``n D E`` + ``L`` ViT layers on ``n + Q`` tokens +
        ``decoder_norm`` ``5 (n + Q) E`` + ``patch_proj`` ``n E^2`` + ``classes_proj``
        ``Q E^2`` + masks ``n E Q`` + ``mask_norm`` ``5 n Q`` (the L2 normalisations
        are free); :meth:`to_pixels` resizes the ``Q`` maps to the crop. mmseg's
        dense head computes the same.
        """
        D, E, Q, L = in_channels, embed_dims, num_classes, num_layers
        layer = vit_layer_coeffs(E, ffn_channels, extra_tokens=Q)
        poly = dict(per_image=L * layer[0] + layer_norm_flops(Q, E) + Q * E * E,
                    per_token=(D * E + L * layer[1] + layer_norm_flops(1, E) + E * E
                               + E * Q + layer_norm_flops(1, Q)),
                    per_token_sq=L * layer[2])
        return HeadCost(num_classes=Q, **poly, pixel_steps=(ResizeStep(Q, CROP), ),
                        mmseg=HeadCost(num_classes=Q, **poly), name=cls.__name__)

    def to_pixels(self, seg_map: Tensor, size: Sequence[int],
                  patch_size: Optional[int] = None) -> Tensor:
        """Token-grid mask logits → pixels as mmseg's ``predict_by_feat`` /
        ``loss_by_feat``: a bilinear resize to ``size`` (arguments and result as
        :meth:`StageHeadMixin.to_pixels`; ``patch_size`` is unused).
        """
        return resize(seg_map, size=tuple(int(s) for s in size), mode='bilinear',
                      align_corners=self.align_corners)
