"""EoMT in DToP: equal to transformers' ``EomtForUniversalSegmentation`` with nothing
pruned; with pruning, a batch equals its images one by one and the packed fast path
equals a per-image reference built from the transformers modules."""
import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip('transformers')

from mmseg.registry import MODELS  # noqa: E402

from dtop.models.converters.eomt import convert_hf_eomt, eomt_arch  # noqa: E402
from dtop.models.packing import Segments  # noqa: E402
from dtop.models.pruning import ConfidenceThreshold  # noqa: E402

NUM_HEADS = 4


def _hf_eomt(seed, image_size=(64, 96), num_blocks=2, layers=6, classes=3, **kw):
    """A tiny random transformers EoMT (weights perturbed away from their init)."""
    torch.manual_seed(seed)
    cfg = transformers.EomtConfig(
        hidden_size=32, num_hidden_layers=layers, num_attention_heads=NUM_HEADS,
        image_size=max(image_size), patch_size=16, num_queries=6, num_register_tokens=2,
        num_labels=classes, num_blocks=num_blocks, **kw)
    hf = transformers.EomtForUniversalSegmentation(cfg).eval()
    hf.grid_size = (image_size[0] // 16, image_size[1] // 16)
    n = hf.grid_size[0] * hf.grid_size[1]
    with torch.no_grad():  # a position per patch of this (non-square) grid
        hf.embeddings.position_embeddings = torch.nn.Embedding(n, 32)
        hf.embeddings.position_ids = torch.arange(n)[None]
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return hf


def _model_cfg(arch, image_size, aux_after=(), prune_threshold=1.0):
    L = arch['num_layers']
    backbone = dict(type='DToPDinov2', img_size=image_size, patch_size=arch['patch_size'],
                    embed_dims=arch['embed_dims'], num_layers=L, num_heads=NUM_HEADS,
                    num_register_tokens=arch['num_register_tokens'], pos_embed_cls=False,
                    final_norm=False, out_indices=[*aux_after, L - 1])
    K = arch['num_classes']
    aux = [dict(type='ATMPruneHead', in_channels=arch['embed_dims'], channels=16,
                num_classes=K, num_heads=2, num_layers=1,
                loss_decode=dict(type='ATMLoss', num_classes=K)) for _ in aux_after]
    head = dict(type='EoMTHead', in_channels=arch['embed_dims'], num_classes=K,
                num_heads=NUM_HEADS, num_blocks=arch['num_blocks'],
                num_queries=arch['num_queries'])
    return dict(type='DToPEncoderDecoder', backbone=backbone, decode_head=head,
                auxiliary_head=aux or None, prune_threshold=prune_threshold,
                train_cfg=dict(), test_cfg=dict(mode='whole'),
                data_preprocessor=dict(type='SegDataPreProcessor', mean=[0.] * 3,
                                       std=[1.] * 3))


def _ours(hf, image_size, aux_after=(), prune_threshold=1.0):
    state = convert_hf_eomt(hf.state_dict())
    arch = eomt_arch(state, NUM_HEADS)
    model = MODELS.build(_model_cfg(arch, image_size, aux_after, prune_threshold))
    model.init_weights()
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected
    assert all(k.startswith('auxiliary_head.') for k in missing), missing
    return model.eval()


@pytest.mark.parametrize('probs', [0.0, 1.0], ids=['plain', 'masked_attention'])
@pytest.mark.parametrize('size', [(64, 64), (64, 96)], ids=['square', 'non_square'])
def test_equals_transformers_eomt(size, probs):
    hf = _hf_eomt(int(torch.randint(1 << 30, ())), size)
    hf.attn_mask_probs.fill_(probs)
    model = _ours(hf, size)
    assert model.decode_head.attn_mask_probs.tolist() == [probs] * 2
    # float64 where transformers allows it, so that differences are ours, not rounding
    # (its masked-attention path builds a float32 mask and breaks in float64: O(1)
    # differences from its own float32 output; that case runs in float32).
    dtype = torch.float64 if probs == 0 else torch.float32
    tol = dict(rtol=1e-5, atol=1e-5) if probs == 0 else dict(rtol=1e-5, atol=5e-5)
    hf, model = hf.to(dtype), model.to(dtype)
    x = torch.randn(2, 3, *size, dtype=dtype)
    with torch.no_grad():
        ref = hf(pixel_values=x)
        out = model.run_stages(x).head_outputs[-1][0]
        seg = model.encode_decode(x)
    torch.testing.assert_close(out.image_values, ref.class_queries_logits, **tol)
    torch.testing.assert_close(out.mask_logits[-1], ref.masks_queries_logits, **tol)
    # EoMT's semantic inference: mask logits resized to the image, then
    # softmax(class)[:K] x sigmoid(mask) summed over queries
    masks = F.interpolate(ref.masks_queries_logits, size=size, mode='bilinear')
    expected = torch.einsum('bqk,bqhw->bkhw', ref.class_queries_logits.softmax(-1)[..., :-1],
                            masks.sigmoid())
    torch.testing.assert_close(seg, expected.to(seg.dtype), **tol)
    processor = transformers.EomtImageProcessor(do_resize=False, do_pad=False)
    post = processor.post_process_semantic_segmentation(
        ref, target_sizes=[size] * 2, size=dict(shortest_edge=size[0], longest_edge=size[1]))
    assert torch.equal(torch.stack(post), seg.argmax(1))


class _Recorder(ConfidenceThreshold):
    """The confidence rule, recording each stage's token confidences."""

    def __init__(self, p0, topk):
        super().__init__(p0, topk)
        self.seen = {}

    def __call__(self, stage, scores, segments):
        self.seen.setdefault(stage, []).append(scores.max(-1).values)
        return super().__call__(stage, scores, segments)


def _gap(conf):
    """A threshold in the middle of a wide gap between the token confidences: the
    widest gap of the middle 60 % of tokens (a fifth or more exit, a fifth or more
    stay), or of all of them when that one is float noise (saturated heads give many
    tokens the same confidence). No token sits near it, so float noise cannot flip
    a decision between a batch and its images one by one."""
    c = conf.sort()[0]
    if len(c) < 2:
        return 1.0  # (one token left in the batch: this stage does not prune)
    gaps = c[1:] - c[:-1]
    lo, hi = len(c) // 5, len(c) - len(c) // 5
    i = lo + int(gaps[lo:hi - 1].argmax()) if hi - 1 > lo else 0
    if gaps[i] < 1e-3:
        i = int(gaps.argmax())
    if gaps[i] < 1e-4:
        return 1.0  # all confidences equal (saturated head): this stage does not prune
    return float(c[i] + c[i + 1]) / 2


def _pruned(seed, images):
    """A tiny EoMT with two ATM auxiliary heads whose thresholds lie in gaps of the
    confidences on ``images`` (so tokens exit at both, in ragged numbers).

    ``k = 0``: which of several near-certain tokens are the top ``k`` of a class is
    decided by float noise (batch vs one image), so the comparison keeps no context
    tokens; the top-k rule has its own tests (test_pruning_rule.py)."""
    size = tuple(images.shape[-2:])
    hf = _hf_eomt(seed, size, num_blocks=2, layers=7)
    hf.attn_mask_probs.zero_()
    model = _ours(hf, size, aux_after=(1, 3))
    with torch.no_grad():  # confident, varied auxiliary heads
        for p in model.auxiliary_head.parameters():
            p.add_(torch.randn_like(p))
    thresholds = [1.0, 1.0]
    for stage in range(2):  # (just below 1 the stage consults the rule; no one exits)
        recorder = model.set_exit_policy(_Recorder(
            thresholds[:stage] + [1 - 1e-7] + thresholds[stage + 1:], topk=0))
        with torch.no_grad():
            model.run_stages(images, all_heads=True)
        thresholds[stage] = _gap(torch.cat(recorder.seen[stage]))
    model.set_exit_policy(ConfidenceThreshold(thresholds, topk=0))
    return hf, model


def _reference(hf, model, image):
    """One image through the transformers modules, dropping exited tokens by hand."""
    P, C = 1 + hf.config.num_register_tokens, hf.config.hidden_size
    Q = hf.config.num_queries
    h, w = image.shape[-2] // 16, image.shape[-1] // 16
    N = h * w
    hs = hf.embeddings(image[None])
    active = torch.arange(N)
    frozen = torch.zeros(N, C)
    canvas = torch.zeros(N, model.num_classes)
    layer = 0
    for s, (start, end) in enumerate(model.backbone.stage_ranges):
        for layer in range(start, end):
            hs = hf.layers[layer](hs, None)
        if s == model.backbone.num_stages - 1:
            break
        tokens = hs[0, P:]
        segs = Segments.uniform(1, tokens.shape[0], tokens.device)
        head = model.auxiliary_head[s]
        probs = head.token_probs(head.forward_tokens(tokens, segs), segs)
        canvas[active] = probs
        exits = model.exit_policy(s, probs, segs) if model.exit_policy.prunes_at(s) \
            else torch.zeros(len(probs), dtype=torch.bool)
        frozen[active[exits]] = tokens[exits]
        hs = torch.cat([hs[:, :P], tokens[~exits][None]], dim=1)
        active = active[~exits]
    hs = torch.cat([hf.query.weight[None], hs], dim=1)
    for block in hf.layers[end:]:
        hs = block(hs, None)
    normed = hf.layernorm(hs)
    queries = normed[:, :Q]
    classes = hf.class_predictor(queries)
    feat = hf.layernorm(frozen)
    feat[active] = normed[0, Q + P:]
    fmap = feat.T.reshape(1, C, h, w)
    masks = torch.einsum('bqc,bchw->bqhw', hf.mask_head(queries), hf.upscale_block(fmap))
    p = classes.softmax(-1)[..., :-1]
    cell = torch.einsum('bqk,bqhw->bkhw', p, F.avg_pool2d(masks, 4).sigmoid())
    canvas[active] = cell[0].flatten(1).T[active]
    px = F.interpolate(masks, size=image.shape[-2:], mode='bilinear')
    eomt = torch.einsum('bqk,bqhw->bkhw', p, px.sigmoid())
    is_active = torch.zeros(N)
    is_active[active] = 1
    active_px = F.interpolate(is_active.view(1, 1, h, w), size=image.shape[-2:]) > 0
    frozen_px = F.interpolate(canvas.T.reshape(1, -1, h, w), size=image.shape[-2:],
                              mode='bilinear')
    return torch.where(active_px, eomt, frozen_px)[0], len(active)


def test_pruned_batch_equals_per_image_reference():
    x = torch.randn(3, 3, 96, 128)
    for _ in range(5):  # a model whose auxiliary heads can prune these images
        hf, model = _pruned(int(torch.randint(1 << 30, ())), x)
        if model.prunes:
            break
    with torch.no_grad():
        seg, stats = model.encode_decode_with_stats(x)
        one_by_one = torch.cat([model.encode_decode(x[i:i + 1]) for i in range(3)])
        refs = [_reference(hf, model, x[i]) for i in range(3)]
    torch.testing.assert_close(seg, one_by_one, rtol=1e-5, atol=1e-5)
    counts = stats.active_counts[:, -1].tolist()
    assert [n for _, n in refs] == counts
    assert min(counts) < 48, 'nothing exited: the test would not test pruning'
    torch.testing.assert_close(seg, torch.stack([r for r, _ in refs]), rtol=1e-5, atol=1e-5)


def test_threshold_one_reproduces_eomt_with_aux_heads():
    """Auxiliary heads that cannot prune (p0 = 1) leave EoMT's output unchanged."""
    size = (96, 128)
    hf = _hf_eomt(int(torch.randint(1 << 30, ())), size, num_blocks=2, layers=7)
    hf.attn_mask_probs.zero_()
    model = _ours(hf, size, aux_after=(1, 3))
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        ref = hf(pixel_values=x)
        out = model.run_stages(x, all_heads=True).head_outputs[-1][0]
    torch.testing.assert_close(out.mask_logits[-1], ref.masks_queries_logits,
                               rtol=1e-5, atol=1e-5)



def test_bf16_inference_gives_an_fp32_map_close_to_fp32():
    """``test_cfg.precision='bf16'``: the final map is fp32 (EoMT's resize and class x
    mask einsum run outside autocast, like the other heads' final maps)."""
    from tests.utils.tiny_models import tiny_model_cfg
    size = (96, 128)  # (no pruning: a bf16 score near p0 may exit where fp32 does not)
    model = MODELS.build(tiny_model_cfg('eomt', img_size=size))
    model.init_weights()
    model.eval().decode_head.attn_mask_probs.zero_()
    x = torch.randn(2, 3, *size)
    metas = [dict(ori_shape=size, img_shape=size)] * 2
    with torch.no_grad():
        ref = model.inference(x, metas)
        model.test_cfg.precision = 'bf16'
        got = model.inference(x, metas)
    assert got.dtype == torch.float32
    assert (got - ref).abs().max() < 0.1
    assert (got.argmax(1) == ref.argmax(1)).float().mean() > 0.9
