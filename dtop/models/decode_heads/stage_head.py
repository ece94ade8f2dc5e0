"""The stage-head contract: what the DToP segmentor needs from a head.

A *stage head* turns the packed active tokens of a batch into per-token, per-class
values. The segmentor, the pruning rule and the cost model depend on this contract
only, not on one head class, so DToP prunes SegViT (ATM heads), SETR (SETRUPHead)
and Segmenter (mask transformer) models with one stage loop.

Every stage head implements:

* :meth:`forward_tokens` — ``(T, C)`` packed tokens + :class:`Segments` →
  :class:`HeadOutput` (per-token values ``(T, Q)`` and optional per-image values);
* :meth:`token_probs` — per-token, per-class probabilities in ``[0, 1]``: what the
  pruning rule grades (``max_c`` against ``p0``, top-``k`` per argmax class);
* :meth:`canvas_values` — what the head writes into the segmentor's canvas of a
  given *space* at its active tokens. Two spaces exist:

  - ``'atm'``: ATM mask logits; the final map is the *final* head's class presence
    times ``sigmoid(canvas)`` (the official DToP rule, docs/method.md §4);
  - ``'log_probs'``: per-token class log-probabilities (log-softmax of a head's
    logits, or the log of a normalised ATM score); the final map is the canvas
    itself, a ``(B, Q, h, w)`` map of log-probabilities whose per-token softmax is
    the exit head's distribution.
  - ``'probs'``: per-token, per-class scores in ``[0, 1]`` as :meth:`token_probs`
    gives them (ATM: ``P_c * sigmoid(mask logit)``); the EoMT head combines them
    with its own scores (docs/eomt.md).

* :meth:`final_map` — the final map from the canvas (only called on the final head);
* :meth:`to_pixels` — resize a token-grid map to pixels the way the dense model does;
* :meth:`final_pixels` — the final map at the input's pixels (default: :meth:`to_pixels`
  of :meth:`final_map`; EoMT resizes its mask logits before combining them);
* :meth:`loss_by_canvas` — the head's losses on the canvas of its own space as it
  stands after the head wrote into it (earlier exits included, so later losses
  reach earlier heads through the exited positions, as in the official code);
* :meth:`cost` — the head's FLOPs as a :class:`~dtop.models.cost.HeadCost`: a
  polynomial in the active tokens ``n`` of one image for :meth:`forward_tokens`,
  the resize steps of :meth:`to_pixels`, and optionally mmseg's dense counterpart.
  The cost model (:mod:`dtop.evaluation.flops`) sums what the heads declare and
  knows no head class; the FLOP-counter tests check each head's declaration.

A head that needs to know *where* its tokens lie (EoMT: convolutions on the token
grid, the prefix tokens in its blocks) sets ``reads_grid = True``; the stage loop
then also passes ``grid=`` a :class:`TokenGrid`.

Heads keep no state between calls.
"""
from dataclasses import dataclass
from typing import Dict, Optional, Protocol, Sequence, Tuple, runtime_checkable

import torch
from torch import Tensor

from ..cost import HeadCost
from ..packing import Segments
from ..utils import grid_to_pixels

CANVAS_SPACES = ('atm', 'log_probs', 'probs')


@dataclass
class TokenGrid:
    """Where a stage head's active tokens lie (for heads with ``reads_grid``).

    Attributes:
        pos (Tensor): ``(T,)`` long grid index (``row * w + col``) of each active
            patch token, aligned with the tokens passed to :meth:`forward_tokens`.
        size (tuple[int, int]): the token grid ``(h, w)``.
        prefix (Tensor): ``(B, P, C)`` the prefix tokens (cls, registers) of every
            image after the stage's layers (``P`` may be 0).
        frozen (Tensor, optional): ``(B * h * w, C)`` for every token that exited
            at an earlier stage, its hidden state when it exited (the tokens its
            exit head read); rows of active tokens are zero. ``None`` when no token
            has exited.
    """
    pos: Tensor
    size: Tuple[int, int]
    prefix: Tensor
    frozen: Optional[Tensor] = None


@dataclass
class HeadOutput:
    """What one stage head returns.

    Attributes:
        token_values (Tensor): ``(T, Q)`` per-token values in the head's native
            space (ATM: mask logits; softmax heads: class logits).
        image_values (Tensor, optional): per-image values (ATM: class logits
            ``(B, Q, 2)``).
    """
    token_values: Tensor
    image_values: Optional[Tensor] = None

    def float(self) -> 'HeadOutput':
        """A copy in fp32 (the pruning decision is always made in fp32)."""
        return HeadOutput(self.token_values.float(),
                          None if self.image_values is None else self.image_values.float())


class StageHeadMixin:
    """Default implementations of the stage-head contract for softmax heads.

    A head that classifies each token with a softmax over classes (SETR's 1×1
    head, an FCN/linear head, Segmenter's mask transformer) only needs
    :meth:`forward_tokens`; everything else follows from its logits.
    """

    #: the canvas space the head's own loss is computed in
    canvas_space: str = 'log_probs'
    #: spaces the head can write (see :meth:`canvas_values`)
    supported_spaces: Sequence[str] = ('log_probs',)
    #: whether :meth:`forward_tokens` takes ``grid=`` (a :class:`TokenGrid`)
    reads_grid: bool = False

    def forward_tokens(self, tokens: Tensor, segments: Segments) -> HeadOutput:
        raise NotImplementedError

    def token_probs(self, out: HeadOutput, segments: Segments) -> Tensor:
        """``(T, Q)`` class probabilities of each active token."""
        return out.token_values.softmax(dim=-1)

    def canvas_values(self, out: HeadOutput, segments: Segments, space: str) -> Tensor:
        """``(T, Q)`` values to write into the canvas of ``space``."""
        if space != 'log_probs':
            raise ValueError(f'{type(self).__name__} cannot write a {space!r} canvas')
        return out.token_values.log_softmax(dim=-1)

    def final_map(self, out: HeadOutput, canvas: Tensor) -> Tensor:
        """``(B, Q, h, w)`` final map: the log-probability canvas itself."""
        return canvas

    def to_pixels(self, seg_map: Tensor, size: Sequence[int], patch_size: int) -> Tensor:
        """Token grid → pixels, corner-padding aware (see :func:`grid_to_pixels`).

        Args:
            seg_map (Tensor): ``(B, Q, h, w)``.
            size (Sequence[int]): target ``(H, W)``.
            patch_size (int): the backbone's patch size (a head that resizes the
                grid onto ``size`` may not need it).

        Returns:
            Tensor: ``(B, Q, H, W)``.
        """
        return grid_to_pixels(seg_map, size, patch_size, self.align_corners)

    def final_pixels(self, out: HeadOutput, final_map: Tensor, size: Sequence[int],
                     patch_size: int) -> Tensor:
        """The final ``(B, Q, H, W)`` map at ``size``: :meth:`to_pixels` of the
        token-grid ``final_map`` (a head whose output carries more than its final
        map, like EoMT's full-resolution masks, overrides this)."""
        return self.to_pixels(final_map, size, patch_size)

    def loss_by_canvas(self, out: HeadOutput, canvas: Tensor, batch_data_samples,
                       patch_size: int) -> Dict[str, Tensor]:
        """Cross-entropy of the canvas at label resolution (mmseg's losses).

        The canvas holds log-probabilities; CE is invariant to a per-pixel shift
        of the logits, so on a dense model this equals mmseg's loss on the raw
        logits resized the same way.
        """
        seg_label = self._stack_batch_gt(batch_data_samples)
        logits = self.to_pixels(canvas, seg_label.shape[-2:], patch_size)
        return self._mmseg_losses(logits, seg_label.squeeze(1))

    def _mmseg_losses(self, seg_logits: Tensor, seg_label: Tensor) -> Dict[str, Tensor]:
        """mmseg's ``BaseDecodeHead.loss_by_feat`` on already-resized logits."""
        from mmseg.models.losses import accuracy
        loss = dict()
        seg_weight = self.sampler.sample(seg_logits, seg_label[:, None]) \
            if self.sampler is not None else None
        losses_decode = self.loss_decode if isinstance(self.loss_decode, torch.nn.ModuleList) \
            else [self.loss_decode]
        for loss_decode in losses_decode:
            value = loss_decode(seg_logits, seg_label, weight=seg_weight,
                                ignore_index=self.ignore_index)
            loss[loss_decode.loss_name] = loss.get(loss_decode.loss_name, 0) + value
        loss['acc_seg'] = accuracy(seg_logits, seg_label, ignore_index=self.ignore_index)
        return loss

    def cost(self) -> HeadCost:
        """The head's FLOPs (see :class:`~dtop.models.cost.HeadCost`), read from
        its built modules (any device, ``meta`` included).

        Every head class declares its own; there is no default, because the cost
        follows from what :meth:`forward_tokens` and :meth:`to_pixels` compute.

        Raises:
            NotImplementedError: the head class does not declare its cost.
        """
        raise NotImplementedError(
            f'{type(self).__name__} does not declare its cost: implement '
            f'{type(self).__name__}.cost() -> dtop.models.cost.HeadCost (the FLOPs of '
            'forward_tokens on n tokens and the resize steps of to_pixels) to use it '
            'with the cost model (dtop.evaluation.flops).')


@runtime_checkable
class StageHead(Protocol):
    """The stage-head contract as a type (see the module docstring).

    Anything with these members can serve as a stage head; :class:`StageHeadMixin`
    gives softmax heads all but :meth:`forward_tokens`.
    """

    canvas_space: str
    supported_spaces: Sequence[str]
    in_channels: int
    num_classes: int

    def forward_tokens(self, tokens: Tensor, segments: Segments) -> HeadOutput:
        ...

    def token_probs(self, out: HeadOutput, segments: Segments) -> Tensor:
        ...

    def canvas_values(self, out: HeadOutput, segments: Segments, space: str) -> Tensor:
        ...

    def final_map(self, out: HeadOutput, canvas: Tensor) -> Tensor:
        ...

    def to_pixels(self, seg_map: Tensor, size: Sequence[int], patch_size: int) -> Tensor:
        ...

    def final_pixels(self, out: HeadOutput, final_map: Tensor, size: Sequence[int],
                     patch_size: int) -> Tensor:
        ...

    def loss_by_canvas(self, out: HeadOutput, canvas: Tensor, batch_data_samples,
                       patch_size: int) -> Dict[str, Tensor]:
        ...

    def cost(self) -> HeadCost:
        ...


def is_stage_head(module) -> bool:
    """Whether ``module`` implements the stage-head contract (:class:`StageHead`)."""
    return isinstance(module, StageHead)
