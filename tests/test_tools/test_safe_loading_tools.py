"""Through every tool that loads weights: a checkpoint with real weights whose pickle
would create a file never creates it (only --trust-checkpoint unpickles it fully, and
says so); a checkpoint with NaN weights is refused naming the tensor; ``--resume``
of our own checkpoints and of mmengine's native ones restores iteration, optimizer,
scheduler and message hub without full unpickling.

The tools run in process (``main(argv)``, as in test_robustness_cli); the launcher
(dist_train_load.sh, torchrun) is the one slow subprocess test.
"""
import os
import shutil

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.logging import MMLogger

from _tiny_runs import BASE_CONFIG, check, load_tools, make_tiny_ade, run_launcher, \
    write_tiny_config
from dtop.engine import DToPRunner
from dtop.utils.checkpoint import (from_plain_checkpoint, set_trust_checkpoint,
                                   torch_load_checkpoint)
from dtop.utils.errors import run_cli


TOOLS = load_tools('safe', 'test', 'train', 'demo', 'benchmark', sweep='sweep_threshold',
                   confusion='confusion_matrix', publish='publish_model')


class _Touch:
    """Unpickling it runs ``os.system('touch PATH')`` (with a full unpickler)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (os.system, (f'touch {self.path}',))


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp('safe_tools')
    data = make_tiny_ade(root / 'data', n_train=2, n_val=1,
                         seed=int.from_bytes(os.urandom(2), 'little'))
    config = write_tiny_config(root / 'tiny.py', data, BASE_CONFIG, max_iters=4)
    cfg = Config.fromfile(str(config))
    cfg.train_cfg.max_iters = 2
    cfg.work_dir = str(root / 'run')
    cfg.experiment_name = 'safe_tools_train'
    cfg.default_hooks.pop('visualization', None)
    DToPRunner.from_cfg(cfg).train()
    ckpt = root / 'run' / 'iter_2.pth'
    return dict(root=root, data=data, config=str(config), ckpt=str(ckpt),
                image=str(next((data / 'images' / 'validation').glob('*.jpg'))))


@pytest.fixture(autouse=True)
def _untrusted(tmp_path):
    set_trust_checkpoint(False)
    yield
    set_trust_checkpoint(False)


def _evil(tiny, folder, native=False):
    """Our iter_2.pth (or, ``native``, as mmengine pickles it: HistoryBuffer objects)
    plus two payloads; returns (checkpoint path, marker path)."""
    marker = folder / 'PAYLOAD_RAN'
    ckpt = torch.load(tiny['ckpt'], map_location='cpu', weights_only=True)
    if native:
        ckpt = from_plain_checkpoint(ckpt)
    ckpt['meta']['evil'] = _Touch(marker)
    ckpt['message_hub']['runtime_info']['evil'] = [_Touch(marker)]
    path = folder / 'iter_2.pth'
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, str(path))
    return str(path), marker


def _nan(tiny, folder):
    ckpt = torch.load(tiny['ckpt'], map_location='cpu', weights_only=True)
    key = 'decode_head.conv_seg.weight' if 'decode_head.conv_seg.weight' in \
        ckpt['state_dict'] else sorted(ckpt['state_dict'])[-1]
    w = ckpt['state_dict'][key].clone()
    w.view(-1)[int(torch.randint(w.numel(), ()))] = float('nan')
    ckpt['state_dict'][key] = w
    path = folder / 'nan.pth'
    torch.save(ckpt, str(path))
    return str(path), key


def _run(tool, argv):
    # a fresh "current" mmengine logger, writing to this test's captured stdout
    MMLogger.get_instance(f'safe_tools_{tool}_{len(_LOGGERS)}', log_level='INFO')
    _LOGGERS.append(tool)
    return TOOLS[tool].main(argv)


_LOGGERS = []


def _argv(tool, tiny, ckpt, tmp_path):
    return {
        'test': [tiny['config'], ckpt, '--work-dir', str(tmp_path / 'w')],
        'demo': [tiny['image'], tiny['config'], ckpt, '--out-file',
                 str(tmp_path / 'demo.png')],
        'benchmark': [tiny['config'], ckpt, '--device', 'cpu', '--repeats', '1',
                      '--warmup', '0', '--batch-sizes', '1', '--num-crops', '1',
                      '--variants', 'dense'],
        'sweep': [tiny['config'], ckpt, '--thresholds', '0.9', '--repeats', '1',
                  '--work-dir', str(tmp_path / 'w')],
        'confusion': [tiny['config'], ckpt, '--out-dir', str(tmp_path / 'cm'),
                      '--device', 'cpu'],
        'publish': [ckpt, str(tmp_path / 'pub' / 'model.pth')],
    }[tool]


@pytest.mark.parametrize('tool', ['test', 'demo', 'benchmark', 'publish'])
def test_code_carrying_checkpoint_runs_nothing(tiny, tmp_path, tool, capsys):
    ckpt, marker = _evil(tiny, tmp_path / 'ck')
    result = _run(tool, _argv(tool, tiny, ckpt, tmp_path))
    assert not marker.exists(), f'{tool} ran code carried by the checkpoint'
    out = capsys.readouterr().out
    assert f'checkpoint {ckpt} names 1 global(s) that the safe loader does not rebuild ' \
        '(posix.system); they were neither imported nor run' in out
    if tool == 'test':
        assert 0 <= result['mIoU'] <= 100
    if tool == 'publish':
        published = torch.load(result, map_location='cpu', weights_only=True)
        assert 'evil' not in published['meta']
        assert torch.equal(published['state_dict']['backbone.cls_token'],
                           torch.load(tiny['ckpt'], weights_only=True)
                           ['state_dict']['backbone.cls_token'])


def test_trust_checkpoint_unpickles_fully_and_says_so(tiny, tmp_path, capsys):
    """The payload is real: with --trust-checkpoint it runs (announced in one line)."""
    ckpt, marker = _evil(tiny, tmp_path / 'ck')
    _run('test', _argv('test', tiny, ckpt, tmp_path) + ['--trust-checkpoint'])
    assert marker.exists()
    out = capsys.readouterr().out
    assert f'trust_checkpoint = True (--trust-checkpoint): unpickling {ckpt} fully; ' \
        'it can run code it carries' in out


@pytest.mark.parametrize('tool', ['test', 'demo', 'benchmark', 'sweep', 'confusion',
                                  'publish'])
def test_nan_checkpoint_is_refused_naming_the_tensor(tiny, tmp_path, tool, capsys):
    ckpt, key = _nan(tiny, tmp_path)
    with pytest.raises(SystemExit) as info:
        run_cli(_run, tool, _argv(tool, tiny, ckpt, tmp_path))
    assert info.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f'error: checkpoint {ckpt} has non-finite weights: 1 of ')
    assert f'(first: {key} (1 NaN of ' in err[0]


@pytest.mark.parametrize('native', [False, True], ids=['ours', 'mmengine_native'])
def test_train_resume_runs_nothing_and_restores_everything(tiny, tmp_path, native):
    work = tmp_path / 'work'
    ckpt, marker = _evil(tiny, work, native=native)
    (work / 'last_checkpoint').write_text(ckpt)
    saved = from_plain_checkpoint(torch_load_checkpoint(ckpt))
    _run('train', [tiny['config'], '--work-dir', str(work), '--resume',
                   '--cfg-options', 'train_cfg.max_iters=3'])
    assert not marker.exists(), 'train.py --resume ran code carried by the checkpoint'
    new = from_plain_checkpoint(torch.load(work / 'iter_3.pth', weights_only=True))
    assert new['meta']['iter'] == 3  # resumed at 2, one more iteration
    assert {int(s['step']) for s in new['optimizer']['state'].values()} == {3}
    assert [s['_global_step'] for s in saved['param_schedulers']] == [2, 2]
    assert [s['_global_step'] for s in new['param_schedulers']] == [3, 3]
    old_hist = saved['message_hub']['log_scalars']['train/loss']._log_history
    new_hist = new['message_hub']['log_scalars']['train/loss']._log_history
    assert len(old_hist) == 2 and len(new_hist) == 3
    np.testing.assert_array_equal(new_hist[:2], old_hist)  # history restored
    assert new['message_hub']['runtime_info']['iter'] == 2  # runtime info restored
    assert 'evil' not in new['message_hub']['runtime_info']
    assert 'evil' not in new['meta']


@pytest.mark.slow
def test_dist_train_load_runs_nothing(tiny, tmp_path):
    ckpt, marker = _evil(tiny, tmp_path / 'base')
    config = write_tiny_config(tmp_path / 'tiny3.py', tiny['data'], BASE_CONFIG,
                               max_iters=3)
    work = tmp_path / 'prune'
    out = check(run_launcher('dist_train_load.sh', [config, work, ckpt],
                             env=dict(GPUS='1')))
    assert not marker.exists(), 'dist_train_load.sh ran code carried by the checkpoint'
    assert f'Load checkpoint from {ckpt}' in out
    final = torch.load(work / 'iter_3.pth', weights_only=True)
    assert final['meta']['iter'] == 3
    shutil.rmtree(work)
