"""mmengine checkpoints of a DToP model: save through the Runner, then load them
back with ``load_from`` (weights only) and with ``resume`` (full state), in process.

Uses the tiny config derived from the shipped ADE20K BASE config (as the e2e
tests) and the safe checkpoint loader (dtop.utils.checkpoint) that every load uses.
"""
import copy

import pytest
import torch
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.runner import Runner

from _tiny_runs import BASE_CONFIG, make_tiny_ade, write_tiny_config


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp('ckpt')
    data = make_tiny_ade(root / 'data', n_train=2, n_val=1)
    cfg = Config.fromfile(str(write_tiny_config(root / 'tiny.py', data, BASE_CONFIG,
                                                max_iters=4)))
    cfg.train_cfg.max_iters = 2
    cfg.work_dir = str(root / 'work')
    cfg.experiment_name = 'roundtrip_train'
    runner = Runner.from_cfg(copy.deepcopy(cfg))
    runner.train()
    ckpt_path = root / 'work' / 'iter_2.pth'
    assert ckpt_path.is_file()
    ckpt = torch.load(ckpt_path, map_location='cpu', weights_only=False)
    lr = [g['lr'] for g in runner.optim_wrapper.optimizer.param_groups]
    return dict(cfg=cfg, ckpt_path=ckpt_path, ckpt=ckpt, lr=lr)


def _fresh_runner(trained, name, **overrides):
    cfg = copy.deepcopy(trained['cfg'])
    cfg.experiment_name = name
    for k, v in overrides.items():
        cfg[k] = v
    return Runner.from_cfg(cfg)


def _model_state(runner):
    return {k: v.detach().clone() for k, v in runner.model.state_dict().items()}


def test_checkpoint_content(trained):
    ckpt = trained['ckpt']
    assert ckpt['meta']['iter'] == 2
    keys = ckpt['state_dict'].keys()
    for prefix in ('backbone.', 'decode_head.', 'auxiliary_head.0.', 'auxiliary_head.1.'):
        assert any(k.startswith(prefix) for k in keys), prefix
    assert 'optimizer' in ckpt and 'param_schedulers' in ckpt


def test_load_from_restores_weights_only(trained):
    runner = _fresh_runner(trained, 'roundtrip_load', load_from=str(trained['ckpt_path']),
                           resume=False)
    saved = trained['ckpt']['state_dict']
    before = _model_state(runner)
    assert any(not torch.equal(before[k], saved[k]) for k in saved), \
        'a fresh model already equals the checkpoint: the test could not fail'
    runner.load_or_resume()
    after = _model_state(runner)
    assert after.keys() == saved.keys()
    for k in saved:
        assert torch.equal(after[k], saved[k]), k
    assert runner.iter == 0  # weights only: training would start at iteration 0


class _StateAtTrainStart(Hook):
    """Records what training starts from (``before_train`` runs after resuming)."""

    def before_train(self, runner) -> None:
        self.iter = runner.iter
        self.lr = [g['lr'] for g in runner.optim_wrapper.optimizer.param_groups]
        self.adam_steps = {int(s['step'])
                           for s in runner.optim_wrapper.optimizer.state.values()}
        self.last_steps = [s.last_step for s in runner.param_schedulers]
        self.model_state = {k: v.detach().clone()
                            for k, v in runner.model.state_dict().items()}


def test_resume_restores_iteration_optimizer_and_schedule(trained):
    # load_from=None + resume=True: the latest checkpoint of work_dir is used; one
    # more iteration (max_iters 3) is trained from there.
    train_cfg = dict(trained['cfg'].train_cfg, max_iters=3)
    runner = _fresh_runner(trained, 'roundtrip_resume', load_from=None, resume=True,
                           train_cfg=train_cfg)
    probe = _StateAtTrainStart()
    runner.register_hook(probe, priority='VERY_LOW')
    runner.train()
    saved = trained['ckpt']
    assert probe.iter == 2
    for k, v in probe.model_state.items():
        assert torch.equal(v, saved['state_dict'][k]), k
    assert probe.adam_steps == {2}
    assert probe.lr == pytest.approx(trained['lr'])
    assert probe.last_steps == [s['last_step'] for s in saved['param_schedulers']]
    assert runner.iter == 3
    ckpt = torch.load(trained['ckpt_path'].with_name('iter_3.pth'), map_location='cpu',
                      weights_only=False)
    assert ckpt['meta']['iter'] == 3
    assert {int(s['step']) for s in ckpt['optimizer']['state'].values()} == {3}
