"""The shipped optimiser and lr schedule, built by mmengine and stepped (docs/differences.md)."""
from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper
from mmengine.registry import PARAM_SCHEDULERS
from mmseg.registry import MODELS

from tests.utils.tiny_models import tiny_dtop_model_cfg

ROOT = Path(__file__).resolve().parents[2]
COCO_PRUNE = ROOT / 'configs/dtop/dtop_segvit_vit-l16_4xb4-20k_coco-stuff10k-512x512.py'
ADE_BASE = ROOT / 'configs/segvit/segvit_vit-b16_4xb4-160k_ade20k-512x512.py'


def test_heads_train_at_ten_times_the_lr():
    cfg = Config.fromfile(str(ADE_BASE))
    model = MODELS.build(tiny_dtop_model_cfg())
    wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    assert isinstance(wrapper.optimizer, torch.optim.AdamW)
    assert not wrapper.clip_grad_kwargs  # no gradient clipping
    lr_of = {}
    for group in wrapper.optimizer.param_groups:
        for p in group['params']:
            lr_of[id(p)] = (group['lr'], group['weight_decay'])
    seen = set()
    for name, p in model.named_parameters():
        lr, wd = lr_of[id(p)]
        is_head = name.startswith(('decode_head.', 'auxiliary_head.'))
        assert lr == pytest.approx(2e-4 if is_head else 2e-5), name
        assert wd == pytest.approx(0.01), name  # no decay-mult exclusions
        seen.add(name.split('.')[0])
    assert seen == {'backbone', 'decode_head', 'auxiliary_head'}


def test_warmup_then_poly_reaches_zero_at_the_last_iteration():
    cfg = Config.fromfile(str(COCO_PRUNE))
    max_iters = cfg.train_cfg.max_iters
    assert max_iters == 20000
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([param], lr=cfg.optim_wrapper.optimizer.lr)
    schedulers = [PARAM_SCHEDULERS.build(dict(s), default_args=dict(optimizer=optimizer))
                  for s in cfg.param_scheduler]
    lrs = []
    for _ in range(max_iters):
        lrs.append(optimizer.param_groups[0]['lr'])  # lr used by this iteration
        for s in schedulers:
            s.step()
    base = 2e-5
    assert lrs[0] == pytest.approx(base * 1e-6)
    assert lrs[750] == pytest.approx(base / 2, rel=2e-3)  # linear warmup
    assert lrs[1499] == pytest.approx(base, rel=1e-3)  # warmup done
    assert all(b <= a for a, b in zip(lrs[1500:], lrs[1501:]))  # poly decays
    # poly 0.9 from 1500 to max_iters: (1 - t/T)^0.9 of the lr at the start
    t, T = 10000 - 1500, max_iters - 1500
    assert lrs[10000] == pytest.approx(lrs[1500] * (1 - t / T) ** 0.9, rel=1e-3)
    assert lrs[-1] < base * 1e-3  # annealed by the end of training
