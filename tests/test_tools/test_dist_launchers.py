"""Fast tests of tools/dist_train.sh, dist_train_load.sh and dist_test.sh.

A fake ``PYTHON`` records the command line the launchers build, so argument
checks, defaults and pass-through are tested without starting torchrun.
"""
import os
import stat
import subprocess

import pytest

from _tiny_runs import BASE_CONFIG, PRUNE_CONFIG, ROOT

FAKE_PYTHON = '''#!/usr/bin/env bash
# Answers the launcher's GPU probe with $FAKE_GPUS and echoes anything else.
if [[ "$1" == "-c" ]]; then echo "${FAKE_GPUS:-0}"; exit 0; fi
echo "ARGV: $*"
echo "PYTHONPATH: $PYTHONPATH"
'''


@pytest.fixture
def fake_python(tmp_path):
    path = tmp_path / 'fake_python'
    path.write_text(FAKE_PYTHON)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


def launch(script, *args, **env):
    full_env = {k: v for k, v in os.environ.items()
                if k not in ('GPUS', 'NNODES', 'NODE_RANK', 'MASTER_ADDR', 'PORT')}
    full_env.update({k: str(v) for k, v in env.items()})
    return subprocess.run(['bash', str(ROOT / 'tools' / script), *map(str, args)],
                          cwd=ROOT, env=full_env, capture_output=True, text=True,
                          timeout=60)


def argv_of(proc):
    assert proc.returncode == 0, proc.stderr
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith('ARGV: '))
    return line[len('ARGV: '):].split()


@pytest.mark.parametrize('script,nargs', [('dist_train.sh', 2), ('dist_train_load.sh', 3),
                                          ('dist_test.sh', 2)])
def test_usage_message_on_missing_arguments(script, nargs):
    proc = launch(script, *(['x'] * (nargs - 1)))
    assert proc.returncode == 2
    assert f'usage: bash tools/{script}' in proc.stderr


@pytest.mark.parametrize('script,extra', [('dist_train.sh', ['w']),
                                          ('dist_train_load.sh', ['w', 'c.pth']),
                                          ('dist_test.sh', ['c.pth'])])
def test_missing_config_is_reported(script, extra, fake_python):
    proc = launch(script, 'configs/nope.py', *extra, PYTHON=fake_python)
    assert proc.returncode == 2
    assert 'config file not found: configs/nope.py' in proc.stderr
    assert 'ARGV' not in proc.stdout


@pytest.mark.parametrize('script,args', [
    ('dist_train_load.sh', [PRUNE_CONFIG, 'w', 'missing/iter_160000.pth']),
    ('dist_test.sh', [PRUNE_CONFIG, 'missing/iter_160000.pth'])])
def test_missing_checkpoint_is_reported(script, args, fake_python):
    proc = launch(script, *args, PYTHON=fake_python)
    assert proc.returncode == 2
    assert 'checkpoint not found: missing/iter_160000.pth' in proc.stderr


def test_train_defaults_one_process_without_gpus(fake_python):
    proc = launch('dist_train.sh', BASE_CONFIG, 'work_dirs/x', PYTHON=fake_python, FAKE_GPUS=0)
    argv = argv_of(proc)
    assert argv[:2] == ['-m', 'torch.distributed.run']
    for flag in ('--nnodes=1', '--node_rank=0', '--master_addr=127.0.0.1',
                 '--master_port=29500', '--nproc_per_node=1'):
        assert flag in argv
    i = argv.index(str(ROOT / 'tools/train.py'))
    assert argv[i + 1:] == [str(BASE_CONFIG), '--work-dir', 'work_dirs/x',
                            '--launcher', 'pytorch']
    assert f'PYTHONPATH: {ROOT}' in proc.stdout


def test_train_uses_all_visible_gpus_by_default(fake_python):
    proc = launch('dist_train.sh', BASE_CONFIG, 'w', PYTHON=fake_python, FAKE_GPUS=8)
    assert '--nproc_per_node=8' in argv_of(proc)


def test_multi_node_settings_and_passthrough(fake_python):
    proc = launch('dist_train_load.sh', PRUNE_CONFIG, 'w', __file__, '--resume', '--amp',
                  '--cfg-options', 'train_cfg.max_iters=10',
                  PYTHON=fake_python, GPUS=4, NNODES=2, NODE_RANK=1,
                  MASTER_ADDR='10.0.0.1', PORT=1234)
    argv = argv_of(proc)
    for flag in ('--nnodes=2', '--node_rank=1', '--master_addr=10.0.0.1',
                 '--master_port=1234', '--nproc_per_node=4'):
        assert flag in argv
    i = argv.index(str(ROOT / 'tools/train.py'))
    assert argv[i + 1:] == [str(PRUNE_CONFIG), '--work-dir', 'w', '--cfg-options',
                            f'load_from={__file__}', '--resume', '--amp', '--cfg-options',
                            'train_cfg.max_iters=10', '--launcher', 'pytorch']


def test_test_launcher_passthrough(fake_python):
    proc = launch('dist_test.sh', PRUNE_CONFIG, __file__, '--out', 'preds', GPUS=2,
                  PYTHON=fake_python)
    argv = argv_of(proc)
    i = argv.index(str(ROOT / 'tools/test.py'))
    assert argv[i + 1:] == [str(PRUNE_CONFIG), __file__, '--out', 'preds',
                            '--launcher', 'pytorch']
    assert '--nproc_per_node=2' in argv


def test_url_checkpoint_is_not_checked_locally(fake_python):
    url = 'https://example.com/iter_40000.pth'
    proc = launch('dist_test.sh', PRUNE_CONFIG, url, PYTHON=fake_python, GPUS=1)
    assert url in argv_of(proc)


@pytest.mark.parametrize('env,message', [
    (dict(GPUS=0), 'GPUS must be an integer >= 1'),
    (dict(GPUS='two'), "GPUS must be an integer >= 1, got 'two'"),
    (dict(GPUS=1, NNODES=2, NODE_RANK=2), 'NODE_RANK (2) must be < NNODES (2)'),
    (dict(GPUS=1, PORT='http'), 'PORT must be an integer'),
])
def test_bad_environment_values(env, message, fake_python):
    proc = launch('dist_train.sh', BASE_CONFIG, 'w', PYTHON=fake_python, **env)
    assert proc.returncode == 2
    assert message in proc.stderr


def test_bad_python_is_reported():
    proc = launch('dist_train.sh', BASE_CONFIG, 'w', PYTHON='/nonexistent/python')
    assert proc.returncode == 2
    assert 'PYTHON=/nonexistent/python is not an executable' in proc.stderr


def test_launchers_are_executable():
    for script in ('dist_train.sh', 'dist_train_load.sh', 'dist_test.sh'):
        path = ROOT / 'tools' / script
        assert os.access(path, os.X_OK), f'{path} is not executable'
