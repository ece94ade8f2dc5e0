"""Mask-classification loss of one DToP head (docs/method.md §5).

Fixed matching: query ``c`` is matched to class ``c`` whenever ``c`` occurs in
the label. Terms:

* ``loss_ce``: 2-way cross-entropy over *all* queries, target 0 ("present") for
  matched queries and 1 ("no object") otherwise, class weights ``[1, eos_coef]``
  (PyTorch weighted mean);
* ``loss_mask``: sigmoid focal loss (alpha 0.25, gamma 2) of the matched
  queries' mask logits against the binary class masks, mean over pixels, summed
  over masks, divided by ``num_masks``;
* ``loss_dice``: dice loss (+1 smoothing) on the same masks.

``num_masks`` is the number of present classes in the whole batch, averaged over
distributed ranks and clamped at 1.
"""
from typing import Callable, Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.dist import all_reduce, get_world_size
from mmseg.registry import MODELS
from torch import Tensor


class SetCriterion(nn.Module):
    """Holds the class weights as the ``empty_weight`` buffer (official layout)."""

    def __init__(self, eos_coef: float = 0.1) -> None:
        super().__init__()
        self.register_buffer('empty_weight', torch.tensor([1.0, eos_coef]))


def sigmoid_focal_loss(logits: Tensor, targets: Tensor, alpha: float = 0.25,
                       gamma: float = 2.0, weight: Tensor = None) -> Tensor:
    """Per-mask focal loss, mean over pixels.

    Args:
        logits (Tensor): ``(M, P)`` logits.
        targets (Tensor): ``(M, P)`` binary targets.
        weight (Tensor, optional): ``(M, P)`` per-pixel weights (0 = ignored);
            the mean is then over the weighted pixels.

    Returns:
        Tensor: ``(M,)``.
    """
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction='none')
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    if weight is None:
        return loss.mean(dim=1)
    return (loss * weight).sum(1) / weight.sum(1).clamp(min=1)


def dice_loss(logits: Tensor, targets: Tensor, weight: Tensor = None) -> Tensor:
    """Per-mask dice loss on the sigmoid, +1 smoothing. Shapes as above."""
    prob = logits.sigmoid()
    if weight is not None:
        prob = prob * weight
        targets = targets * weight
    numerator = 2 * (prob * targets).sum(1)
    denominator = prob.sum(1) + targets.sum(1)
    return 1 - (numerator + 1) / (denominator + 1)


@MODELS.register_module()
class ATMLoss(nn.Module):
    """Loss of one ATM prune head.

    Args:
        num_classes (int): number of classes (= queries).
        eos_coef (float): weight of the "no object" class in the CE. Default 0.1.
        loss_weight (float): multiplies all three terms. Default 1.0.
        ce_weight (float): weight of ``loss_ce``. Default 1.0.
        mask_weight (float): weight of the focal term. Default 20.0.
        dice_weight (float): weight of the dice term. Default 1.0.
        ignore_index (int): label value of ignored pixels. Default 255.
        ignore_as_negative (bool): the official quirk: ignored pixels (crop
            padding included) count as negatives in every class mask. Default
            True (faithful). False excludes them from the focal and dice terms.
    """

    def __init__(self,
                 num_classes: int,
                 eos_coef: float = 0.1,
                 loss_weight: float = 1.0,
                 ce_weight: float = 1.0,
                 mask_weight: float = 20.0,
                 dice_weight: float = 1.0,
                 ignore_index: int = 255,
                 ignore_as_negative: bool = True,
                 loss_name: str = 'loss_atm') -> None:
        super().__init__()
        self.num_classes = num_classes
        self.loss_weight = loss_weight
        self.ce_weight = ce_weight
        self.mask_weight = mask_weight
        self.dice_weight = dice_weight
        self.ignore_index = ignore_index
        self.ignore_as_negative = ignore_as_negative
        self._loss_name = loss_name
        self.criterion = SetCriterion(eos_coef)

    @property
    def loss_name(self) -> str:
        return self._loss_name

    def forward(self, cls_logits: Tensor, mask_logits: Tensor, seg_label: Tensor,
                upsample: Optional[Callable[[Tensor], Tensor]] = None
                ) -> Dict[str, Tensor]:
        """Args:
            cls_logits (Tensor): ``(B, Q, 2)``.
            mask_logits (Tensor): ``(B, Q, h, w)`` mask logits (token or label
                resolution).
            seg_label (Tensor): ``(B, H, W)`` long labels.
            upsample (callable, optional): maps ``(M, 1, h, w)`` logits to the
                label size; applied to the matched queries only (saves memory).
                Default: bilinear resize to ``(H, W)``.

        Returns:
            dict: ``loss_ce``, ``loss_mask``, ``loss_dice``.
        """
        B, Q = cls_logits.shape[:2]
        if Q != self.num_classes:
            raise ValueError(f'ATMLoss has num_classes={self.num_classes} but the head '
                             f'produced {Q} queries.')
        labels = seg_label.long()
        real = labels != self.ignore_index
        if bool((labels[real] >= Q).any()) or bool((labels[real] < 0).any()):
            raise ValueError(f'label values must be in [0, {Q}) or {self.ignore_index}; '
                             f'got {labels[real].unique().tolist()}. Check num_classes '
                             f'and reduce_zero_label.')
        # present[b, c]: class c occurs in image b.
        present = torch.zeros(B, Q + 1, dtype=torch.bool, device=labels.device)
        present.scatter_(1, torch.where(real, labels, Q).flatten(1), True)
        present = present[:, :Q]

        target_classes = (~present).long()  # 0 = present, 1 = no object
        loss_ce = F.cross_entropy(cls_logits.transpose(1, 2), target_classes,
                                  self.criterion.empty_weight.to(cls_logits.dtype))

        num_masks = present.sum().to(cls_logits.dtype)
        if get_world_size() > 1:
            num_masks = num_masks.clone()
            all_reduce(num_masks, op='mean')
        num_masks = num_masks.clamp(min=1)

        b_idx, c_idx = present.nonzero(as_tuple=True)
        if b_idx.numel() == 0:
            zero = mask_logits.sum() * 0
            loss_mask = loss_dice = zero
        else:
            src = mask_logits[b_idx, c_idx].unsqueeze(1)  # (M, 1, h, w)
            if src.shape[-2:] != labels.shape[-2:]:
                src = upsample(src) if upsample is not None else F.interpolate(
                    src, size=labels.shape[-2:], mode='bilinear', align_corners=False)
            src = src.flatten(1)  # (M, H*W)
            tgt = (labels[b_idx] == c_idx[:, None, None]).flatten(1).to(src.dtype)
            weight = None
            if not self.ignore_as_negative:
                weight = real[b_idx].flatten(1).to(src.dtype)
            loss_mask = sigmoid_focal_loss(src, tgt, weight=weight).sum() / num_masks
            loss_dice = dice_loss(src, tgt, weight=weight).sum() / num_masks
        w = self.loss_weight
        return dict(loss_ce=w * self.ce_weight * loss_ce,
                    loss_mask=w * self.mask_weight * loss_mask,
                    loss_dice=w * self.dice_weight * loss_dice)
