"""DDP's ``find_unused_parameters`` from the model.

``find_unused_parameters = None`` (the runtime base) lets DToPRunner ask the model:
a DToP model uses every trainable parameter in every training step (all heads
run; a stage whose tokens have all exited keeps its layers in the graph), so DDP
runs without the per-step graph walk. Checked here against real backward passes,
and with a pruned training step under DDP (2 gloo processes) with either setting.
"""
import json
import os
import subprocess
import sys

import pytest
import torch
from mmengine.config import Config
from mmengine.structures import PixelData
from mmseg.registry import MODELS
from mmseg.structures import SegDataSample

from _tiny_runs import BASE_CONFIG, ROOT, free_port
from dtop.utils.launch import (configure_cpu_ddp, ddp_wrapper_cfg, prepare_distributed,
                               resolve_find_unused_parameters, unused_training_parameters)
from tests.utils.tiny_models import tiny_model_cfg

NUM_CLASSES = 5


def build(family='segvit', **kw):
    torch.manual_seed(0)
    model = MODELS.build(tiny_model_cfg(family, num_classes=NUM_CLASSES, **kw))
    with torch.no_grad():  # confident ATM heads, so that a threshold prunes
        for head in model.stage_heads:
            if hasattr(head, 'class_embed'):
                head.class_embed.bias.copy_(torch.tensor([2.5, -2.5]))
    return model.train()


def samples(n, size=64):
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        ds = SegDataSample(gt_sem_seg=PixelData(
            data=torch.randint(0, NUM_CLASSES, (1, size, size), generator=g)))
        ds.set_metainfo(dict(img_shape=(size, size), ori_shape=(size, size),
                             pad_shape=(size, size)))
        out.append(ds)
    return out


@pytest.mark.parametrize('family,kw', [
    ('segvit', {}),
    ('segvit', dict(prune_threshold=0.3)),
    ('segvit', dict(prune_threshold=0.0, keep_topk_per_class=0)),  # every token exits
    ('setr', dict(prune_threshold=0.0, keep_topk_per_class=0)),
    ('segmenter', dict(prune_threshold=0.0, keep_topk_per_class=0)),
])
def test_declared_unused_parameters_match_a_real_backward(family, kw):
    """What the model declares (nothing unused) is what a training step does: every
    trainable parameter gets a gradient, also when all tokens exit at stage 1."""
    model = build(family, **kw)
    assert model.unused_parameters_in_training() == []
    losses = model.loss(torch.randn(2, 3, 64, 64), samples(2))
    sum(v for k, v in losses.items() if 'loss' in k).backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert no_grad == []
    if kw.get('prune_threshold') == 0.0:
        assert float(losses['prune.keep_ratio_s1']) < 0.1  # (almost) all exited


def test_parameters_outside_the_stage_loop_are_reported():
    model = build()
    model.extra = torch.nn.Linear(2, 2)  # never used by loss()
    model.backbone.layers[0].ln1.weight.requires_grad_(False)  # frozen: not DDP's business
    assert model.unused_parameters_in_training() == ['extra.weight', 'extra.bias']
    assert resolve_find_unused_parameters(None, model) is True


def test_resolve_find_unused_parameters():
    model = build()
    assert unused_training_parameters(model) == []
    assert resolve_find_unused_parameters(None, model) is False
    assert resolve_find_unused_parameters(True, model) is True  # explicit override
    assert resolve_find_unused_parameters(False, torch.nn.Linear(2, 2)) is False
    # a model that cannot tell: the safe setting
    assert unused_training_parameters(torch.nn.Linear(2, 2)) is None
    assert resolve_find_unused_parameters(None, torch.nn.Linear(2, 2)) is True


def test_ddp_wrapper_cfg():
    model = build()
    # mmengine's default wrapper, with the value filled in
    assert ddp_wrapper_cfg(Config(dict(find_unused_parameters=None)), None, model) == dict(
        type='MMDistributedDataParallel', broadcast_buffers=False,
        find_unused_parameters=False)
    assert ddp_wrapper_cfg(Config(dict(find_unused_parameters=True)), None, model)[
        'find_unused_parameters'] is True
    # the CPU wrapper of tools/train.py: device_ids stay None
    cfg = Config(dict(find_unused_parameters=None))
    configure_cpu_ddp(cfg)
    assert 'find_unused_parameters' not in cfg.model_wrapper_cfg
    assert ddp_wrapper_cfg(cfg, cfg.model_wrapper_cfg, model) == dict(
        type='MMDistributedDataParallel', device_ids=None, find_unused_parameters=False)
    # an explicit wrapper setting wins
    wrapper = dict(type='MMDistributedDataParallel', find_unused_parameters=True)
    assert ddp_wrapper_cfg(cfg, wrapper, model)['find_unused_parameters'] is True
    # not a DDP: unchanged
    fsdp = dict(type='MMFullyShardedDataParallel')
    assert ddp_wrapper_cfg(cfg, fsdp, model) is fsdp


def test_runtime_base_leaves_it_to_the_model():
    cfg = Config.fromfile(str(BASE_CONFIG))
    assert cfg.find_unused_parameters is None and cfg.runner_type == 'DToPRunner'
    prepare_distributed(cfg, 'pytorch', cuda_available=True)
    assert cfg.find_unused_parameters is None
    # another runner cannot decide it from the model: True, as mmengine would want
    cfg.runner_type = 'Runner'
    prepare_distributed(cfg, 'pytorch', cuda_available=True)
    assert cfg.find_unused_parameters is True


@pytest.mark.slow
def test_pruned_ddp_step_with_either_setting(tmp_path):
    """2 gloo processes, pruning live: some tokens exit / one image loses all its
    tokens on one rank / every token exits. DDP trains with find_unused_parameters
    False (the model's answer) and True alike, to the same weights."""
    out = tmp_path / 'ddp.json'
    env = dict(os.environ, CUDA_VISIBLE_DEVICES='', OMP_NUM_THREADS='1')
    proc = subprocess.run(
        [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2',
         f'--master_port={free_port()}', str(ROOT / 'tests/test_tools/_ddp_prune_step.py'),
         str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads(out.read_text())
    for case in ('threshold', 'one_image_empty', 'all_exit'):
        off, on = results[f'{case}/find_unused=False'], results[f'{case}/find_unused=True']
        assert 'error' not in off, off
        assert 'error' not in on, on
        assert off['decided'] is False  # what DToPRunner picks for this model
        assert off['losses'] == pytest.approx(on['losses'], rel=1e-6)
        assert off['checksum'] == pytest.approx(on['checksum'], rel=1e-9)
        assert off['abs_checksum'] == pytest.approx(on['abs_checksum'], rel=1e-9)
    ratios = results['threshold/find_unused=False']['ratios']
    assert min(r[1] for rank in ratios for r in rank) < 1.0, 'no token exited'
    rank0, rank1 = results['one_image_empty/find_unused=False']['ratios']
    assert all(r == [1.0, 1.0] for r in rank0) and all(r == [0.5, 0.5] for r in rank1)
    for rank in results['all_exit/find_unused=False']['ratios']:
        assert all(r == [0.0, 0.0] for r in rank)
