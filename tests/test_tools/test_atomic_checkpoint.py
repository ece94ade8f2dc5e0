"""A save interrupted at any point loses nothing: --resume continues from the last
complete checkpoint with the same iteration, optimizer and scheduler state.

The demo configs keep one checkpoint (max_keep_ckpts=1); with mmengine's
CheckpointHook a kill during the save deleted the old file first and left a
truncated new one. Here DToPRunner's AtomicCheckpointHook is interrupted (an
exception in-process at three points; a real SIGKILL in a subprocess) and a fresh
runner resumes.
"""
import os
import sys

import pytest
import torch
from mmengine.config import Config
from mmengine.hooks import Hook

from _faulty_hook import SimulatedCrash
from _tiny_runs import BASE_CONFIG, ROOT, make_tiny_ade, write_tiny_config
from dtop.engine import DToPRunner
from dtop.engine.hooks import AtomicCheckpointHook
from dtop.utils import allow_full_checkpoint_unpickling


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    allow_full_checkpoint_unpickling()
    root = tmp_path_factory.mktemp('atomic')
    data = make_tiny_ade(root / 'data', n_train=2, n_val=1)
    config = write_tiny_config(root / 'tiny.py', data, BASE_CONFIG, max_iters=6)
    return dict(root=root, config=config)


def _cfg(setup, work_dir, name, **overrides):
    cfg = Config.fromfile(str(setup['config']))
    cfg.work_dir = str(work_dir)
    cfg.experiment_name = name
    cfg.train_dataloader.num_workers = 0
    cfg.default_hooks.checkpoint = dict(type='CheckpointHook', by_epoch=False, interval=2,
                                        max_keep_ckpts=1)
    cfg.default_hooks.pop('visualization', None)
    for k, v in overrides.items():
        cfg[k] = v
    return cfg


class _StartState(Hook):
    def before_train(self, runner):
        self.iter = runner.iter
        self.opt_steps = {int(s['step']) for s in runner.optim_wrapper.optimizer.state.values()}
        self.last_steps = [s.last_step for s in runner.param_schedulers]
        self.weight = runner.model.backbone.patch_embed.projection.weight.detach().clone()


@pytest.mark.parametrize('stage,resume_iter', [
    ('written', 2),   # died while writing iter_4: iter_2 is kept, the partial file removed
    ('renamed', 4),   # iter_4 complete, last_checkpoint not yet moved: newest complete wins
    pytest.param('pointed', 4, marks=pytest.mark.slow),  # iter_2 not yet removed
])
def test_interrupted_save_then_resume(setup, tmp_path, stage, resume_iter):
    work = tmp_path / 'work'
    fault = dict(type='FaultyCheckpointHook', by_epoch=False, interval=2, max_keep_ckpts=1,
                 fault_step=4, fault_stage=stage)
    cfg = _cfg(setup, work, f'atomic_{stage}_1')
    cfg.default_hooks.checkpoint = fault
    with pytest.raises(SimulatedCrash):
        DToPRunner.from_cfg(cfg).train()
    assert (work / 'iter_2.pth').is_file() or resume_iter == 4
    pointed = (work / 'last_checkpoint').read_text()
    assert os.path.isfile(pointed), 'last_checkpoint names a file that does not exist'
    expected = torch.load(work / f'iter_{resume_iter}.pth', map_location='cpu',
                          weights_only=False)
    assert expected['meta']['iter'] == resume_iter

    runner = DToPRunner.from_cfg(_cfg(setup, work, f'atomic_{stage}_2', resume=True))
    # the config asks for mmengine's CheckpointHook; DToPRunner makes it atomic
    assert any(type(h) is AtomicCheckpointHook for h in runner.hooks)
    probe = _StartState()
    runner.register_hook(probe, priority='VERY_LOW')
    runner.train()
    assert probe.iter == resume_iter
    assert probe.opt_steps == {resume_iter}
    assert probe.last_steps == [s['last_step'] for s in expected['param_schedulers']]
    assert torch.equal(probe.weight,
                       expected['state_dict']['backbone.patch_embed.projection.weight'])
    assert runner.iter == 6
    names = sorted(os.listdir(work))
    assert 'iter_6.pth' in names and not any(n.endswith('.partial') for n in names)
    assert (work / 'last_checkpoint').read_text().endswith('iter_6.pth')


@pytest.mark.slow
def test_sigkill_during_save_then_resume_cli(setup, tmp_path):
    """The real thing: tools/train.py SIGKILLed while writing iter_4, then --resume."""
    import subprocess
    work = tmp_path / 'work'
    cfg_path = tmp_path / 'killed.py'
    cfg_path.write_text(
        f"_base_ = [{str(setup['config'])!r}]\n"
        "custom_imports = dict(imports=['dtop', '_faulty_hook'], allow_failed_imports=False)\n"
        "train_dataloader = dict(num_workers=0)\n"
        "default_hooks = dict(checkpoint=dict(\n"
        "    _delete_=True, type='FaultyCheckpointHook', by_epoch=False, interval=2,\n"
        "    max_keep_ckpts=1, fault_step=4, fault_stage='written', action='kill'))\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / 'tests' / 'test_tools'),
                                                       str(ROOT)]))
    cmd = [sys.executable, str(ROOT / 'tools' / 'train.py'), str(cfg_path),
           '--work-dir', str(work)]
    first = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True, timeout=300)
    assert first.returncode == -9, first.stdout[-3000:]
    assert (work / 'iter_2.pth').is_file()
    assert (work / 'last_checkpoint').read_text().endswith('iter_2.pth')
    partial = [n for n in os.listdir(work) if n.endswith('.partial')]
    assert partial == ['.iter_4.pth.partial']
    # resume with the plain (atomic) hook
    cfg_path.write_text(f"_base_ = [{str(setup['config'])!r}]\n"
                        "train_dataloader = dict(num_workers=0)\n"
                        "default_hooks = dict(checkpoint=dict("
                        "interval=2, max_keep_ckpts=1))\n")
    second = subprocess.run(cmd + ['--resume'], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, timeout=300)
    assert second.returncode == 0, second.stdout[-3000:]
    assert 'Auto resumed from the latest checkpoint' in second.stdout
    assert 'removed 1 incomplete checkpoint file(s)' in second.stdout
    assert sorted(n for n in os.listdir(work) if n.endswith('.pth')) == ['iter_6.pth']
    ckpt = torch.load(work / 'iter_6.pth', map_location='cpu', weights_only=False)
    assert ckpt['meta']['iter'] == 6
    assert {int(s['step']) for s in ckpt['optimizer']['state'].values()} == {6}
