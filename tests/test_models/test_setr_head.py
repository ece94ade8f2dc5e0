"""DToPSETRUPHead: token-wise logits equal mmseg's dense SETRUPHead (eval and
train BN), same parameters, clear errors for heads that are not token-wise."""
import pytest
import torch
from mmseg.models.decode_heads import SETRUPHead

import dtop  # noqa: F401
from dtop.models.decode_heads import DToPSETRUPHead
from dtop.models.packing import Segments

C, CH, Q = 32, 16, 5


def head_kwargs(**kw):
    cfg = dict(in_channels=C, channels=CH, num_classes=Q, num_convs=1, up_scale=4,
               kernel_size=1, norm_cfg=dict(type='BN', requires_grad=True),
               dropout_ratio=0, align_corners=False,
               loss_decode=dict(type='CrossEntropyLoss', loss_weight=1.0))
    cfg.update(kw)
    return cfg


def pair(seed=0, **kw):
    """mmseg's head with non-trivial weights/statistics and ours loaded from it."""
    torch.manual_seed(seed)
    ref = SETRUPHead(**head_kwargs(**kw))
    ref.init_weights()
    with torch.no_grad():
        bn = ref.up_convs[0][0].bn
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.normal_()
        ref.conv_seg.weight.normal_(0, 0.3)
        ref.norm.weight.uniform_(0.5, 1.5)
        ref.norm.bias.normal_(0, 0.1)
    ours = DToPSETRUPHead(**head_kwargs(**kw))
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours


def packed(feat):
    B, _, h, w = feat.shape
    return feat.flatten(2).transpose(1, 2).reshape(B * h * w, -1), \
        Segments.uniform(B, h * w, feat.device)


def to_grid(values, B, h, w):
    return values.view(B, h, w, -1).permute(0, 3, 1, 2)


@pytest.mark.parametrize('train', [False, True])
def test_token_logits_then_to_pixels_equal_mmseg_forward(train):
    ref, ours = pair()
    ref.train(train)
    ours.train(train)
    feat = torch.randn(2, C, 3, 5)
    dense = ref([feat])  # (2, Q, 12, 20): LN, conv+BN+ReLU, x4 upsample, conv_seg
    tokens, segs = packed(feat)
    logits = ours.forward_tokens(tokens, segs).token_values
    got = ours.to_pixels(to_grid(logits, 2, 3, 5), dense.shape[-2:])
    torch.testing.assert_close(got, dense, rtol=1e-5, atol=1e-5)
    # BN on the (all active) tokens = mmseg's BN on the dense map: same statistics.
    bn_ref, bn_ours = ref.up_convs[0][0].bn, ours.up_convs[0][0].bn
    torch.testing.assert_close(bn_ours.running_mean, bn_ref.running_mean)
    torch.testing.assert_close(bn_ours.running_var, bn_ref.running_var)


def test_to_pixels_equals_predict_by_feat():
    ref, ours = pair(1)
    ref.eval()
    ours.eval()
    feat = torch.randn(1, C, 4, 6)
    metas = [dict(img_shape=(61, 90))]  # not a multiple of anything: mmseg stretches
    dense = ref.predict([feat], metas, dict())
    tokens, segs = packed(feat)
    logits = ours.forward_tokens(tokens, segs).token_values
    got = ours.to_pixels(to_grid(logits, 1, 4, 6), (61, 90), patch_size=16)
    torch.testing.assert_close(got, dense, rtol=1e-5, atol=1e-5)


def test_ragged_batch_equals_images_alone():
    _, ours = pair(2)
    ours.eval()
    lengths = [7, 0, 12, 1]
    tokens = torch.randn(sum(lengths), C)
    out = ours.forward_tokens(tokens, Segments.from_lengths(lengths, 'cpu')).token_values
    assert out.shape == (sum(lengths), Q)
    for part, n, x in zip(out.split(lengths), lengths, tokens.split(lengths)):
        alone = ours.forward_tokens(x, Segments.from_lengths([n], 'cpu')).token_values
        torch.testing.assert_close(part, alone)


def test_parameters_are_mmseg_s():
    ref, ours = pair()
    assert list(ref.state_dict()) == list(ours.state_dict())


@pytest.mark.parametrize('bad', [dict(num_convs=2), dict(kernel_size=3),
                                 dict(norm_cfg=dict(type='GN', num_groups=4))])
def test_heads_that_are_not_token_wise_raise(bad):
    with pytest.raises(ValueError, match='DToPSETRUPHead'):
        DToPSETRUPHead(**head_kwargs(**bad))


def test_channel_dropout_is_per_image_and_channel():
    torch.manual_seed(0)
    head = DToPSETRUPHead(**head_kwargs(dropout_ratio=0.5)).train()
    segs = Segments.from_lengths([5, 3], 'cpu')
    out = head._channel_dropout(torch.ones(8, CH), segs)
    assert set(out.unique().tolist()) <= {0.0, 2.0}
    for part in out.split([5, 3]):
        assert (part == part[:1]).all()  # one draw per (image, channel)
    head.eval()
    assert torch.equal(head._channel_dropout(torch.ones(8, CH), segs), torch.ones(8, CH))


def test_tiny_token_sets_in_training():
    _, ours = pair(3)
    ours.train()
    one = ours.forward_tokens(torch.randn(1, C), Segments.from_lengths([1], 'cpu'))
    assert one.token_values.shape == (1, Q) and torch.isfinite(one.token_values).all()
    none = ours.forward_tokens(torch.randn(0, C), Segments.from_lengths([0, 0], 'cpu'))
    assert none.token_values.shape == (0, Q)
    # Softmax head contract: probabilities and log-probabilities of the logits.
    probs = ours.token_probs(one, None)
    torch.testing.assert_close(probs.sum(-1), torch.ones(1))
    torch.testing.assert_close(ours.canvas_values(one, None, 'log_probs').exp(), probs)
    with pytest.raises(ValueError):
        ours.canvas_values(one, None, 'atm')
