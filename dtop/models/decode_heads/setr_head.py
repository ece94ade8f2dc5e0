"""SETR's naive up-sampling head as a DToP stage head.

mmseg's :class:`SETRUPHead` with ``num_convs=1`` and ``kernel_size=1`` (SETR-naive)
computes, on a ``(B, C, h, w)`` feature map::

    LN over C -> 1x1 ConvModule (conv, BN, act) -> bilinear x up_scale -> conv_seg (1x1)

and mmseg's ``predict_by_feat`` / ``loss_by_feat`` resize the result to the image /
label size. Everything before the upsample is token-wise, and ``conv_seg`` commutes
with the upsample: a bilinear upsample is linear with weights that sum to 1 at every
output pixel, so ``conv_seg(up(y)) = up(conv_seg(y))`` (bias included). The head's
logits are therefore per-token logits followed by an upsample of the *class* maps,
which is what :class:`DToPSETRUPHead` computes: :meth:`forward_tokens` runs on the
packed active tokens only, :meth:`to_pixels` does the ``x up_scale`` upsample and the
resize. The parameters are mmseg's (this class subclasses it), so mmseg SETR
checkpoints load strictly and prune with no new parameters.

**BatchNorm on active tokens.** The ConvModule's BN sees a ``(T, C', 1, 1)`` batch
of the active tokens of the batch (SyncBN: of all processes). On a dense pass this
is exactly the ``B * h * w`` token population mmseg's BN normalises, so a BASE
model trains identically. In a prune fine-tune, the head of stage 1 still sees
every token, but the heads of later stages see only the tokens still active there
(the hard ones), so their batch statistics — and the running mean/variance used at
test time — describe hard tokens only. Training and testing then see the same
population (the same pruning runs at test time), which is what those heads need;
the running statistics inherited from a dense BASE model move to the hard-token
statistics early in the fine-tune (momentum 0.1: 0.9^50 < 1 % of the old value is
left after 50 iterations).
A batch with fewer than two active tokens in training cannot form batch statistics;
a plain BN uses its running statistics for it (SyncBN pools all processes).
"""
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmseg.models.decode_heads import SETRUPHead
from mmseg.models.utils import resize
from mmseg.registry import MODELS
from torch import Tensor

from ..cost import CROP, HeadCost, ResizeStep, layer_norm_flops
from ..packing import Segments
from .stage_head import HeadOutput, StageHeadMixin


@MODELS.register_module()
class DToPSETRUPHead(StageHeadMixin, SETRUPHead):
    """SETR-naive head (``num_convs=1``, ``kernel_size=1``) that runs token-wise.

    Args:
        norm_layer (dict): the input LayerNorm (mmseg's ``norm``).
        num_convs (int): must be 1 (more convolutions interleave upsampling with
            non-linearities: not token-wise).
        up_scale (int): the bilinear upsampling factor of the dense head (4).
        kernel_size (int): must be 1 (a 3x3 conv mixes neighbouring tokens).
        init_cfg: as mmseg's ``SETRUPHead``.
        **kwargs: ``BaseDecodeHead`` arguments (``in_channels``, ``channels``,
            ``num_classes``, ``norm_cfg`` (BN/SyncBN or None), ``act_cfg``,
            ``align_corners``, ``loss_decode``, ``dropout_ratio``, ``in_index`` —
            kept for the mmseg layout, unused: the stage loop feeds each head its
            stage's tokens).

    Raises:
        ValueError: for a head that is not token-wise.
    """

    canvas_space = 'log_probs'
    supported_spaces = ('log_probs',)

    def __init__(self,
                 norm_layer: dict = dict(type='LN', eps=1e-6, requires_grad=True),
                 num_convs: int = 1,
                 up_scale: int = 4,
                 kernel_size: int = 3,
                 init_cfg=[
                     dict(type='Constant', val=1.0, bias=0, layer='LayerNorm'),
                     dict(type='Normal', std=0.01, override=dict(name='conv_seg'))
                 ],
                 **kwargs) -> None:
        if num_convs != 1 or kernel_size != 1:
            raise ValueError(
                'DToPSETRUPHead prunes only the token-wise SETR-naive head '
                f'(num_convs=1, kernel_size=1); got num_convs={num_convs}, '
                f'kernel_size={kernel_size}. A 3x3 conv mixes neighbouring tokens and '
                'a second conv runs after an upsample and an activation, so neither '
                'can be computed on the active tokens alone.')
        super().__init__(norm_layer=norm_layer, num_convs=num_convs, up_scale=up_scale,
                         kernel_size=kernel_size, init_cfg=init_cfg, **kwargs)
        self.up_scale = up_scale
        conv_module = self.up_convs[0][0]
        norm = getattr(conv_module, 'norm', None) if conv_module.with_norm else None
        if norm is not None and not isinstance(norm, nn.modules.batchnorm._BatchNorm):
            raise ValueError(
                f'DToPSETRUPHead needs a BatchNorm (BN/SyncBN) or no norm in its conv '
                f'module; got {type(norm).__name__}, which does not normalise per '
                'channel over tokens.')

    # ---------------------------------------------------------------- contract
    def forward_tokens(self, tokens: Tensor, segments: Segments) -> HeadOutput:
        """Per-token class logits of SETR's naive head.

        LN over channels → the 1x1 ConvModule as a linear map + BN over the active
        tokens ``(T, C', 1, 1)`` + activation → dropout (mmseg's ``Dropout2d``:
        one draw per image and channel) → ``conv_seg`` as a linear map.

        Args:
            tokens (Tensor): ``(T, C)`` packed active tokens of the stage.
            segments (Segments): image boundaries of ``tokens``.

        Returns:
            HeadOutput: ``token_values`` ``(T, Q)`` class logits.
        """
        if tokens.dim() != 2:
            raise ValueError(f'DToPSETRUPHead expects packed tokens (T, C), got '
                             f'{tuple(tokens.shape)}')
        x = self.norm(tokens)
        x = self._conv_module_tokens(self.up_convs[0][0], x)
        x = self._channel_dropout(x, segments)
        w = self.conv_seg.weight
        logits = F.linear(x, w.view(w.shape[0], -1), self.conv_seg.bias)
        return HeadOutput(logits)

    def cost(self) -> HeadCost:
        """FLOPs of :meth:`forward_tokens` and :meth:`to_pixels`, and of mmseg's
        dense head (see :meth:`cost_of`)."""
        module = self.up_convs[0][0]
        return self.cost_of(module.conv.in_channels, module.conv.out_channels,
                            self.conv_seg.out_channels, int(self.up_scale),
                            bool(module.with_norm))

    @classmethod
    def cost_of(cls, in_channels: int, channels: int, num_classes: int,
                up_scale: int = 4, with_norm: bool = True) -> HeadCost:
        """:class:`HeadCost` of a SETR-naive head of these dims (linear in ``n``).

        LN ``5 n D`` + 1x1 conv ``n D c`` + BN (eval: scale and shift) ``2 n c`` +
        ``conv_seg`` ``n c Q``; :meth:`to_pixels` upsamples the ``Q`` maps ``x u``,
        then resizes them to the crop. mmseg's dense head (``mmseg``) upsamples the
        ``c``-channel map ``x u`` instead and runs ``conv_seg`` on every pixel of it.
        """
        D, c, Q = in_channels, channels, num_classes
        token = layer_norm_flops(1, D) + D * c + (2 * c if with_norm else 0)
        mmseg = HeadCost(num_classes=Q, per_token=token,
                         pixel_steps=(ResizeStep(c, up_scale, per_pixel=c * Q), ))
        return HeadCost(num_classes=Q, per_token=token + c * Q,
                        pixel_steps=(ResizeStep(Q, up_scale), ResizeStep(Q, CROP)),
                        mmseg=mmseg, name=cls.__name__,
                        note='SETR: ours runs conv_seg on the tokens and upsamples the '
                             f'class maps; mmseg upsamples the conv features x{up_scale} '
                             'first and runs conv_seg on every pixel: same logits, fewer '
                             'FLOPs.')

    def _conv_module_tokens(self, module, x: Tensor) -> Tensor:
        """mmcv ``ConvModule`` with a 1x1 conv on ``(T, C)`` tokens, in its order."""
        for op in module.order:
            if op == 'conv':
                w = module.conv.weight
                x = F.linear(x, w.view(w.shape[0], -1), module.conv.bias)
            elif op == 'norm' and module.with_norm:
                x = self._batch_norm_tokens(module.norm, x)
            elif op == 'act' and module.with_activation:
                x = module.activate(x)
        return x

    @staticmethod
    def _batch_norm_tokens(bn: nn.Module, x: Tensor) -> Tensor:
        """BN over the active tokens (see the module docstring).

        SyncBN always runs (its statistics are over all processes, and every
        process must join the collective even with no tokens); a plain BN in
        training with fewer than 2 tokens uses its running statistics.
        """
        if (bn.training and x.shape[0] < 2
                and not isinstance(bn, nn.SyncBatchNorm)):
            return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias,
                                training=False, eps=bn.eps)
        return bn(x[:, :, None, None]).view(x.shape)

    def _channel_dropout(self, x: Tensor, segments: Segments) -> Tensor:
        """mmseg's ``Dropout2d`` before ``conv_seg``: zeroes whole channels of an
        image; token-wise, one Bernoulli draw per (image, channel)."""
        if self.dropout is None or not self.training or self.dropout.p == 0:
            return x
        keep = 1.0 - self.dropout.p
        mask = x.new_empty(segments.batch_size, x.shape[1]).bernoulli_(keep).div_(keep)
        return x * mask[segments.batch_index]

    def to_pixels(self, seg_map: Tensor, size: Sequence[int],
                  patch_size: Optional[int] = None) -> Tensor:
        """Token-grid logits → pixels exactly as mmseg's dense head + ``predict_by_feat``.

        Bilinear ``x up_scale`` (mmseg's ``Upsample`` inside the head, to
        ``int(h * up_scale)``), then mmseg's
        ``resize`` to ``size`` (the image or label size). The patch size is not
        needed: mmseg maps the (possibly corner-padded) grid onto ``size`` by
        resizing. Arguments and result as :meth:`StageHeadMixin.to_pixels`
        (``patch_size`` is unused).
        """
        up = [int(t * float(self.up_scale)) for t in seg_map.shape[-2:]]
        x = resize(seg_map, up, None, 'bilinear', self.align_corners)
        return resize(x, size=tuple(int(s) for s in size), mode='bilinear',
                      align_corners=self.align_corners)
