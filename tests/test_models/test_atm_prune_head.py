"""ATMPruneHead: official layout, padding invariance, statelessness."""
import torch

import dtop  # noqa: F401
from dtop.models.decode_heads import ATMPruneHead


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


def test_padding_slots_do_not_change_real_tokens():
    head = make_head(1)
    tokens = torch.randn(2, 11, 24)
    valid = torch.ones(2, 11, dtype=torch.bool)
    valid[1, 7:] = False
    with torch.no_grad():
        cls, mask = head(tokens, valid)
        cls_alone, mask_alone = head(tokens[1:, :7])
        cls_full, mask_full = head(tokens[:1])
    torch.testing.assert_close(cls[1], cls_alone[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(mask[1, :, :7], mask_alone[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(mask[0], mask_full[0], rtol=1e-5, atol=1e-6)


def test_mask_logits_are_head_mean_of_scaled_logits():
    head = make_head(2)
    layer = head.decoder.layers[-1].multihead_attn
    q = torch.randn(1, 5, 16)
    t = torch.randn(1, 6, 16)
    _, logits = layer(q, t)
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
