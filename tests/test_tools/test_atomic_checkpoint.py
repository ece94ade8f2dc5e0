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

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.logging import HistoryBuffer

from _faulty_hook import SimulatedCrash
from _tiny_runs import BASE_CONFIG, ROOT, make_tiny_ade, write_tiny_config
from dtop.engine import DToPRunner
from dtop.engine.hooks import AtomicCheckpointHook
from dtop.utils.checkpoint import from_plain_checkpoint


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
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
        hub = runner.message_hub
        self.loss_history = hub.log_scalars['train/loss']._log_history.copy() \
            if 'train/loss' in hub.log_scalars else None
        self.last_ckpt = hub.get_info('last_ckpt')


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
    # the message hub (loss history, runtime info) is restored from the plain-data
    # checkpoint, without full unpickling
    hub = from_plain_checkpoint(expected['message_hub'])
    assert isinstance(hub['log_scalars']['train/loss'], HistoryBuffer)
    assert probe.loss_history is not None and len(probe.loss_history) == resume_iter
    np.testing.assert_array_equal(probe.loss_history,
                                  hub['log_scalars']['train/loss']._log_history)
    assert probe.last_ckpt == hub['runtime_info']['last_ckpt']
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


def test_disk_full_during_save_names_free_space_and_the_intact_checkpoint(
        setup, tmp_path, monkeypatch):
    """OSError [Errno 28] while writing iter_4: the .partial is removed, one line names
    the free space and iter_2 (intact), and --resume on the same disk works."""
    import errno

    from mmengine.fileio import LocalBackend

    from dtop.utils.errors import CheckpointError
    work = tmp_path / 'work'
    real_put = LocalBackend.put

    def full_disk_put(self, obj, filepath):
        if 'iter_4' in str(filepath):
            with open(filepath, 'wb') as f:  # part of the file reaches the disk
                f.write(obj[: len(obj) // 3])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_put(self, obj, filepath)

    monkeypatch.setattr(LocalBackend, 'put', full_disk_put)
    with pytest.raises(CheckpointError) as info:
        DToPRunner.from_cfg(_cfg(setup, work, 'full_1')).train()
    msg = str(info.value)
    assert msg.startswith(f'could not save checkpoint {work / "iter_4.pth"}: [Errno 28] '
                          'No space left on device (')
    assert f'free on the disk of {work}' in msg
    assert f'removed the incomplete {work / ".iter_4.pth.partial"}' in msg
    assert f'the previous checkpoint {work / "iter_2.pth"} is intact' in msg
    assert '\n' not in msg
    assert not any(n.endswith('.partial') for n in os.listdir(work))
    assert (work / 'last_checkpoint').read_text() == str(work / 'iter_2.pth')
    monkeypatch.setattr(LocalBackend, 'put', real_put)  # space freed
    runner = DToPRunner.from_cfg(_cfg(setup, work, 'full_2', resume=True))
    probe = _StartState()
    runner.register_hook(probe, priority='VERY_LOW')
    runner.train()
    assert probe.iter == 2 and runner.iter == 6
