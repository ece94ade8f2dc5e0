"""A tiny built DToP segmentor and the equivalence checks run on it, shared by the
CPU tests (tests/test_models/test_dtop_segmentor.py) and their device counterparts
(tests/test_models/test_packing_cuda.py).

The checks take the model and its input where they are (CPU or a device) and the
tolerances of the caller; they assert, and return what a caller may check further.
"""
from typing import List

import torch
import torch.nn.functional as F
from mmengine.structures import PixelData
from mmseg.models.backbones import VisionTransformer
from mmseg.registry import MODELS
from mmseg.structures import SegDataSample

import dtop  # noqa: F401  (registers the DToP modules)
from dtop.models.pruning import ExitPolicy
from tests.utils.tiny_models import tiny_model_cfg

NUM_CLASSES = 5


def build(seed=0, **kwargs):
    """A tiny SegViT-style DToP model (``tiny_model_cfg`` overrides in ``kwargs``),
    initialised with ``seed`` and sharpened so that pruning happens; eval mode."""
    torch.manual_seed(seed)
    model = MODELS.build(tiny_model_cfg(num_classes=NUM_CLASSES, **kwargs))
    model.init_weights()
    sharpen(model, seed)
    return model.eval()


def sharpen_atm_head(head, generator: torch.Generator, q_scale: float,
                     k_scale: float) -> None:
    """Confident class scores and spread-out masks for a random ATM head: the query
    and key projections of its last cross-attention scaled, a random key bias."""
    head.class_embed.bias.copy_(torch.tensor([2.5, -2.5]))
    cross = head.decoder.layers[-1].multihead_attn
    cross.q.weight.mul_(q_scale)
    cross.k.weight.mul_(k_scale)
    cross.k.bias.copy_(torch.randn(cross.k.bias.shape, generator=generator))


def sharpen(model, seed=0, q_scale: float = 40, k_scale: float = 40) -> None:
    """Give random (ATM) stage heads confident, spread-out scores so that pruning
    happens (:func:`sharpen_atm_head` on each, random draws seeded by ``seed``)."""
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for head in model.stage_heads:
            sharpen_atm_head(head, g, q_scale, k_scale)


def images(n, h=64, w=64, seed=0):
    """``n`` random images ``(n, 3, h, w)`` of increasing contrast."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, h, w, generator=g) * torch.linspace(0.5, 2.0, n).view(n, 1, 1, 1)


def samples_with_labels(n, h, w, seed=0, ignored=(4, 4)) -> List[SegDataSample]:
    """``n`` data samples with random labels, the top-left ``ignored`` (rows, columns)
    set to the ignore index 255."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        label = torch.randint(0, NUM_CLASSES, (1, h, w), generator=g)
        label[:, :ignored[0], :ignored[1]] = 255
        ds = SegDataSample(gt_sem_seg=PixelData(data=label))
        ds.set_metainfo(dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w)))
        out.append(ds)
    return out


def dense_reference(model, x):
    """The same weights as a plain dense model: mmseg's ViT + the decode head on all
    tokens, on ``x``'s device."""
    bb = model.backbone
    ref = VisionTransformer(img_size=bb.img_size, patch_size=16, embed_dims=32,
                            num_layers=len(bb.layers), num_heads=2, mlp_ratio=2,
                            out_indices=bb.out_indices, with_cls_token=False,
                            norm_cfg=dict(type='LN', eps=1e-6), patch_bias=True)
    ref.load_state_dict(bb.state_dict())
    ref.to(x.device).eval()
    feats = ref(x)
    tokens = feats[-1].flatten(2).transpose(1, 2)
    cls, mask = model.decode_head(tokens)
    h, w = feats[-1].shape[-2:]
    probs = cls.softmax(-1)[..., 0, None, None] * mask.sigmoid().view(x.shape[0], -1, h, w)
    return F.interpolate(probs, size=x.shape[-2:], mode='bilinear', align_corners=False)


class PerImagePolicy(ExitPolicy):
    """A decision that depends on each image alone: images listed in
    ``exit_all`` lose every token at stage 0 (empty afterwards), the others
    their more confident half at every stage."""

    exit_all = frozenset()

    def prunes_at(self, stage):
        return True

    def __call__(self, stage, scores, segments):
        conf = scores.amax(1)
        exits = torch.zeros_like(conf, dtype=torch.bool)
        bounds = segments.cu_seqlens.tolist()
        for b, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
            if hi == lo:
                continue
            if stage == 0 and b in self.exit_all:
                exits[lo:hi] = True
            else:
                exits[lo:hi] = conf[lo:hi] > conf[lo:hi].median()
        return exits


def objective(out, weights):
    """A scalar of every output of the stage loop (final map, each head's canvas and
    scores), weighted per element."""
    total = (out.final_map * weights[0]).sum()
    for (head_out, canvas), w in zip(out.head_outputs, weights[1:]):
        total = total + (canvas * w).sum() + head_out.image_values.sum()
    return total


def without_dropout(model):
    """Train mode (autograd), but deterministic: no dropout anywhere."""
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
        elif isinstance(m, torch.nn.MultiheadAttention):
            m.dropout = 0.0
    return model


def check_threshold_one_equals_dense(model, x, rtol, atol) -> None:
    """``p0 = 1`` (``model`` built so): the output equals :func:`dense_reference` and
    every token runs every stage."""
    with torch.no_grad():
        got = model._forward(x)
        ref = dense_reference(model, x)
        out = model.run_stages(x)
    torch.testing.assert_close(got, ref, rtol=rtol, atol=atol)
    assert (out.active_counts == 16).all()
    assert (out.exit_stage == 2).all()


def check_batch_equals_images_one_by_one(model, x, rtol, atol, map_atol) -> None:
    """A pruned batch equals its images run one by one: token counts, exit stages,
    head outputs (``rtol``/``atol``) and final map (``rtol``/``map_atol``)."""
    n = x.shape[0]
    with torch.no_grad():
        batched = model.run_stages(x)
        singles = [model.run_stages(x[i:i + 1]) for i in range(n)]
    counts = batched.active_counts
    tokens = (x.shape[-2] // 16) * (x.shape[-1] // 16)
    assert (counts[:, 1] < tokens).any(), 'pruning did not happen; test is vacuous'
    assert len({tuple(c.tolist()) for c in counts}) > 1, 'images share a pattern'
    for i, single in enumerate(singles):
        assert torch.equal(counts[i], single.active_counts[0])
        assert torch.equal(batched.exit_stage[i], single.exit_stage[0])
        for (ob, cb), (os_, cs) in zip(batched.head_outputs, single.head_outputs):
            torch.testing.assert_close(ob.image_values[i], os_.image_values[0],
                                       rtol=rtol, atol=atol)
            torch.testing.assert_close(cb[i], cs[0], rtol=rtol, atol=atol)
        torch.testing.assert_close(batched.final_map[i], single.final_map[0],
                                   rtol=rtol, atol=map_atol)


def check_ragged_batch_equals_images_alone(model, x, map_rtol, map_atol, grad_atol):
    """Three images, image 0 emptied after stage 0 (:class:`PerImagePolicy`): the
    batch's outputs and parameter gradients equal the sums over the images run alone.

    Args:
        model: in train mode (:func:`without_dropout`), on ``x``'s device.
        x (Tensor): ``(3, 3, 64, 64)`` images.
        map_rtol, map_atol (float): tolerance of the final maps.
        grad_atol (float): absolute tolerance of the gradients, relative to each
            gradient's largest magnitude (fp32 sums in another order).

    Returns:
        Tensor: the batch's active token counts ``(3, num_stages)``.
    """
    policy = model.set_exit_policy(PerImagePolicy())
    g = torch.Generator().manual_seed(9)
    weights = [torch.randn(3, NUM_CLASSES, 4, 4, generator=g).to(x.device)
               for _ in range(4)]
    policy.exit_all = {0}
    batched = model.run_stages(x)
    counts = batched.active_counts
    assert counts[0].tolist() == [16, 0, 0], 'image 0 should have no token left'
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(objective(batched, weights), params, allow_unused=True)
    summed = [torch.zeros_like(p) for p in params]
    for i in range(3):
        policy.exit_all = {0} if i == 0 else set()
        single = model.run_stages(x[i:i + 1])
        assert torch.equal(single.active_counts[0], counts[i])
        torch.testing.assert_close(batched.final_map[i], single.final_map[0],
                                   rtol=map_rtol, atol=map_atol)
        gi = torch.autograd.grad(objective(single, [w[i:i + 1] for w in weights]), params,
                                 allow_unused=True)
        for acc, gr in zip(summed, gi):
            if gr is not None:
                acc += gr
    for p_grad, ref in zip(grads, summed):
        if p_grad is None:
            assert ref.abs().max() == 0
        else:
            scale = float(ref.abs().max().clamp_min(1.0))
            torch.testing.assert_close(p_grad, ref, rtol=1e-4, atol=grad_atol * scale)
    return counts
