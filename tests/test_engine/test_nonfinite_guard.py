"""The non-finite guard: a step with a NaN/Inf loss or gradient norm is not applied,
training stops at the first one with one line (iteration, loss terms, last good
checkpoint), optionally after ``max_skips`` skipped steps; no checkpoint with NaN
weights is ever written."""
import math
import os
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from mmengine.config import Config
from mmengine.optim import AmpOptimWrapper, OptimWrapper

from dtop.engine import DToPRunner, NonFiniteGuardHook
from dtop.engine.hooks.nonfinite_guard_hook import check_finite_before_save
from dtop.engine.optim_wrappers import (NonFiniteGuardAmpOptimWrapper,
                                        NonFiniteGuardOptimWrapper,
                                        guard_optim_wrapper_cfg,
                                        guarded_optim_wrapper_class)
from dtop.utils.checkpoint import non_finite_tensors, torch_load_checkpoint
from dtop.utils.errors import NonFiniteError, OptionError, run_cli

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'test_tools'))
from _tiny_runs import BASE_CONFIG, ROOT, make_tiny_ade, write_tiny_config  # noqa: E402


def _setup(seed=None):
    torch.manual_seed(int.from_bytes(os.urandom(2), 'little') if seed is None else seed)
    model = nn.Linear(5, 3)
    wrapper = NonFiniteGuardOptimWrapper(torch.optim.SGD(model.parameters(), lr=0.1))
    return model, wrapper, torch.randn(4, 5)


def _params(model):
    return [p.detach().clone() for p in model.parameters()]


def test_finite_step_is_applied():
    model, wrapper, x = _setup()
    before = _params(model)
    wrapper.update_params(model(x).pow(2).mean())
    assert wrapper.pop_nonfinite_event() is None and wrapper.skipped_steps == 0
    assert all(not torch.equal(a, b) for a, b in zip(before, _params(model)))


@pytest.mark.parametrize('kind', ['nan_loss', 'inf_loss', 'nan_grad'])
def test_non_finite_step_is_not_applied(kind):
    model, wrapper, x = _setup()
    before = _params(model)
    out = model(x)
    if kind == 'nan_loss':
        loss = out.mean() * float('nan')
    elif kind == 'inf_loss':
        loss = out.mean() + float('inf')
    else:  # finite loss (0), non-finite gradient: d sqrt(|w - w|) at 0
        loss = torch.sqrt((model.weight - model.weight.detach()).abs()).sum() + 0 * out.sum()
    wrapper.update_params(loss)
    assert all(torch.equal(a, b) for a, b in zip(before, _params(model)))
    assert all(p.grad is None or not p.grad.abs().sum() for p in model.parameters())
    event = wrapper.pop_nonfinite_event()
    assert event is not None and wrapper.skipped_steps == 1
    if kind == 'nan_grad':
        assert event['loss_finite'] and event['loss'] == 0.0
        assert not math.isfinite(event['grad_norm'])
        assert event['bad_params'] and event['bad_params'][0] is model.weight
    else:
        assert not event['loss_finite']
    assert wrapper.pop_nonfinite_event() is None  # popped once
    # the next finite step is applied again
    wrapper.update_params(model(x).pow(2).mean())
    assert wrapper.pop_nonfinite_event() is None
    assert not torch.equal(before[0], model.weight.detach())


def test_guarded_classes_cover_amp_and_custom_wrappers():
    assert guarded_optim_wrapper_class(OptimWrapper) is NonFiniteGuardOptimWrapper
    amp = guarded_optim_wrapper_class(AmpOptimWrapper)
    assert amp is NonFiniteGuardAmpOptimWrapper and not amp.check_grads  # loss scaler's job

    class MyWrapper(OptimWrapper):
        pass

    mine = guarded_optim_wrapper_class(MyWrapper)
    assert issubclass(mine, MyWrapper) and mine.check_grads
    assert guarded_optim_wrapper_class(MyWrapper) is mine
    cfg = guard_optim_wrapper_cfg(dict(type='AmpOptimWrapper', loss_scale='dynamic',
                                       optimizer=dict(type='SGD', lr=0.1)))
    assert cfg['type'] is NonFiniteGuardAmpOptimWrapper
    several = dict(backbone=dict(type='OptimWrapper'), head=dict(type='OptimWrapper'))
    assert guard_optim_wrapper_cfg(several) is several  # OptimWrapperDict: unchanged
    with pytest.raises(OptionError, match='max_skips must be an integer >= 0'):
        NonFiniteGuardHook(max_skips=-1)


def test_no_checkpoint_of_non_finite_weights(tmp_path):
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    with torch.no_grad():
        model[1].weight[0, 0] = float('nan')
    with pytest.raises(NonFiniteError) as info:
        check_finite_before_save(model, str(tmp_path / 'iter_4.pth'), str(tmp_path))
    msg = str(info.value)
    assert msg.startswith(f'not saving checkpoint {tmp_path / "iter_4.pth"}: ')
    assert '1.weight (1 NaN of 8)' in msg and 'no checkpoint was saved before' in msg


# ---------------------------------------------------------------- tiny trainings
@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp('nonfinite')
    data = make_tiny_ade(root / 'data', n_train=2, n_val=1,
                         seed=int.from_bytes(os.urandom(2), 'little'))
    return dict(root=root, config=write_tiny_config(root / 'tiny.py', data, BASE_CONFIG,
                                                    max_iters=6))


def _diverging_cfg(tiny, work, name, custom_hooks):
    cfg = Config.fromfile(str(tiny['config']))
    cfg.work_dir = str(work)
    cfg.experiment_name = name
    cfg.optim_wrapper.optimizer.lr = 1e4  # the diverging run
    cfg.default_hooks.checkpoint = dict(type='CheckpointHook', by_epoch=False, interval=2)
    cfg.default_hooks.pop('visualization', None)
    cfg.custom_hooks = custom_hooks
    return cfg


def _all_checkpoints_finite(work):
    names = sorted(n for n in os.listdir(work) if n.endswith('.pth'))
    for name in names:
        sd = torch_load_checkpoint(os.path.join(work, name))['state_dict']
        assert not non_finite_tensors(sd), f'{name} holds non-finite weights'
    return names


def test_diverging_training_stops_at_the_first_non_finite_step(tiny, tmp_path, capsys):
    """lr 1e4, no NonFiniteGuardHook in the config: DToPRunner adds one."""
    work = tmp_path / 'work'
    cfg = _diverging_cfg(tiny, work, 'div_default', [dict(type='FlopsMetricDimsHook')])
    runner = DToPRunner.from_cfg(cfg)
    assert sum(isinstance(h, NonFiniteGuardHook) for h in runner.hooks) == 1
    with pytest.raises(SystemExit) as info:
        run_cli(runner.train)
    assert info.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith('error: training stopped at iteration ')
    line = err[0]
    it = int(line.split('iteration ')[1].split(':')[0])
    assert runner.iter == it - 1  # stopped there
    assert 'non-finite' in line and ('nan' in line or 'inf' in line)
    assert 'The step was not applied, so the weights are still finite' in line
    assert 'optim_wrapper.optimizer.lr=1e+04' in line
    assert isinstance(runner.optim_wrapper, NonFiniteGuardOptimWrapper)
    assert not non_finite_tensors(runner.model.state_dict())
    names = _all_checkpoints_finite(work)
    if names:
        last = max(names, key=lambda n: int(n[5:-4]))
        assert f'the last good checkpoint is {work / last}' in line
    else:
        assert 'no checkpoint was saved before' in line


def test_max_skips_skips_then_stops(tiny, tmp_path, capsys):
    work = tmp_path / 'work'
    cfg = _diverging_cfg(tiny, work, 'div_skip',
                         [dict(type='NonFiniteGuardHook', max_skips=1)])
    runner = DToPRunner.from_cfg(cfg)
    with pytest.raises(NonFiniteError) as info:
        runner.train()
    msg = str(info.value)
    first = int(msg.split('iteration ')[1].split(':')[0])
    assert '(1 earlier bad step(s) skipped, max_skips=1)' in msg
    out = capsys.readouterr().out
    assert f'NonFiniteGuardHook: iteration {first - 1}: ' in out
    assert 'the optimizer step was skipped (1 of max_skips=1)' in out
    _all_checkpoints_finite(work)


@pytest.mark.slow
def test_diverging_training_cli_exits_non_zero(tiny, tmp_path):
    """Acceptance: tools/train.py with optim_wrapper.optimizer.lr=1e4."""
    import subprocess
    work = tmp_path / 'work'
    proc = subprocess.run(
        [sys.executable, str(ROOT / 'tools' / 'train.py'), str(tiny['config']),
         '--work-dir', str(work), '--cfg-options', 'optim_wrapper.optimizer.lr=1e4'],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1].startswith(
        'error: training stopped at iteration ')
    assert 'non-finite' in proc.stderr and 'Traceback' not in proc.stderr
    _all_checkpoints_finite(work)
