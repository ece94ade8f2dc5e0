"""Mask-classification loss of EoMT / Mask2Former, from ``transformers``.

The math is not re-implemented here: :class:`MaskClassificationLoss` builds
``transformers``' ``Mask2FormerLoss`` (the criterion EoMT's own training code
subclasses) and calls its Hungarian matcher, its point-sampled mask terms and its
class term. What this module adds:

* **Targets from a semantic label map.** Every class present in an image becomes
  one binary target mask at the label resolution, with that class as its label
  (:func:`semantic_to_mask_targets`). The library samples the logits and the
  targets at the same normalised point coordinates (``grid_sample``), so the mask
  logits may have any resolution (EoMT's are 4x the patch grid).
* **Ignored pixels** (``ignore_index``) belong to no target mask: for every
  matched query they are negatives of the mask BCE and dice terms, and they never
  create a target of their own. This is what EoMT's semantic training does: its
  ADE20K target parser turns each label id found in the map into a mask and skips
  ids outside the class mapping (the ignore label included), and crop padding is
  added as all-zero mask pixels. The detectron2 Mask2Former semantic mapper and
  ``Mask2FormerImageProcessor(ignore_index=...)`` do the same. The point sampling
  happens inside the library, so ignored pixels cannot be left out of the mask
  terms without re-implementing them.
* **Normalisation over ranks.** The mask terms are divided by the number of
  matched masks averaged over the distributed ranks (clamped at 1), as EoMT does
  with ``torch.distributed``; the library would only average through
  ``accelerate``, which an mmengine run does not set up.
* **Weights.** ``loss_cls``, ``loss_mask`` and ``loss_dice`` come back already
  multiplied by ``class_weight``, ``mask_weight`` and ``dice_weight`` (EoMT's
  ``loss_total``); the same three weights are the matcher's costs.

An image without any labelled pixel (all ``ignore_index``) has no target: all
its queries are trained towards "no object" (weight ``no_object_weight``) and it
adds nothing to the mask terms. When no image of the batch (on any rank) has a
target, ``loss_mask`` and ``loss_dice`` are zero, still attached to the graph.
EoMT never sees such an image (its data pipeline re-draws a crop without a mask
and drops images without targets); here it must not crash, and it does not.

Needs the optional packages ``transformers`` and ``scipy`` (the matcher's
``linear_sum_assignment``): ``pip install -e ".[optional]"``.
"""
from typing import Dict, List, Tuple

import torch
import torch.nn as nn
from mmengine.dist import all_reduce, get_world_size
from mmseg.registry import MODELS
from torch import Tensor

__all__ = ['MaskClassificationLoss', 'semantic_to_mask_targets']

_INSTALL_HINT = ('pip install -e ".[optional]" in the DToP checkout, or '
                 'pip install transformers scipy')


def _library_loss(config_kwargs: Dict) -> nn.Module:
    """``transformers``' ``Mask2FormerLoss`` built from ``Mask2FormerConfig`` fields.

    Raises:
        ImportError: ``transformers`` (or ``scipy``) is not installed.
    """
    try:
        from transformers import Mask2FormerConfig
        from transformers.models.mask2former.modeling_mask2former import Mask2FormerLoss
    except ImportError as e:
        raise ImportError(f'MaskClassificationLoss needs the optional package '
                          f'transformers ({e}); {_INSTALL_HINT}.') from e
    try:
        return Mask2FormerLoss(Mask2FormerConfig(**config_kwargs), weight_dict={})
    except ImportError as e:  # requires_backends(scipy)
        raise ImportError(f'MaskClassificationLoss needs scipy for its Hungarian '
                          f'matcher ({e}); {_INSTALL_HINT}.') from e


def semantic_to_mask_targets(seg_label: Tensor, ignore_index: int = 255
                             ) -> Tuple[List[Tensor], List[Tensor]]:
    """Per-image mask-classification targets of a semantic label map.

    Args:
        seg_label (Tensor): ``(B, H, W)`` integer labels.
        ignore_index (int): label of unlabelled pixels; it gets no mask.

    Returns:
        tuple[list[Tensor], list[Tensor]]: for image ``i``, ``masks[i]`` of
        shape ``(n_i, H, W)`` (float32, 1 where the pixel has the class) and
        ``labels[i]`` of shape ``(n_i,)`` (int64), one entry per class present,
        in increasing class order; ``n_i = 0`` for an all-ignore image.
    """
    if seg_label.dim() != 3:
        raise ValueError(f'seg_label must be (B, H, W), got {tuple(seg_label.shape)}')
    masks, labels = [], []
    for label in seg_label.long():
        classes = torch.unique(label)
        classes = classes[classes != ignore_index]
        masks.append((label[None] == classes[:, None, None]).float())
        labels.append(classes)
    return masks, labels


@MODELS.register_module()
class MaskClassificationLoss(nn.Module):
    """Mask2Former / EoMT loss on semantic labels (module docstring).

    Defaults are EoMT's (and ``transformers``' ``EomtConfig``'s).

    Args:
        num_classes (int): ``K``; the class logits have ``K + 1`` entries, the
            last one "no object".
        class_weight (float): weight of ``loss_cls`` and of the matcher's class
            cost. Default 2.0.
        mask_weight (float): weight of ``loss_mask`` (sigmoid BCE) and of its
            matching cost. Default 5.0.
        dice_weight (float): weight of ``loss_dice`` and of its matching cost.
            Default 5.0.
        no_object_weight (float): cross-entropy weight of the "no object"
            class. Default 0.1.
        num_points (int): points sampled per mask for the mask terms and the
            matcher. Default 12544 (112 * 112).
        oversample_ratio (float): candidates per point of the
            uncertainty-based sampling. Default 3.0.
        importance_sample_ratio (float): share of the points taken from the most
            uncertain candidates (the rest uniformly). Default 0.75.
        ignore_index (int): label of unlabelled pixels. Default 255.
    """

    def __init__(self,
                 num_classes: int,
                 class_weight: float = 2.0,
                 mask_weight: float = 5.0,
                 dice_weight: float = 5.0,
                 no_object_weight: float = 0.1,
                 num_points: int = 12544,
                 oversample_ratio: float = 3.0,
                 importance_sample_ratio: float = 0.75,
                 ignore_index: int = 255) -> None:
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) \
                or num_classes < 1:
            raise ValueError(f'MaskClassificationLoss: num_classes must be an integer '
                             f'>= 1, got {num_classes!r}')
        self.num_classes = num_classes
        self.class_weight = float(class_weight)
        self.mask_weight = float(mask_weight)
        self.dice_weight = float(dice_weight)
        self.ignore_index = ignore_index
        self._library_kwargs = dict(
            num_labels=num_classes, no_object_weight=float(no_object_weight),
            class_weight=self.class_weight, mask_weight=self.mask_weight,
            dice_weight=self.dice_weight, train_num_points=int(num_points),
            oversample_ratio=float(oversample_ratio),
            importance_sample_ratio=float(importance_sample_ratio))

    @property
    def criterion(self) -> nn.Module:
        """The library's loss, built at the first use: a model that only predicts
        (an EoMT checkpoint at test time) needs no ``transformers``. It is kept out
        of the module tree (its no-object weights derive from the arguments, so they
        stay out of checkpoints)."""
        crit = self.__dict__.get('_criterion')
        if crit is None:
            crit = _library_loss(self._library_kwargs)
            self.__dict__['_criterion'] = crit
        return crit

    def _check(self, mask_logits: Tensor, class_logits: Tensor, labels: Tensor) -> None:
        if mask_logits.dim() != 4 or class_logits.dim() != 3:
            raise ValueError(f'expected mask_logits (B, Q, h, w) and class_logits '
                             f'(B, Q, K+1), got {tuple(mask_logits.shape)} and '
                             f'{tuple(class_logits.shape)}')
        if mask_logits.shape[:2] != class_logits.shape[:2] \
                or labels.shape[0] != mask_logits.shape[0]:
            raise ValueError(f'batch/query sizes differ: mask_logits '
                             f'{tuple(mask_logits.shape)}, class_logits '
                             f'{tuple(class_logits.shape)}, seg_label {tuple(labels.shape)}')
        if class_logits.shape[-1] != self.num_classes + 1:
            raise ValueError(f'MaskClassificationLoss has num_classes={self.num_classes} '
                             f'but the class logits have {class_logits.shape[-1]} entries '
                             f'(expected num_classes + 1, the last one "no object")')
        real = labels[labels != self.ignore_index]
        if real.numel() and (int(real.min()) < 0 or int(real.max()) >= self.num_classes):
            raise ValueError(f'label values must be in [0, {self.num_classes}) or '
                             f'{self.ignore_index}; got {real.unique().tolist()[:10]}. '
                             'Check num_classes and reduce_zero_label.')

    @staticmethod
    def _num_masks(indices: List[Tuple[Tensor, Tensor]], device: torch.device) -> Tensor:
        """Matched masks of the batch, averaged over ranks, at least 1."""
        num = torch.as_tensor(float(sum(len(tgt) for _, tgt in indices)), device=device)
        if get_world_size() > 1:
            all_reduce(num, op='mean')
        return num.clamp(min=1)

    def forward(self, mask_logits: Tensor, class_logits: Tensor,
                seg_label: Tensor) -> Dict[str, Tensor]:
        """Weighted loss terms.

        Args:
            mask_logits (Tensor): ``(B, Q, h, w)`` mask logits, any resolution.
            class_logits (Tensor): ``(B, Q, K + 1)`` class logits.
            seg_label (Tensor): ``(B, H, W)`` (or ``(B, 1, H, W)``) long labels.

        Returns:
            dict[str, Tensor]: ``loss_cls``, ``loss_mask``, ``loss_dice``, each
            multiplied by its weight.
        """
        labels = seg_label.squeeze(1) if seg_label.dim() == 4 else seg_label
        self._check(mask_logits, class_logits, labels)
        masks, classes = semantic_to_mask_targets(labels, self.ignore_index)
        masks = [m.to(mask_logits.dtype) for m in masks]
        crit = self.criterion.to(class_logits.device)
        indices = crit.matcher(masks_queries_logits=mask_logits,
                               class_queries_logits=class_logits,
                               mask_labels=masks, class_labels=classes)
        num_masks = self._num_masks(indices, mask_logits.device)
        terms = crit.loss_masks(mask_logits, masks, indices, num_masks)
        terms.update(crit.loss_labels(class_logits, classes, indices))
        return dict(loss_cls=self.class_weight * terms['loss_cross_entropy'],
                    loss_mask=self.mask_weight * terms['loss_mask'],
                    loss_dice=self.dice_weight * terms['loss_dice'])
