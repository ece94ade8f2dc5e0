"""DToPEncoderDecoder: dense equivalence, batch equivalence, fast path vs reference,
gradients through the canvas, arbitrary grids."""
import copy

import pytest
import torch
from mmseg.models.segmentors import EncoderDecoder
from mmseg.registry import MODELS

import dtop  # noqa: F401
from dtop.models.pruning import ConfidenceThreshold
from tests.utils.tiny_models import tiny_model_cfg
from tests.utils.tiny_segmentor import (NUM_CLASSES, build, check_batch_equals_images_one_by_one,
                                        check_ragged_batch_equals_images_alone,
                                        check_threshold_one_equals_dense, images,
                                        samples_with_labels, without_dropout)
from test_pruning_rule import reference_exits


def test_threshold_one_equals_dense_model():
    check_threshold_one_equals_dense(build(prune_threshold=1.0), images(2),
                                     rtol=1e-5, atol=1e-6)


def test_pruning_disabled_by_none_and_above_one():
    x = images(2)
    with torch.no_grad():
        a = build(prune_threshold=None)._forward(x)
        b = build(prune_threshold=[1.5, 1.0])._forward(x)
        c = build(prune_threshold=1.0)._forward(x)
    assert torch.equal(a, c) and torch.equal(b, c)


@pytest.mark.parametrize('k', [1, 5])
def test_batch_equals_images_one_by_one(k):
    model = build(seed=1, prune_threshold=[0.55, 0.5], keep_topk_per_class=k,
                  img_size=(96, 96))
    check_batch_equals_images_one_by_one(model, images(4, 96, 96, seed=1),
                                         rtol=1e-5, atol=1e-5, map_atol=1e-6)


def reference_forward(model, img):
    """Recompute each stage literally on the gathered active tokens of one image."""
    bb = model.backbone
    x, (h, w) = bb.embed(img)
    N = h * w
    active = torch.arange(N)
    canvas = torch.zeros(1, NUM_CLASSES, N)
    counts = []
    for s, ((start, end), head) in enumerate(zip(bb.stage_ranges, model.stage_heads)):
        xa = x[:, active]
        for layer in bb.layers[start:end]:
            xa = layer(xa)  # mmseg's own layer: nn.MultiheadAttention, no masks
        x = x.clone()
        x[:, active] = xa
        counts.append(len(active))
        cls, mask = head(xa)
        canvas = canvas.clone()
        canvas[:, :, active] = mask
        p0 = model.prune_threshold[s] if s < len(model.stage_heads) - 1 else None
        if p0 is not None:
            scores = cls.softmax(-1)[..., 0, None] * mask.sigmoid()
            exits = reference_exits(scores, p0, model.keep_topk_per_class)[0]
            active = active[~exits]
    probs = cls.softmax(-1)[..., 0, None] * canvas.sigmoid()
    return probs.view(1, NUM_CLASSES, h, w), counts


@pytest.mark.parametrize('p0', [0.3, 0.6, 0.9])
def test_fast_path_equals_per_image_reference(p0):
    model = build(seed=2, prune_threshold=p0, keep_topk_per_class=2, img_size=(80, 96))
    x = images(3, 80, 96, seed=2)
    with torch.no_grad():
        fast = model.run_stages(x)
        for i in range(3):
            ref, counts = reference_forward(model, x[i:i + 1])
            assert fast.active_counts[i].tolist() == counts
            torch.testing.assert_close(fast.final_map[i:i + 1], ref, rtol=1e-5, atol=1e-6)
    assert (fast.active_counts[:, -1] < 30).all(), 'pruning did not happen'


def test_gradient_reaches_first_head_through_exited_canvas():
    model = build(seed=3, prune_threshold=0.5, keep_topk_per_class=1).train()
    for m in model.modules():  # deterministic selection for the test
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    x = images(2, seed=3)
    data = samples_with_labels(2, 64, 64)
    losses = model.loss(x, data)
    assert float(losses['prune.keep_ratio_s1']) < 1.0, 'nothing exited'
    model.zero_grad()
    sum(v for k, v in losses.items() if k.startswith('decode.loss')).backward()
    g = model.auxiliary_head[0].decoder.layers[-1].multihead_attn.k.weight.grad
    assert g is not None and g.abs().sum() > 0
    # Without pruning the decode loss does not depend on the first head at all.
    dense = build(seed=3, prune_threshold=1.0).train()
    losses = dense.loss(x, data)
    sum(v for k, v in losses.items() if k.startswith('decode.loss')).backward()
    g = dense.auxiliary_head[0].decoder.layers[-1].multihead_attn.k.weight.grad
    assert g is None or g.abs().sum() == 0


def test_loss_keys_and_finite():
    model = build(seed=4, prune_threshold=0.5).train()
    losses = model.loss(images(2, seed=4), samples_with_labels(2, 64, 64, seed=4))
    for prefix in ('aux_0', 'aux_1', 'decode'):
        for term in ('loss_ce', 'loss_mask', 'loss_dice', 'acc_seg'):
            assert torch.isfinite(losses[f'{prefix}.{term}']).all()
    assert 'prune.keep_ratio_s2' in losses


@pytest.mark.parametrize('mode', ['whole', 'slide'])
@pytest.mark.parametrize('hw', [(48, 80), (80, 112), (50, 70)])
def test_predict_any_grid(mode, hw):
    h, w = hw
    cfg_kwargs = dict(seed=5, prune_threshold=0.5, img_size=(48, 48), test_mode=mode)
    model = build(**cfg_kwargs)
    x = images(2, h, w, seed=5)
    data = samples_with_labels(2, h, w)
    for ds in data:
        ds.set_metainfo(dict(ori_shape=(h + 7, w - 3)))
    with torch.no_grad():
        results = model.predict(x, copy.deepcopy(data))
    for r in results:
        assert r.pred_sem_seg.data.shape == (1, h + 7, w - 3)
        assert r.seg_logits.data.shape == (NUM_CLASSES, h + 7, w - 3)
        stats = r.metainfo['dtop_stats']
        assert stats['exit_map'].shape == (h, w)
        assert stats['token_counts'].shape[1] == 3
        assert int(stats['exit_map'].max()) <= 2


def test_slide_equals_mmseg_window_loop():
    """Batched crops give what mmseg's crop-by-crop loop gives."""
    model = build(seed=6, prune_threshold=0.5, img_size=(48, 48), test_mode='slide')
    x = images(2, 80, 112, seed=6)
    metas = [dict(ori_shape=(80, 112), img_shape=(80, 112))] * 2
    with torch.no_grad():
        ours = model.slide_inference(x, metas)
        mmseg_loop = EncoderDecoder.slide_inference(model, x, copy.deepcopy(metas))
    torch.testing.assert_close(ours, mmseg_loop, rtol=1e-5, atol=1e-6)


def test_config_errors_are_clear():
    cfg = tiny_model_cfg(num_classes=NUM_CLASSES)
    bad = copy.deepcopy(cfg)
    bad['auxiliary_head'] = bad['auxiliary_head'][:1]
    with pytest.raises(ValueError, match='auxiliary heads'):
        MODELS.build(bad)
    bad = copy.deepcopy(cfg)
    bad['prune_threshold'] = [0.9]
    with pytest.raises(ValueError, match='prune_threshold'):
        MODELS.build(bad)
    bad = copy.deepcopy(cfg)
    bad['prune_threshold'] = -0.1
    with pytest.raises(ValueError, match='prune_threshold'):
        MODELS.build(bad)
    bad = copy.deepcopy(cfg)
    bad['decode_head']['in_channels'] = 48
    with pytest.raises(ValueError, match='in_channels'):
        MODELS.build(bad)


@pytest.mark.parametrize('p0', [1.0, [0.5, None], [None, 0.5]])
def test_skipping_idle_aux_heads_changes_nothing(p0):
    model = build(seed=7, prune_threshold=p0)
    x = images(3, seed=7)
    with torch.no_grad():
        skipped = model.run_stages(x)
        full = model.run_stages(x, all_heads=True)
    expect = tuple(t is not None for t in model.prune_threshold) + (True, )
    assert skipped.heads_run == expect
    assert full.heads_run == (True, True, True)
    assert torch.equal(skipped.active_counts, full.active_counts)
    torch.testing.assert_close(skipped.final_map, full.final_map, rtol=0, atol=0)


def test_slide_exit_map_takes_the_latest_stage_over_overlapping_crops():
    model = build(seed=8, prune_threshold=0.3, keep_topk_per_class=1, img_size=(48, 48),
                  test_mode='slide')
    x = images(1, 80, 112, seed=8)
    with torch.no_grad():
        _, stats = model.inference(x, [dict(ori_shape=(80, 112))], return_stats=True)
        exit_map = stats[0]['exit_map']
        # The same windows, one crop at a time, combined by hand.
        expect = torch.zeros(80, 112, dtype=torch.uint8)
        for y1, x1 in [(0, 0), (0, 24), (0, 48), (0, 64), (24, 0), (24, 24), (24, 48),
                       (24, 64), (32, 0), (32, 24), (32, 48), (32, 64)]:
            out = model.run_stages(x[:, :, y1:y1 + 48, x1:x1 + 48])
            crop = out.exit_stage[0].repeat_interleave(16, 0).repeat_interleave(16, 1)
            region = expect[y1:y1 + 48, x1:x1 + 48]
            expect[y1:y1 + 48, x1:x1 + 48] = torch.maximum(region, crop.to(torch.uint8))
    assert torch.equal(exit_map, expect)
    assert exit_map.min() < 2, 'no token exited; test is vacuous'


def test_pruned_features_keep_exited_tokens_and_match_single_images():
    model = build(seed=2, prune_threshold=0.5, keep_topk_per_class=2, img_size=(80, 96))
    x = images(3, 80, 96, seed=2)
    with torch.no_grad():
        out = model.run_stages(x, with_features=True)
        # extract_feat is mmseg's: the backbone's dense features, as the stage
        # loop's features with pruning disabled
        feats = model.extract_feat(x)
        model.prune_threshold = None
        dense = model.run_stages(x, with_features=True)
        model.prune_threshold = 0.5
        for a, b in zip(feats, dense.features):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        exited_first = out.exit_stage == 0  # (B, h, w)
        assert exited_first.any(), 'nothing exited; test is vacuous'
        for f in out.features[1:]:  # an exited token keeps its stage-0 feature
            assert torch.equal(f.permute(0, 2, 3, 1)[exited_first],
                               out.features[0].permute(0, 2, 3, 1)[exited_first])
        for i in range(3):
            single = model.run_stages(x[i:i + 1], with_features=True)
            for a, b in zip(out.features, single.features):
                torch.testing.assert_close(a[i:i + 1], b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('backend', ['loop', 'padded', 'auto'])
def test_packed_ragged_batch_equals_images_alone_with_gradients(backend):
    """Ragged batch (very different counts, one image with no token left after
    stage 0): outputs and parameter gradients equal the images run one by one."""
    model = without_dropout(build(seed=9, prune_threshold=0.5).train())
    model.backbone.attention_backend = backend
    counts = check_ragged_batch_equals_images_alone(model, images(3, seed=9), map_rtol=1e-5,
                                                    map_atol=1e-6, grad_atol=1e-5)
    assert counts[1, 1] < 16 and counts[1, 2] < counts[1, 1]


def test_bf16_inference_matches_fp32_and_decides_in_fp32():
    model = build(seed=10, prune_threshold=0.5)
    x = images(2, seed=10)
    seen = []

    class Spy(ConfidenceThreshold):
        def __call__(self, stage, scores, segments):
            seen.append(scores.dtype)
            return super().__call__(stage, scores, segments)

    model.set_exit_policy(Spy(0.5, model.keep_topk_per_class))
    metas = [dict(ori_shape=(64, 64), img_shape=(64, 64))] * 2
    with torch.no_grad():
        ref, ref_stats = model.inference(x, metas, return_stats=True)
        model.test_cfg.precision = 'bf16'
        got, stats = model.inference(x, metas, return_stats=True)
    assert seen and all(dt == torch.float32 for dt in seen)
    assert got.dtype == torch.float32
    agree = (got.argmax(1) == ref.argmax(1)).float().mean()
    assert agree > 0.95, f'bf16 and fp32 predictions agree on only {agree:.2%}'
    assert (got - ref).abs().max() < 0.1
    with pytest.raises(ValueError, match='precision'):
        MODELS.build(dict(tiny_model_cfg(num_classes=NUM_CLASSES),
                          test_cfg=dict(mode='whole', precision='int8')))
