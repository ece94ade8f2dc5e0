"""MaskClassificationLoss: transformers' Mask2FormerLoss on targets made from a
semantic label map (weights 2 / 5 / 5, no-object weight 0.1, point sampling)."""
import pytest
import torch

pytest.importorskip('transformers')
pytest.importorskip('scipy')

from transformers import Mask2FormerConfig  # noqa: E402
from transformers.models.mask2former.modeling_mask2former import \
    Mask2FormerLoss  # noqa: E402

from dtop.models.losses import (MaskClassificationLoss,  # noqa: E402
                                semantic_to_mask_targets)

K = 5        # classes
POINTS = 96  # small, the point sampling stays random but cheap


def _inputs(seed, B=3, Q=7, h=6, w=8, H=24, W=32):
    g = torch.Generator().manual_seed(seed)
    mask_logits = torch.randn(B, Q, h, w, generator=g)
    class_logits = torch.randn(B, Q, K + 1, generator=g)
    labels = torch.randint(0, K, (B, H, W), generator=g)
    labels[0, :5] = 255          # some ignored pixels
    labels[1] = 3                # a single class ...
    labels[1, 10:, 20:] = 255    # ... and an ignored block
    return mask_logits, class_logits, labels


def _library(loss_kwargs=None):
    cfg = Mask2FormerConfig(num_labels=K, train_num_points=POINTS, **(loss_kwargs or {}))
    return Mask2FormerLoss(cfg, weight_dict={})


def test_targets_helper_on_a_hand_checked_map():
    label = torch.tensor([[[2, 2, 255],
                           [0, 2, 255]],
                          [[255, 255, 255],
                           [255, 255, 255]]])
    masks, classes = semantic_to_mask_targets(label, ignore_index=255)
    assert classes[0].tolist() == [0, 2]
    assert classes[0].dtype == torch.long
    assert masks[0].dtype == torch.float32 and masks[0].shape == (2, 2, 3)
    assert masks[0][0].tolist() == [[0, 0, 0], [1, 0, 0]]
    assert masks[0][1].tolist() == [[1, 1, 0], [0, 1, 0]]
    # all-ignore image: no target at all
    assert masks[1].shape == (0, 2, 3) and classes[1].numel() == 0
    # ignored pixels are in no mask
    assert float(masks[0][:, :, 2].sum()) == 0


@pytest.mark.parametrize('seed', [0, 1])
def test_equals_library_loss_times_weights(seed):
    mask_logits, class_logits, labels = _inputs(seed)
    ours = MaskClassificationLoss(num_classes=K, num_points=POINTS)
    masks, classes = semantic_to_mask_targets(labels, 255)
    torch.manual_seed(100 + seed)
    ref = _library()(mask_logits, class_logits, masks, classes)
    torch.manual_seed(100 + seed)
    out = ours(mask_logits, class_logits, labels)
    assert set(out) == {'loss_cls', 'loss_mask', 'loss_dice'}
    torch.testing.assert_close(out['loss_cls'], 2.0 * ref['loss_cross_entropy'])
    torch.testing.assert_close(out['loss_mask'], 5.0 * ref['loss_mask'])
    torch.testing.assert_close(out['loss_dice'], 5.0 * ref['loss_dice'])
    # (B, 1, H, W) labels, as stacked from mmseg data samples, give the same
    torch.manual_seed(100 + seed)
    out4 = ours(mask_logits, class_logits, labels[:, None])
    for k in out:
        torch.testing.assert_close(out4[k], out[k])


def test_custom_weights_reach_library_and_matcher():
    mask_logits, class_logits, labels = _inputs(3)
    kw = dict(class_weight=1.0, mask_weight=3.0, dice_weight=0.5, no_object_weight=0.2,
              oversample_ratio=2.0, importance_sample_ratio=0.5)
    ours = MaskClassificationLoss(num_classes=K, num_points=POINTS, **kw)
    assert ours.criterion.matcher.cost_mask == 3.0
    assert ours.criterion.empty_weight[-1].item() == pytest.approx(0.2)
    masks, classes = semantic_to_mask_targets(labels, 255)
    torch.manual_seed(7)
    ref = _library(kw)(mask_logits, class_logits, masks, classes)
    torch.manual_seed(7)
    out = ours(mask_logits, class_logits, labels)
    torch.testing.assert_close(out['loss_cls'], 1.0 * ref['loss_cross_entropy'])
    torch.testing.assert_close(out['loss_mask'], 3.0 * ref['loss_mask'])
    torch.testing.assert_close(out['loss_dice'], 0.5 * ref['loss_dice'])


def test_defaults_are_eomt_config_defaults():
    from transformers import EomtConfig
    cfg = EomtConfig()
    loss = MaskClassificationLoss(num_classes=K)
    crit = loss.criterion
    assert (loss.class_weight, loss.mask_weight, loss.dice_weight) == \
        (cfg.class_weight, cfg.mask_weight, cfg.dice_weight)
    assert crit.eos_coef == cfg.no_object_weight
    assert crit.num_points == cfg.train_num_points
    assert crit.oversample_ratio == cfg.oversample_ratio
    assert crit.importance_sample_ratio == cfg.importance_sample_ratio
    assert loss.ignore_index == 255
    # the derived no-object weights are not saved in checkpoints
    assert 'criterion.empty_weight' not in loss.state_dict()


@pytest.mark.parametrize('seed', [0, 1])
def test_query_permutation_leaves_loss_unchanged(seed):
    mask_logits, class_logits, labels = _inputs(20 + seed, B=2, Q=10)
    loss = MaskClassificationLoss(num_classes=K, num_points=POINTS)
    masks, classes = semantic_to_mask_targets(labels, 255)
    torch.manual_seed(seed)
    indices = loss.criterion.matcher(mask_logits, class_logits, masks, classes)
    matched = sorted({int(q) for src, _ in indices for q in src})
    # Move every query matched in no image to the front. The point sampling of
    # the mask terms draws one set of points per matched pair in query order,
    # so the matched queries keep their relative order (they change position).
    perm = torch.tensor([q for q in range(10) if q not in matched] + matched)
    assert not torch.equal(perm, torch.arange(10))
    torch.manual_seed(seed)
    out = loss(mask_logits, class_logits, labels)
    torch.manual_seed(seed)
    out_p = loss(mask_logits[:, perm], class_logits[:, perm], labels)
    for k in out:
        torch.testing.assert_close(out_p[k], out[k])
    # the matching follows the queries to their new positions
    torch.manual_seed(seed)
    indices_p = loss.criterion.matcher(mask_logits[:, perm], class_logits[:, perm],
                                       masks, classes)
    for (src, tgt), (src_p, tgt_p) in zip(indices, indices_p):
        assert dict(zip(src.tolist(), tgt.tolist())) == \
            dict(zip(perm[src_p].tolist(), tgt_p.tolist()))


def test_ignored_pixels_are_negatives_not_targets():
    # class 0 on the top half; the bottom half ignored or also class 0
    half = torch.zeros(1, 64, 64, dtype=torch.long)
    half[0, 32:] = 255
    full = torch.zeros(1, 64, 64, dtype=torch.long)
    masks, classes = semantic_to_mask_targets(half, 255)
    assert classes[0].tolist() == [0] and masks[0].sum().item() == 32 * 64
    # query 0: "class 0, everywhere" (constant logits; the library's point
    # sampling pads with zeros, so a thin border is soft); query 1: "no object"
    cls = torch.full((1, 2, K + 1), -10.0)
    cls[0, 0, 0] = 10.0
    cls[0, 1, K] = 10.0
    everywhere = torch.full((1, 2, 64, 64), 20.0)
    loss = MaskClassificationLoss(num_classes=K, num_points=POINTS)
    torch.manual_seed(0)
    on_full = loss(everywhere, cls, full)
    torch.manual_seed(0)
    on_half = loss(everywhere, cls, half)
    # the ignored half counts as negatives of the matched mask: about half the
    # points cost BCE(20, 0) = 20, times mask_weight 5
    assert 25 < on_half['loss_mask'] < 75
    assert on_half['loss_mask'] > 10 * on_full['loss_mask']
    assert on_half['loss_dice'] > 3 * on_full['loss_dice']
    torch.testing.assert_close(on_half['loss_cls'], on_full['loss_cls'])


def test_all_ignore_image_does_not_crash():
    mask_logits, class_logits, labels = _inputs(6)
    labels[2] = 255
    loss = MaskClassificationLoss(num_classes=K, num_points=POINTS)
    out = loss(mask_logits, class_logits, labels)
    assert all(torch.isfinite(v) for v in out.values())
    # every image of the batch all-ignore: mask terms 0, all queries "no object"
    ml = mask_logits.clone().requires_grad_()
    cl = class_logits.clone().requires_grad_()
    out = loss(ml, cl, torch.full_like(labels, 255))
    assert out['loss_mask'].item() == 0 and out['loss_dice'].item() == 0
    target = torch.full(cl.shape[:2], K)
    expected = torch.nn.functional.cross_entropy(
        class_logits.transpose(1, 2), target, weight=loss.criterion.empty_weight)
    torch.testing.assert_close(out['loss_cls'], 2.0 * expected)
    sum(out.values()).backward()
    assert cl.grad.abs().sum() > 0 and ml.grad is not None


def test_gradient_reaches_both_logits():
    mask_logits, class_logits, labels = _inputs(8)
    ml = mask_logits.requires_grad_()
    cl = class_logits.requires_grad_()
    out = MaskClassificationLoss(num_classes=K, num_points=POINTS)(ml, cl, labels)
    sum(out.values()).backward()
    assert ml.grad.abs().sum() > 0 and cl.grad.abs().sum() > 0
    assert torch.isfinite(ml.grad).all() and torch.isfinite(cl.grad).all()


def test_bad_inputs_are_reported():
    mask_logits, class_logits, labels = _inputs(9)
    loss = MaskClassificationLoss(num_classes=K, num_points=POINTS)
    with pytest.raises(ValueError, match='num_classes'):
        loss(mask_logits, class_logits[..., :K], labels)
    bad = labels.clone()
    bad[0, 0, 0] = K
    with pytest.raises(ValueError, match='reduce_zero_label'):
        loss(mask_logits, class_logits, bad)
    with pytest.raises(ValueError, match='batch/query'):
        loss(mask_logits[:, :3], class_logits, labels)
    with pytest.raises(ValueError, match='num_classes'):
        MaskClassificationLoss(num_classes=0)


def test_registered_and_missing_library_message(monkeypatch):
    import sys

    from mmseg.registry import MODELS

    import dtop  # noqa: F401
    assert isinstance(MODELS.build(dict(type='MaskClassificationLoss', num_classes=K)),
                      MaskClassificationLoss)
    monkeypatch.setitem(sys.modules, 'transformers', None)
    loss = MaskClassificationLoss(num_classes=K)  # building needs no transformers...
    with pytest.raises(ImportError, match=r'pip install -e "\.\[optional\]"'):
        loss(torch.randn(1, 3, 8, 8), torch.randn(1, 3, K + 1),
             torch.randint(K, (1, 8, 8)))  # ...computing it does


def test_eomt_model_predicts_without_transformers(monkeypatch):
    """An EoMT model builds and predicts with transformers missing (inference needs
    only the training loss's library when it trains)."""
    import sys

    from mmseg.registry import MODELS

    from tests.utils.tiny_models import tiny_model_cfg
    monkeypatch.setitem(sys.modules, 'transformers', None)
    model = MODELS.build(tiny_model_cfg('eomt', prune_threshold=0.5)).eval()
    model.init_weights()
    with torch.no_grad():
        probs = model(torch.randn(2, 3, 64, 64), mode='tensor')
    assert probs.shape == (2, 5, 64, 64) and torch.isfinite(probs).all()
