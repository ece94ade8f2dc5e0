"""ATMPruneHead: official layout, padding invariance, statelessness."""
import torch

import dtop  # noqa: F401
from dtop.models.decode_heads import ATMPruneHead
from dtop.models.packing import Segments


def make_head(seed=0):
    torch.manual_seed(seed)
    head = ATMPruneHead(in_channels=24, channels=16, num_classes=5, num_heads=4,
                        num_layers=3)
    head.init_weights()
    return head.eval()


def test_official_key_layout():
    keys = set(make_head().state_dict())
    for k in ['input_proj.weight', 'proj_norm.bias', 'q.weight', 'class_embed.weight',
              'loss_decode.criterion.empty_weight',
              'decoder.layers.2.self_attn.in_proj_weight',
              'decoder.layers.2.multihead_attn.q.weight',
              'decoder.layers.2.multihead_attn.proj.bias',
              'decoder.layers.0.linear1.weight', 'decoder.layers.0.norm3.weight']:
        assert k in keys, k
    assert not any(k.startswith('conv_seg') for k in keys)
    assert make_head().q.weight.shape == (5, 16)


def test_packed_images_equal_images_alone():
    """A packed ragged batch (incl. an image without tokens) == each image alone."""
    head = make_head(1)
    lengths = [11, 7, 0, 3]
    tokens = torch.randn(sum(lengths), 24)
    segs = Segments.from_lengths(lengths, 'cpu')
    with torch.no_grad():
        out = head.forward_tokens(tokens, segs)
        assert out.token_values.shape == (21, 5) and out.image_values.shape == (4, 5, 2)
        for b, (t, m) in enumerate(zip(segs.split(tokens), segs.split(out.token_values))):
            alone = head.forward_tokens(t, Segments.from_lengths([len(t)], 'cpu'))
            torch.testing.assert_close(out.image_values[b], alone.image_values[0],
                                       rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(m, alone.token_values, rtol=1e-5, atol=1e-6)
    # An image without active tokens: its queries get no cross-attention update,
    # and everything stays finite.
    assert torch.isfinite(out.image_values).all()


def test_token_probs_and_canvas_values_follow_the_score():
    head = make_head(4)
    segs = Segments.from_lengths([6, 4], 'cpu')
    with torch.no_grad():
        out = head.forward_tokens(torch.randn(10, 24), segs)
        probs = head.token_probs(out, segs)
        cls = out.image_values.softmax(-1)[..., 0]  # (B, Q)
        expect = cls[segs.batch_index] * out.token_values.sigmoid()
        torch.testing.assert_close(probs, expect)
        assert torch.equal(head.canvas_values(out, segs, 'atm'), out.token_values)
        logp = head.canvas_values(out, segs, 'log_probs')
        torch.testing.assert_close(logp.exp(), probs / probs.sum(-1, keepdim=True))


def test_mask_logits_are_head_mean_of_scaled_logits():
    head = make_head(2)
    layer = head.decoder.layers[-1].multihead_attn
    q = torch.randn(1, 5, 16)
    t = torch.randn(1, 6, 16)
    _, logits = layer(q, t[0], Segments.from_lengths([6], 'cpu'))
    logits = logits.t()[None]
    qh = layer.q(q).view(1, 5, 4, 4).transpose(1, 2)
    kh = layer.k(t).view(1, 6, 4, 4).transpose(1, 2)
    expect = (qh @ kh.transpose(-1, -2) * 4 ** -0.5).mean(1)
    torch.testing.assert_close(logits, expect)


def test_stateless_between_calls():
    head = make_head(3)
    a, b = torch.randn(1, 8, 24), torch.randn(1, 8, 24)
    with torch.no_grad():
        first = head(a)[1]
        head(b)
        again = head(a)[1]
    assert torch.equal(first, again)
    assert not any(isinstance(v, torch.Tensor) for k, v in vars(head).items()
                   if not k.startswith('_'))
