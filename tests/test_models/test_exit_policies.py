"""The exit policies (dtop/models/pruning/policies.py) on ragged packed batches, and
a model whose config selects one."""
import pytest
import torch
from mmseg.registry import MODELS

import dtop  # noqa: F401
from dtop.models.packing import Segments
from dtop.models.pruning import (ConfidenceThreshold, FixedKeepRatio, RandomExit,
                                 build_exit_policy, select_exits_packed)
from dtop.utils.errors import OptionError
from tests.utils.tiny_models import tiny_model_cfg

# ragged: an empty image, a single token, short and long ones
LENGTHS = [7, 0, 13, 1, 20, 64, 5]
NUM_CLASSES = 6


def fresh_scores(lengths, seed, num_classes=NUM_CLASSES, sharp=4.0):
    """``(T, Q)`` class probabilities of packed tokens, and their ``Segments``."""
    g = torch.Generator().manual_seed(seed)
    segs = Segments.from_lengths(lengths, 'cpu')
    logits = torch.randn(segs.total, num_classes, generator=g) * sharp
    return logits.softmax(-1), segs


def per_image(mask, segs):
    return [int(v) for v in torch.bincount(segs.batch_index[mask],
                                           minlength=segs.batch_size)]


# ------------------------------------------------------------------ ConfidenceThreshold


@pytest.mark.parametrize('seed', range(4))
@pytest.mark.parametrize('topk', [0, 1, 5])
def test_confidence_threshold_equals_select_exits_packed(seed, topk):
    scores, segs = fresh_scores(LENGTHS, seed)
    policy = ConfidenceThreshold([0.5, 0.9, None], topk).bind(4)
    assert [policy.prunes_at(s) for s in range(3)] == [True, True, False]
    assert policy.prunes
    for stage, p0 in ((0, 0.5), (1, 0.9)):
        got = policy(stage, scores, segs)
        want = select_exits_packed(scores, segs, p0, topk)
        assert got.dtype == torch.bool and torch.equal(got, want)
        assert got.any() and not got.all()  # a real decision
    # uniform batches take the unpadded path of the rule
    scores, segs = fresh_scores([16] * 3, seed)
    torch.testing.assert_close(policy(0, scores, segs),
                               select_exits_packed(scores, segs, 0.5, topk))


def test_confidence_threshold_disabled_stages():
    policy = ConfidenceThreshold(None).bind(3)
    assert policy.thresholds == [None, None] and not policy.prunes
    policy = ConfidenceThreshold(1.0).bind(3)
    assert not policy.prunes
    assert ConfidenceThreshold([0.9, 0.8, 0.7]).bind(3).thresholds == [0.9, 0.8]


# ------------------------------------------------------------------ FixedKeepRatio


@pytest.mark.parametrize('seed', range(3))
@pytest.mark.parametrize('by', ['score', 'random'])
@pytest.mark.parametrize('ratio', [0.0, 0.25, 0.5, 0.6, 1.0])
def test_fixed_keep_ratio_keeps_exactly_round_r_n(seed, by, ratio):
    scores, segs = fresh_scores(LENGTHS, seed)
    policy = FixedKeepRatio(ratio, by=by, seed=seed).bind(3)
    assert policy.prunes_at(0) == (ratio < 1)
    exits = policy(0, scores, segs)
    kept = per_image(~exits, segs)
    assert kept == [round(ratio * n) for n in LENGTHS]


@pytest.mark.parametrize('seed', range(3))
def test_fixed_keep_ratio_by_score_exits_the_most_confident(seed):
    scores, segs = fresh_scores(LENGTHS, seed)
    exits = FixedKeepRatio([0.4, 0.5], by='score').bind(3)(1, scores, segs)
    conf = scores.amax(1)
    for b, (c, e) in enumerate(zip(segs.split(conf), segs.split(exits))):
        assert int((~e).sum()) == round(0.5 * LENGTHS[b])
        if e.any() and (~e).any():
            assert c[e].min() >= c[~e].max()


@pytest.mark.parametrize('seed', range(3))
def test_fixed_keep_ratio_with_jitter(seed):
    lengths = [int(n) for n in torch.randint(0, 40, (50,),
                                             generator=torch.Generator().manual_seed(seed))]
    scores, segs = fresh_scores(lengths, seed)
    r, j = 0.5, 0.3
    policy = FixedKeepRatio(r, jitter=j, by='score', seed=seed).bind(2)
    assert policy.prunes_at(0)
    kept = per_image(~policy(0, scores, segs), segs)
    # the per-image ratios the policy draws from its seed: r + U(-j, j), clamped
    u = torch.rand(len(lengths), generator=torch.Generator().manual_seed(seed))
    ratios = (torch.full((len(lengths),), r) + (u * 2 - 1) * j).clamp(0, 1)
    want = torch.round(ratios * torch.tensor(lengths)).long().tolist()
    assert kept == want
    for n, k in zip(lengths, kept):
        assert round((r - j) * n) - 1 <= k <= round((r + j) * n) + 1
    assert len({k / n for n, k in zip(lengths, kept) if n >= 10}) > 3  # unequal ratios
    # jitter alone makes a ratio-1 stage prune
    assert FixedKeepRatio(1.0, jitter=0.1).bind(2).prunes_at(0)


def test_fixed_keep_ratio_random_is_seeded():
    scores, segs = fresh_scores(LENGTHS, 7)
    a = FixedKeepRatio(0.5, by='random', seed=3).bind(2)
    b = FixedKeepRatio(0.5, by='random', seed=3).bind(2)
    first = a(0, scores, segs)
    assert torch.equal(first, b(0, scores, segs))
    assert not torch.equal(a(0, scores, segs), first)  # the stream moves on
    a.reset()
    assert torch.equal(a(0, scores, segs), first)
    by_score = FixedKeepRatio(0.5, by='score').bind(2)(0, scores, segs)
    assert not torch.equal(first, by_score)


# ------------------------------------------------------------------ RandomExit


@pytest.mark.parametrize('p', [0.1, 0.3, 0.75])
def test_random_exit_fraction_and_seed(p):
    lengths = [1000] * 50 + [3, 0, 977]
    scores, segs = fresh_scores(lengths, 1, num_classes=2)
    policy = RandomExit(p, seed=11).bind(3)
    exits = policy(1, scores, segs)
    frac = exits.float().mean().item()
    assert abs(frac - p) < 0.01  # ~51k tokens: std < 0.002
    again = RandomExit(p, seed=11).bind(3)(1, scores, segs)
    assert torch.equal(exits, again)
    assert not torch.equal(exits, RandomExit(p, seed=12).bind(3)(1, scores, segs))
    policy.reset()
    assert torch.equal(policy(1, scores, segs), exits)


def test_random_exit_extremes_and_per_stage():
    scores, segs = fresh_scores(LENGTHS, 0)
    policy = RandomExit([0.0, 1.0]).bind(3)
    assert not policy.prunes_at(0) and policy.prunes_at(1)
    assert policy(1, scores, segs).all()


# ------------------------------------------------------------------ bad arguments


@pytest.mark.parametrize('make, name', [
    (lambda: FixedKeepRatio(1.5).bind(3), 'FixedKeepRatio: ratio'),
    (lambda: FixedKeepRatio(-0.1).bind(3), 'FixedKeepRatio: ratio'),
    (lambda: FixedKeepRatio([0.5, 0.5, 0.5]).bind(3), 'FixedKeepRatio: ratio'),
    (lambda: FixedKeepRatio('half').bind(3), 'FixedKeepRatio: ratio'),
    (lambda: FixedKeepRatio(0.5, by='confidence'), 'FixedKeepRatio: by'),
    (lambda: FixedKeepRatio(0.5, jitter=-0.2), 'FixedKeepRatio: jitter'),
    (lambda: FixedKeepRatio(0.5, jitter=True), 'FixedKeepRatio: jitter'),
    (lambda: RandomExit(1.2).bind(3), 'RandomExit: p'),
    (lambda: RandomExit([0.1] * 3).bind(3), 'RandomExit: p'),
    (lambda: ConfidenceThreshold(0.9, topk=-1), 'keep_topk_per_class'),
    (lambda: ConfidenceThreshold('abc').bind(3), 'prune_threshold'),
    (lambda: ConfidenceThreshold(float('nan')).bind(3), 'prune_threshold'),
    (lambda: ConfidenceThreshold([0.9] * 5).bind(3), 'prune_threshold'),
    (lambda: build_exit_policy(dict(type='FixedKeepRatio', ratio=2.0), 3),
     'FixedKeepRatio: ratio'),
    (lambda: build_exit_policy('FixedKeepRatio', 3), 'exit_policy'),
    (lambda: build_exit_policy(dict(type='ATMLoss', num_classes=3), 3), 'exit_policy'),
])
def test_bad_arguments_name_the_argument(make, name):
    with pytest.raises(OptionError, match=name) as info:
        make()
    assert isinstance(info.value, ValueError)


def test_bad_policy_in_model_config():
    cfg = tiny_model_cfg(num_classes=5)
    cfg['exit_policy'] = dict(type='RandomExit', p=[0.1, 0.2, 0.3])
    with pytest.raises(OptionError, match='RandomExit: p'):
        MODELS.build(cfg)


# ------------------------------------------------------------------ in a model


def build_model(**policy):
    torch.manual_seed(0)
    cfg = tiny_model_cfg(num_classes=5)
    cfg['exit_policy'] = policy
    model = MODELS.build(cfg)
    model.init_weights()
    return model.eval()


def test_model_config_fixed_keep_ratio_keeps_half_per_stage():
    model = build_model(type='FixedKeepRatio', ratio=0.5)
    assert isinstance(model.exit_policy, FixedKeepRatio) and model.prunes
    with torch.no_grad():
        for shape, grid in (((64, 64), 16), ((96, 64), 24)):
            _, out = model.encode_decode_with_stats(torch.randn(2, 3, *shape))
            assert out.active_counts.tolist() == [[grid, grid // 2, grid // 4]] * 2
            assert out.heads_run == (True, True, True)
            assert (out.exit_stage == 0).sum().item() == 2 * (grid - grid // 2)
    # the property installs the paper's rule again
    model.prune_threshold = None
    assert isinstance(model.exit_policy, ConfidenceThreshold) and not model.prunes


@pytest.mark.parametrize('ratio', [0.5, [0.75, 0.4]])
def test_batch_equals_images_alone_under_fixed_keep_ratio_by_score(ratio):
    model = build_model(type='FixedKeepRatio', ratio=ratio, by='score')
    x = torch.randn(3, 3, 64, 80, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        seg, out = model.encode_decode_with_stats(x)
        for i in range(3):
            seg_i, out_i = model.encode_decode_with_stats(x[i:i + 1])
            assert torch.equal(out_i.active_counts[0], out.active_counts[i])
            assert torch.equal(out_i.exit_stage[0], out.exit_stage[i])
            torch.testing.assert_close(seg_i[0], seg[i], rtol=1e-5, atol=1e-6)
    counts = out.active_counts[0].tolist()
    r = [ratio] * 2 if not isinstance(ratio, list) else ratio
    assert counts[1] == round(r[0] * 20) and counts[2] == round(r[1] * counts[1])
