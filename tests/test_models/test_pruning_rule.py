"""The pruning rule (paper Sec. 3.2; docs/method.md: confidence strictly above p0, the
k most confident per predicted class stay) against a brute-force reference written
plainly."""
import pytest
import torch

from dtop.models.decode_heads.atm_prune_head import token_scores
from dtop.models.pruning import select_exits, select_exits_packed


def reference_exits(scores, threshold, k, valid=None):
    """Loop-by-loop statement of the official rule, one image and class at a time."""
    B, Q, N = scores.shape
    out = torch.zeros(B, N, dtype=torch.bool)
    for b in range(B):
        conf, cls = scores[b].max(dim=0)
        cands = [t for t in range(N)
                 if (valid is None or bool(valid[b, t])) and float(conf[t]) > threshold]
        kept = set()
        for c in sorted({int(cls[t]) for t in cands}):
            members = sorted((t for t in cands if int(cls[t]) == c),
                             key=lambda t: float(conf[t]), reverse=True)
            kept.update(members[:min(k, len(members))])
        for t in cands:
            if t not in kept:
                out[b, t] = True
    return out


@pytest.mark.parametrize('threshold', [0.2, 0.5, 0.8, 0.95])
@pytest.mark.parametrize('k', [0, 1, 5])
def test_select_exits_matches_reference(threshold, k):
    g = torch.Generator().manual_seed(int(threshold * 100) + k)
    scores = torch.rand(3, 7, 60, generator=g)
    got = select_exits(scores, threshold, k)
    assert torch.equal(got, reference_exits(scores, threshold, k))


def test_ties_at_threshold_are_not_candidates():
    g = torch.Generator().manual_seed(0)
    scores = torch.rand(2, 4, 40, generator=g) * 0.5
    # Tokens whose max score equals the threshold exactly: not > p0, must stay.
    scores[:, 1, :10] = 0.75
    scores[:, 2, 10:30] = torch.linspace(0.8, 0.9, 20)  # candidates, one class
    got = select_exits(scores, 0.75, 5)
    assert torch.equal(got, reference_exits(scores, 0.75, 5))
    assert not got[:, :10].any()
    assert got[:, 10:30].sum(1).tolist() == [15, 15]


def test_class_with_at_most_k_candidates_loses_none():
    scores = torch.full((1, 3, 12), 0.1)
    scores[0, 0, :4] = torch.tensor([0.91, 0.92, 0.93, 0.94])  # 4 <= k
    scores[0, 1, 4:11] = torch.linspace(0.91, 0.97, 7)  # 7 > k: 2 exit
    got = select_exits(scores, 0.9, 5)
    assert not got[0, :4].any()
    assert got[0, 4:11].tolist() == [True, True, False, False, False, False, False]
    assert torch.equal(got, reference_exits(scores, 0.9, 5))


def test_no_candidates_and_padding():
    g = torch.Generator().manual_seed(3)
    scores = torch.rand(2, 5, 30, generator=g)
    assert not select_exits(scores, 0.999999, 5).any()
    valid = torch.rand(2, 30, generator=g) > 0.3
    got = select_exits(scores, 0.3, 2, valid)
    assert not (got & ~valid).any()
    assert torch.equal(got, reference_exits(scores, 0.3, 2, valid))


def test_token_scores_is_presence_times_sigmoid():
    g = torch.Generator().manual_seed(1)
    cls = torch.randn(2, 3, 2, generator=g)
    masks = torch.randn(2, 3, 9, generator=g)
    expect = torch.empty_like(masks)
    for b in range(2):
        for c in range(3):
            p = torch.softmax(cls[b, c], 0)[0]
            expect[b, c] = p * torch.sigmoid(masks[b, c])
    assert torch.allclose(token_scores(cls, masks), expect)


def test_selection_has_no_gradient():
    scores = torch.rand(1, 3, 20, requires_grad=True)
    assert not select_exits(scores, 0.2, 1).requires_grad


def test_packed_selection_equals_the_rule_per_image():
    """select_exits_packed on a ragged packed batch (one image empty) == select_exits
    on each image alone."""
    from dtop.models.packing import Segments
    g = torch.Generator().manual_seed(7)
    lengths = [9, 0, 14, 5]
    segs = Segments.from_lengths(lengths, 'cpu')
    scores = torch.rand(segs.total, 4, generator=g) ** 0.3
    exits = select_exits_packed(scores, segs, 0.6, 2)
    assert exits.shape == (segs.total, ) and exits.any() and not exits.all()
    for part, ex in zip(segs.split(scores), segs.split(exits)):
        if len(part):
            assert torch.equal(ex, select_exits(part.t()[None], 0.6, 2)[0])
