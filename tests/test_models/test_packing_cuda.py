"""Packed attention and the pruned stage loop on CUDA (skipped without a GPU).

The CPU suite (test_packing.py, test_dtop_segmentor.py) cannot reach the CUDA-only
attention backends (``varlen``: variable-length FlashAttention; ``nested``:
nested-jagged SDPA) nor the CUDA kernels behind ``dense``/``loop``/``padded``.
Here, on ragged lengths that include an empty image:

* every backend of :func:`dtop.models.packing.packed_attention` equals a per-image
  SDPA reference (computed in fp32 from the same inputs), outputs and gradients, in
  fp32, bf16 and fp16 (tolerances per dtype; ``varlen`` is half precision only);
* a tiny DToP model on CUDA with ``p0 = 1`` equals mmseg's dense ViT + head on the
  same weights;
* a pruned batch equals its images run one by one (decisions, head outputs, final
  map), and a ragged training batch (one image emptied after stage 0) has the same
  outputs and parameter gradients as the images alone, per attention backend.

``tools/device_check.sh`` runs this file on the GPU. ``DTOP_CUDA_TESTS_ON_CPU=1``
runs it on the CPU instead (``device_check.sh --dry-run``): the same code paths
minus the CUDA-only backends, which are then skipped.
"""
import os

import pytest
import torch
import torch.nn.functional as F

from dtop.models.packing import Segments, _has_varlen, packed_attention, \
    select_attention_backend
# the model and checks of the CPU tests (test_dtop_segmentor.py)
from tests.utils.tiny_segmentor import (build, check_batch_equals_images_one_by_one,
                                        check_ragged_batch_equals_images_alone,
                                        check_threshold_one_equals_dense, images,
                                        without_dropout)

ON_CPU = os.environ.get('DTOP_CUDA_TESTS_ON_CPU') == '1'
if torch.cuda.is_available():
    DEVICE = torch.device('cuda')
elif ON_CPU:
    DEVICE = torch.device('cpu')
else:
    pytestmark = pytest.mark.skip(reason='needs a CUDA device '
                                  '(DTOP_CUDA_TESTS_ON_CPU=1 runs it on the CPU)')
    DEVICE = torch.device('cpu')

DTYPES = {'fp32': torch.float32, 'bf16': torch.bfloat16, 'fp16': torch.float16}
# (rtol, atol) for outputs, and for gradients (atol scaled by the gradient's largest
# magnitude): fp32 kernels may use another summation order or fused softmax; the half
# kernels round P (softmax) and the output to 8 (bf16) / 11 (fp16) mantissa bits.
OUT_TOL = {'fp32': (1e-4, 2e-5), 'bf16': (2e-2, 1e-2), 'fp16': (2e-3, 2e-3)}
GRAD_TOL = {'fp32': (1e-4, 5e-5), 'bf16': (5e-2, 3e-2), 'fp16': (5e-3, 5e-3)}
RAGGED = [37, 0, 5, 64, 1, 23]  # incl. an empty image and a single-token one
UNIFORM = [16, 16, 16]
HEADS, HEAD_DIM = 4, 64


@pytest.fixture(autouse=True)
def exact_fp32_matmuls():
    """fp32 means fp32: no TF32 in cuDNN convolutions or cuBLAS matmuls."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def runnable(backend, dtype, segments):
    """Skip unless ``backend`` is what ``packed_attention`` really runs here."""
    if backend == 'auto':
        return
    got = select_attention_backend(DEVICE.type, dtype, segments, backend)
    if got != backend:
        why = {'varlen': 'varlen needs CUDA, half precision and '
                         'torch.nn.attention.varlen (present: %s)' % _has_varlen(),
               'nested': 'nested-jagged SDPA is CUDA-only here',
               'dense': 'dense needs equal lengths'}.get(backend, '')
        pytest.skip(f'{backend} does not run on {DEVICE.type}/{dtype} ({why}); '
                    f'the selection gives {got}')


def reference(q, k, v, segments):
    """Per-image SDPA in fp32 (math kernel) on the same (rounded) inputs."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    outs = []
    with sdpa_kernel(SDPBackend.MATH):
        for qi, ki, vi in zip(segments.split(q), segments.split(k), segments.split(v)):
            if qi.shape[0] == 0:
                outs.append(qi.float())
                continue
            o = F.scaled_dot_product_attention(*(t.float().transpose(0, 1)[None]
                                                 for t in (qi, ki, vi)))
            outs.append(o[0].transpose(0, 1))
    return torch.cat(outs)


def qkv(lengths, dtype, seed):
    g = torch.Generator(device='cpu').manual_seed(seed)
    T = sum(lengths)
    return [torch.randn(T, HEADS, HEAD_DIM, generator=g).to(DEVICE, dtype).requires_grad_()
            for _ in range(3)]


def close(got, ref, rtol, atol, what):
    scale = float(ref.abs().max().clamp_min(1.0)) if ref.numel() else 1.0
    torch.testing.assert_close(got.float(), ref.float(), rtol=rtol, atol=atol * scale,
                               msg=lambda m: f'{what}: {m}')


@pytest.mark.parametrize('dtype', list(DTYPES))
@pytest.mark.parametrize('backend', ['auto', 'varlen', 'nested', 'loop', 'padded', 'dense'])
@pytest.mark.parametrize('lengths', [RAGGED, UNIFORM], ids=['ragged', 'uniform'])
def test_packed_attention_backends_equal_per_image_sdpa(dtype, backend, lengths):
    dt = DTYPES[dtype]
    segments = Segments.from_lengths(lengths, DEVICE)
    runnable(backend, dt, segments)
    q, k, v = qkv(lengths, dt, seed=len(lengths) + HEADS)
    got = packed_attention(q, k, v, segments, backend=backend)
    assert got.shape == q.shape and got.dtype == dt
    ref = reference(q, k, v, segments)
    close(got, ref, *OUT_TOL[dtype], f'{backend}/{dtype} output')
    # gradients: of the kernel under test vs of the fp32 reference
    w = torch.randn(got.shape, generator=torch.Generator().manual_seed(7)).to(DEVICE)
    g_got = torch.autograd.grad((got.float() * w).sum(), (q, k, v))
    g_ref = torch.autograd.grad((ref * w).sum(), (q, k, v))
    for name, a, b in zip('qkv', g_got, g_ref):
        assert torch.isfinite(a).all(), f'{backend}/{dtype}: non-finite d{name}'
        close(a, b, *GRAD_TOL[dtype], f'{backend}/{dtype} d{name}')


@pytest.mark.parametrize('dtype', list(DTYPES))
def test_all_tokens_exited_keeps_the_graph(dtype):
    """No token left in the batch: an empty output that still backpropagates."""
    dt = DTYPES[dtype]
    segments = Segments.from_lengths([0, 0], DEVICE)
    q, k, v = qkv([0, 0], dt, seed=1)
    out = packed_attention(q, k, v, segments)
    assert out.shape == (0, HEADS, HEAD_DIM)
    grads = torch.autograd.grad(out.float().sum(), (q, k, v))
    assert all(g.shape == q.shape for g in grads)


def test_auto_selection_on_this_device():
    """What ``auto`` picks here (the rule itself is tested on CPU in test_packing.py)."""
    ragged = Segments.from_lengths(RAGGED, DEVICE)
    uniform = Segments.from_lengths(UNIFORM, DEVICE)
    sel = select_attention_backend
    assert sel(DEVICE.type, torch.bfloat16, uniform) == 'dense'
    if DEVICE.type == 'cuda':
        assert sel('cuda', torch.bfloat16, ragged) == ('varlen' if _has_varlen() else 'nested')
        assert sel('cuda', torch.float32, ragged) == 'nested'


# ----------------------------------------------------------- tiny model on the device

def test_threshold_one_equals_dense_model_on_device():
    check_threshold_one_equals_dense(build(prune_threshold=1.0).to(DEVICE),
                                     images(2).to(DEVICE), rtol=1e-4, atol=2e-5)


@pytest.mark.parametrize('backend', ['auto', 'nested', 'loop', 'padded'])
def test_pruned_batch_equals_images_one_by_one_on_device(backend):
    model = build(seed=1, prune_threshold=[0.55, 0.5], keep_topk_per_class=1,
                  img_size=(96, 96)).to(DEVICE)
    runnable(backend, torch.float32, Segments.from_lengths([3, 1], DEVICE))
    model.backbone.attention_backend = backend
    check_batch_equals_images_one_by_one(model, images(4, 96, 96, seed=1).to(DEVICE),
                                         rtol=1e-4, atol=1e-5, map_atol=1e-5)


@pytest.mark.parametrize('backend', ['auto', 'nested', 'loop', 'padded'])
def test_ragged_training_batch_equals_images_alone_on_device(backend):
    """Outputs and parameter gradients of a ragged batch (image 0 empty after
    stage 0) equal the sums over the images run alone (test_dtop_segmentor's test
    of the same name, on the device)."""
    model = without_dropout(build(seed=9, prune_threshold=0.5).train())
    model.to(DEVICE)
    runnable(backend, torch.float32, Segments.from_lengths([3, 1], DEVICE))
    model.backbone.attention_backend = backend
    check_ragged_batch_equals_images_alone(model, images(3, seed=9).to(DEVICE), map_rtol=1e-4,
                                           map_atol=1e-5, grad_atol=2e-5)


@pytest.mark.parametrize('precision', ['bf16', 'fp16'])
def test_half_precision_inference_close_to_fp32_on_device(precision):
    """Autocast inference (the varlen path on CUDA when tokens exit) agrees with
    fp32."""
    model = build(seed=10, prune_threshold=0.5).to(DEVICE)
    x = images(2, seed=10).to(DEVICE)
    metas = [dict(ori_shape=(64, 64), img_shape=(64, 64))] * 2
    with torch.no_grad():
        ref = model.inference(x, metas)
        model.test_cfg.precision = precision
        got = model.inference(x, metas)
    assert got.dtype == torch.float32
    agree = (got.argmax(1) == ref.argmax(1)).float().mean()
    assert agree > 0.95, f'{precision} and fp32 predictions agree on only {agree:.2%}'
    assert (got - ref).abs().max() < 0.1
