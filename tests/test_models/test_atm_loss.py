"""ATMLoss (2-way present/no-object CE with no-object weight 0.1, 20 x focal, 1 x dice;
docs/method.md) against a plain per-image, per-query reference."""
import pytest
import torch
import torch.nn.functional as F

import dtop  # noqa: F401
from dtop.models.losses import ATMLoss


def reference(cls_logits, masks, labels, ignore_as_negative=True):
    B, Q = cls_logits.shape[:2]
    ce_num, ce_den = 0.0, 0.0
    focal, dice, num_masks = 0.0, 0.0, 0
    for b in range(B):
        present = {int(v) for v in labels[b].unique() if int(v) != 255}
        for c in range(Q):
            target = 0 if c in present else 1
            w = 1.0 if target == 0 else 0.1
            ce_num += w * float(F.cross_entropy(cls_logits[b, c][None], torch.tensor([target])))
            ce_den += w
        for c in sorted(present):
            num_masks += 1
            x = masks[b, c].flatten()
            t = (labels[b] == c).flatten().float()
            keep = torch.ones_like(t) if ignore_as_negative else \
                (labels[b] != 255).flatten().float()
            p = x.sigmoid()
            ce = F.binary_cross_entropy_with_logits(x, t, reduction='none')
            pt = p * t + (1 - p) * (1 - t)
            fl = (0.25 * t + 0.75 * (1 - t)) * ce * (1 - pt) ** 2
            focal += float((fl * keep).sum() / keep.sum())
            p, t = p * keep, t * keep
            dice += float(1 - (2 * (p * t).sum() + 1) / (p.sum() + t.sum() + 1))
    n = max(num_masks, 1)
    return ce_num / ce_den, 20 * focal / n, dice / n


@pytest.mark.parametrize('ignore_as_negative', [True, False])
def test_atm_loss_matches_reference(ignore_as_negative):
    g = torch.Generator().manual_seed(0)
    cls = torch.randn(3, 6, 2, generator=g)
    masks = torch.randn(3, 6, 10, 12, generator=g)
    labels = torch.randint(0, 4, (3, 10, 12), generator=g)
    labels[0, :3] = 255
    labels[2] = 5  # a single class
    labels[2, 0, 0] = 255
    loss = ATMLoss(num_classes=6, ignore_as_negative=ignore_as_negative)
    out = loss(cls, masks, labels)
    ce, focal, dice = reference(cls, masks, labels, ignore_as_negative)
    assert out['loss_ce'].item() == pytest.approx(ce, rel=1e-5)
    assert out['loss_mask'].item() == pytest.approx(focal, rel=1e-5)
    assert out['loss_dice'].item() == pytest.approx(dice, rel=1e-5)


def test_all_ignored_image_gives_finite_zero_mask_loss():
    cls = torch.randn(1, 3, 2, requires_grad=True)
    masks = torch.randn(1, 3, 4, 4, requires_grad=True)
    labels = torch.full((1, 4, 4), 255)
    out = ATMLoss(num_classes=3)(cls, masks, labels)
    assert out['loss_mask'].item() == 0 and out['loss_dice'].item() == 0
    sum(out.values()).backward()
    assert torch.isfinite(cls.grad).all()


def test_bad_labels_raise_clear_error():
    with pytest.raises(ValueError, match='reduce_zero_label'):
        ATMLoss(num_classes=3)(torch.randn(1, 3, 2), torch.randn(1, 3, 4, 4),
                               torch.full((1, 4, 4), 7))
