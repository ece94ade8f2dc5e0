"""DToPSegmenterMaskHead: mmseg's mask transformer on packed ragged token sets."""
import pytest
import torch
from mmseg.models.decode_heads import SegmenterMaskTransformerHead

import dtop  # noqa: F401
from dtop.models.decode_heads import DToPSegmenterMaskHead
from dtop.models.packing import Segments

C, Q = 32, 5


def pair(seed=0):
    torch.manual_seed(seed)
    kw = dict(in_channels=C, channels=C, num_classes=Q, num_layers=2, num_heads=2,
              embed_dims=C, drop_path_rate=0.0, dropout_ratio=0.0,
              loss_decode=dict(type='CrossEntropyLoss', loss_weight=1.0))
    ref = SegmenterMaskTransformerHead(**kw)
    ref.init_weights()
    with torch.no_grad():  # non-trivial norms
        for m in ref.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
    ours = DToPSegmenterMaskHead(**kw)
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref.eval(), ours.eval()


def test_segments_append_layout():
    segs = Segments.from_lengths([2, 0, 3], 'cpu')
    joint, token_dest, extra_dest = segs.append(2)
    assert joint.lengths == [4, 2, 5]
    assert joint.cu_seqlens.tolist() == [0, 4, 6, 11]
    assert token_dest.tolist() == [0, 1, 6, 7, 8]
    assert extra_dest.tolist() == [[2, 3], [4, 5], [9, 10]]
    assert joint.batch_index.tolist() == [0] * 4 + [1] * 2 + [2] * 5
    assert joint.slot.tolist() == [0, 1, 2, 3, 0, 1, 0, 1, 2, 3, 4]


def test_dense_batch_equals_mmseg_forward():
    ref, ours = pair()
    feat = torch.randn(2, C, 3, 5)
    with torch.no_grad():
        dense = ref([feat])  # (2, Q, 3, 5) mask logits
        tokens = feat.flatten(2).transpose(1, 2).reshape(-1, C)
        got = ours.forward_tokens(tokens, Segments.uniform(2, 15, 'cpu')).token_values
    torch.testing.assert_close(got.view(2, 15, Q), dense.flatten(2).transpose(1, 2),
                               rtol=1e-5, atol=1e-5)
    assert list(ref.state_dict()) == list(ours.state_dict())


@pytest.mark.parametrize('backend', ['auto', 'loop', 'padded'])
def test_ragged_batch_equals_mmseg_on_each_image_s_active_tokens(backend):
    """Each image's class embeddings attend to its own active tokens only."""
    ref, ours = pair(1)
    ours.attention_backend = backend
    lengths = [7, 0, 12, 1]
    tokens = torch.randn(sum(lengths), C)
    with torch.no_grad():
        got = ours.forward_tokens(tokens, Segments.from_lengths(lengths, 'cpu')).token_values
        for part, x in zip(got.split(lengths), tokens.split(lengths)):
            if x.shape[0] == 0:
                assert part.shape == (0, Q)
                continue
            alone = ref([x.t().reshape(1, C, 1, -1)])  # mmseg's head on a 1 x n grid
            torch.testing.assert_close(part, alone[0, :, 0].t(), rtol=1e-5, atol=1e-5)


def test_to_pixels_is_mmseg_resize_and_gradients_flow():
    ref, ours = pair(2)
    ours.train()
    feat = torch.randn(1, C, 4, 4)
    out = ours.forward_tokens(feat.flatten(2)[0].t(), Segments.uniform(1, 16, 'cpu'))
    grid = out.token_values.t().reshape(1, Q, 4, 4)
    pix = ours.to_pixels(grid, (50, 70))
    torch.testing.assert_close(pix, ref.predict_by_feat(grid, [dict(img_shape=(50, 70))]))
    pix.logsumexp(1).mean().backward()
    assert ours.cls_emb.grad is not None and ours.cls_emb.grad.abs().sum() > 0
    assert ours.layers[0].attn.attn.in_proj_weight.grad.abs().sum() > 0
