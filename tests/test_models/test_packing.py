"""Packed ragged batches: bookkeeping, attention backends and backend selection."""
import pytest
import torch
import torch.nn.functional as F

from dtop.models.packing import (LOOP_MIN_TOKENS, Segments, drop_path_packed,
                                 packed_attention, select_attention_backend)


def test_segments_bookkeeping_and_pad_roundtrip():
    segs = Segments.from_lengths([3, 0, 2], 'cpu')
    assert segs.cu_seqlens.tolist() == [0, 3, 3, 5]
    assert segs.batch_index.tolist() == [0, 0, 0, 2, 2]
    assert segs.slot.tolist() == [0, 1, 2, 0, 1]
    assert segs.max_len == 3 and segs.total == 5 and not segs.is_uniform
    x = torch.randn(5, 4)
    padded = segs.pad(x, value=-7.0)
    assert padded.shape == (3, 3, 4)
    assert (padded[1] == -7).all() and (padded[2, 2] == -7).all()
    assert torch.equal(segs.unpad(padded), x)
    assert segs.valid_mask().tolist() == [[True] * 3, [False] * 3, [True, True, False]]
    uniform = Segments.uniform(2, 3, 'cpu')
    y = torch.randn(6, 4)
    assert uniform.is_uniform and uniform.pad(y).data_ptr() == y.data_ptr()  # a view


@pytest.mark.parametrize('lengths', [[5, 0, 3, 7], [4, 4], [0, 0]])
def test_segments_select_equals_repacking_each_image(lengths):
    """``x[mask]`` with ``segs.select(mask)`` is each image's kept tokens, in order."""
    g = torch.Generator().manual_seed(sum(lengths) + len(lengths))
    segs = Segments.from_lengths(lengths, 'cpu')
    x = torch.randn(segs.total, 3, generator=g)
    mask = torch.rand(segs.total, generator=g) > 0.4
    kept = segs.select(mask)
    parts = [xi[mi] for xi, mi in zip(segs.split(x), segs.split(mask))]
    assert kept.lengths == [len(p) for p in parts]
    for got, ref in zip(kept.split(x[mask]), parts):
        assert torch.equal(got, ref)
    # lengths known by the caller: the same packing, no counting
    again = segs.select(mask, kept.lengths)
    assert torch.equal(again.cu_seqlens, kept.cu_seqlens)
    assert torch.equal(again.batch_index, kept.batch_index)
    assert torch.equal(again.slot, kept.slot)


def test_segments_append_places_extra_tokens_after_each_image():
    g = torch.Generator().manual_seed(3)
    segs = Segments.from_lengths([2, 0, 3], 'cpu')
    x = torch.randn(segs.total, 4, generator=g)
    extra = torch.randn(3, 2, 4, generator=g)
    joint, token_dest, extra_dest = segs.append(2)
    z = torch.zeros(joint.total, 4).index_put(
        (torch.cat([token_dest, extra_dest.reshape(-1)]),), torch.cat([x, extra.reshape(-1, 4)]))
    for b, (xi, zi) in enumerate(zip(segs.split(x), joint.split(z))):
        assert torch.equal(zi, torch.cat([xi, extra[b]]))


def per_image_attention(q, k, v, segs):
    outs = []
    for qi, ki, vi in zip(segs.split(q), segs.split(k), segs.split(v)):
        if len(qi) == 0:
            outs.append(qi)
            continue
        a = (qi.transpose(0, 1) @ ki.transpose(0, 1).transpose(-1, -2)) / qi.shape[-1] ** 0.5
        outs.append((a.softmax(-1) @ vi.transpose(0, 1)).transpose(0, 1))
    return torch.cat(outs)


@pytest.mark.parametrize('backend', ['auto', 'loop', 'padded'])
@pytest.mark.parametrize('lengths', [[5, 5, 5], [7, 1, 0, 4], [0, 0, 3]])
def test_packed_attention_equals_each_image_alone(backend, lengths):
    g = torch.Generator().manual_seed(sum(lengths))
    segs = Segments.from_lengths(lengths, 'cpu')
    q, k, v = (torch.randn(segs.total, 2, 8, generator=g, requires_grad=True)
               for _ in range(3))
    got = packed_attention(q, k, v, segs, backend=backend)
    ref = per_image_attention(q, k, v, segs)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    w = torch.randn(got.shape, generator=g)
    g1 = torch.autograd.grad((got * w).sum(), (q, k, v))
    g2 = torch.autograd.grad((ref * w).sum(), (q, k, v))
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_select_attention_backend_rules():
    ragged = Segments.from_lengths([4, 2, 3], 'cpu')
    small = Segments.from_lengths([4, 2], 'cpu')
    uniform = Segments.uniform(3, 4, 'cpu')
    sel = select_attention_backend
    # equal lengths: one plain batched kernel, on any device
    assert sel('cpu', torch.float32, uniform) == 'dense'
    assert sel('cuda', torch.bfloat16, uniform, has_varlen=True) == 'dense'
    # CPU: loop for a couple of images or long sequences, padded kernel for many
    # short ones
    assert sel('cpu', torch.float32, small) == 'loop'
    assert sel('cpu', torch.float32, ragged) == 'padded'
    long = Segments.from_lengths([LOOP_MIN_TOKENS, 5, 9], 'cpu')
    assert sel('cpu', torch.float32, long) == 'loop'
    # CUDA: varlen FlashAttention for half precision when torch has it ...
    assert sel('cuda', torch.bfloat16, ragged, has_varlen=True) == 'varlen'
    assert sel('cuda', torch.float16, ragged, has_varlen=True) == 'varlen'
    # ... else nested-jagged SDPA; fp32 cannot use FlashAttention
    assert sel('cuda', torch.bfloat16, ragged, has_varlen=False) == 'nested'
    assert sel('cuda', torch.float32, ragged, has_varlen=True) == 'nested'
    assert sel('cuda', torch.bfloat16, ragged, has_varlen=True, dropout=0.1) == 'padded'
    # explicit requests are honoured when they can run, else the automatic choice
    assert sel('cpu', torch.float32, ragged, 'loop') == 'loop'
    assert sel('cpu', torch.float32, ragged, 'dense') == 'padded'
    assert sel('cpu', torch.float32, ragged, 'varlen', has_varlen=True) == 'padded'
    with pytest.raises(ValueError, match='attention backend'):
        sel('cpu', torch.float32, ragged, 'flash')


def test_drop_path_draws_once_per_image():
    segs = Segments.from_lengths([50, 50, 50, 50], 'cpu')
    torch.manual_seed(0)
    out = drop_path_packed(torch.ones(200, 3), 0.5, True, segs)
    for part in segs.split(out):
        assert len(torch.unique(part)) == 1  # 0 or 2 for the whole image
    assert set(torch.unique(out).tolist()) <= {0.0, 2.0}
    x = torch.randn(200, 3)
    assert drop_path_packed(x, 0.5, False, segs) is x
