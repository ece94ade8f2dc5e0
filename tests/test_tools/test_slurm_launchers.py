"""tools/slurm_train.sh and tools/slurm_test.sh (mmseg's interface) with a fake
``srun`` on the PATH, and the ``--launcher slurm`` set-up on CPU.

The fake ``srun`` records its arguments and environment; with ``FAKE_SRUN_RUN=1``
it then runs the command as the single task of a one-node job (``SLURM_PROCID=0``,
``SLURM_NTASKS=1``, ``SLURM_NODELIST=localhost``), as ``srun`` would on a node.
"""
import os
import re
import stat
import subprocess
import sys

import pytest

from _tiny_runs import BASE_CONFIG, PRUNE_CONFIG, ROOT, check, free_port, make_tiny_ade
from _tiny_runs import write_tiny_config

from dtop.utils.errors import OptionError
from dtop.utils.launch import first_slurm_host, global_rank, slurm_to_torch_env

FAKE_SRUN = '''#!/usr/bin/env bash
printf '%s\\n' "$@" > "$FAKE_SRUN_LOG.argv"
env > "$FAKE_SRUN_LOG.env"
[[ "${FAKE_SRUN_RUN:-0}" == 1 ]] || exit 0
while (( $# )); do          # srun's own options end at the command
  case "$1" in
    -p|-J|-t|-N|-n|-c) shift 2 ;;
    -*) shift ;;
    *) break ;;
  esac
done
export SLURM_PROCID=0 SLURM_LOCALID=0 SLURM_NTASKS=1 SLURM_NNODES=1 \\
  SLURM_NODELIST=localhost SLURM_JOB_ID=4242
exec "$@"
'''


@pytest.fixture
def srun(tmp_path):
    """(env, read) for running the slurm launchers with the fake srun."""
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    path = bin_dir / 'srun'
    path.write_text(FAKE_SRUN)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    log = tmp_path / 'srun'
    env = {k: v for k, v in os.environ.items()
           if k not in ('GPUS', 'GPUS_PER_NODE', 'CPUS_PER_TASK', 'SRUN_ARGS', 'PORT',
                        'MASTER_PORT', 'MASTER_ADDR', 'SRUN') and not k.startswith('SLURM_')}
    env.update(PATH=f'{bin_dir}:{os.environ["PATH"]}', FAKE_SRUN_LOG=str(log),
               PYTHON=sys.executable, CUDA_VISIBLE_DEVICES='')

    def read():
        argv = (tmp_path / 'srun.argv').read_text().splitlines()
        environ = dict(line.split('=', 1) for line in
                       (tmp_path / 'srun.env').read_text().splitlines() if '=' in line)
        return argv, environ
    return env, read


def slurm(script, args, env, timeout=60, **extra):
    full = dict(env, **{k: str(v) for k, v in extra.items()})
    return subprocess.run(['bash', str(ROOT / 'tools' / script), *map(str, args)], cwd=ROOT,
                          env=full, capture_output=True, text=True, timeout=timeout)


def test_train_srun_arguments(srun):
    env, read = srun
    proc = slurm('slurm_train.sh', ['gpu', 'dtop_b16', PRUNE_CONFIG, 'work_dirs/x',
                                    '--cfg-options', 'train_cfg.max_iters=10'], env,
                 GPUS=16, GPUS_PER_NODE=8, CPUS_PER_TASK=4,
                 SRUN_ARGS='--time=1:00:00 --qos=high', PORT=29611)
    assert proc.returncode == 0, proc.stderr
    argv, environ = read()
    assert argv == ['-p', 'gpu', '--job-name=dtop_b16', '--gres=gpu:8', '--ntasks=16',
                    '--ntasks-per-node=8', '--cpus-per-task=4', '--kill-on-bad-exit=1',
                    '--time=1:00:00', '--qos=high',
                    sys.executable, '-u', str(ROOT / 'tools/train.py'), str(PRUNE_CONFIG),
                    '--work-dir', 'work_dirs/x', '--cfg-options', 'train_cfg.max_iters=10',
                    '--launcher', 'slurm']
    assert environ['MASTER_PORT'] == '29611'
    assert environ['PYTHONPATH'].split(':')[0] == str(ROOT)


def test_test_srun_arguments_and_defaults(srun, tmp_path):
    env, read = srun
    ckpt = tmp_path / 'iter_4.pth'
    ckpt.write_bytes(b'x')
    proc = slurm('slurm_test.sh', ['p1', 'ev', BASE_CONFIG, ckpt, '--out', 'preds'], env)
    assert proc.returncode == 0, proc.stderr
    argv, environ = read()
    # mmseg's slurm_test.sh defaults: GPUS=4, GPUS_PER_NODE=4, CPUS_PER_TASK=5
    assert argv[:7] == ['-p', 'p1', '--job-name=ev', '--gres=gpu:4', '--ntasks=4',
                        '--ntasks-per-node=4', '--cpus-per-task=5']
    assert argv[8:] == [sys.executable, '-u', str(ROOT / 'tools/test.py'), str(BASE_CONFIG),
                        str(ckpt), '--out', 'preds', '--launcher', 'slurm']
    assert environ['MASTER_PORT'] == '29500'
    # fewer tasks than GPUs per node: one node with GPUS tasks and GPUs
    proc = slurm('slurm_train.sh', ['p', 'j', BASE_CONFIG, 'w'], env, GPUS=2)
    argv, _ = read()
    assert '--gres=gpu:2' in argv and '--ntasks=2' in argv and '--ntasks-per-node=2' in argv


@pytest.mark.parametrize('script,args,message', [
    ('slurm_train.sh', ['p', 'j', 'c.py'], 'usage: bash tools/slurm_train.sh PARTITION '
                                           'JOB_NAME CONFIG WORK_DIR'),
    ('slurm_test.sh', ['p', 'j', 'c.py'], 'usage: bash tools/slurm_test.sh PARTITION '
                                          'JOB_NAME CONFIG CHECKPOINT'),
    ('slurm_train.sh', ['p', 'j', 'configs/nope.py', 'w'], 'config file not found: '
                                                           'configs/nope.py'),
    ('slurm_test.sh', ['p', 'j', BASE_CONFIG, 'no/iter_1.pth'], 'checkpoint not found: '
                                                               'no/iter_1.pth'),
])
def test_bad_arguments(script, args, message, srun, tmp_path):
    env, _ = srun
    proc = slurm(script, args, env)
    assert proc.returncode == 2
    assert f'{script}: error: {message}' in proc.stderr
    assert not (tmp_path / 'srun.argv').exists()


@pytest.mark.parametrize('extra,message', [
    (dict(GPUS=0), "GPUS must be an integer >= 1, got '0'"),
    (dict(GPUS_PER_NODE='x'), "GPUS_PER_NODE must be an integer >= 1, got 'x'"),
    (dict(PORT=70000), "PORT must be an integer in 1..65535, got '70000'"),
    (dict(SRUN='no-such-srun'), "'no-such-srun' not found: run on a Slurm login node"),
])
def test_bad_environment(extra, message, srun, tmp_path):
    env, _ = srun
    proc = slurm('slurm_train.sh', ['p', 'j', BASE_CONFIG, 'w'], env, **extra)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert not (tmp_path / 'srun.argv').exists()


def test_slurm_scripts_are_executable():
    for script in ('slurm_train.sh', 'slurm_test.sh'):
        assert os.access(ROOT / 'tools' / script, os.X_OK)


# ------------------------------------------------------ --launcher slurm on CPU
@pytest.mark.parametrize('nodelist,host', [
    ('localhost', 'localhost'), ('node[03-05,9],gpu1', 'node03'), ('gpu1,gpu2', 'gpu1'),
    ('a[7]', 'a7'), ('x-[07-9]-ib', 'x-07-ib')])
def test_first_slurm_host(nodelist, host, monkeypatch):
    monkeypatch.setenv('PATH', '/nonexistent')  # no scontrol: parsed here
    assert first_slurm_host(nodelist) == host


def test_slurm_to_torch_env():
    env = dict(SLURM_PROCID='3', SLURM_NTASKS='8', SLURM_LOCALID='1',
               SLURM_NODELIST='node[1-2]')
    slurm_to_torch_env(env)
    assert (env['RANK'], env['WORLD_SIZE'], env['LOCAL_RANK']) == ('3', '8', '1')
    assert (env['MASTER_ADDR'], env['MASTER_PORT']) == ('node1', '29500')
    env = dict(SLURM_PROCID='0', SLURM_NTASKS='1', SLURM_NODELIST='n1',
               MASTER_ADDR='10.0.0.1', MASTER_PORT='1234')
    slurm_to_torch_env(env)
    assert (env['MASTER_ADDR'], env['MASTER_PORT'], env['LOCAL_RANK']) == \
        ('10.0.0.1', '1234', '0')
    with pytest.raises(OptionError, match=r"\['SLURM_PROCID', 'SLURM_NTASKS'.*srun"):
        slurm_to_torch_env({})


def test_global_rank(monkeypatch):
    monkeypatch.delenv('RANK', raising=False)
    monkeypatch.setenv('SLURM_PROCID', '5')
    assert global_rank('slurm') == 5 and global_rank('pytorch') == 0
    monkeypatch.setenv('RANK', '2')
    assert global_rank('slurm') == 2


@pytest.mark.slow
def test_train_then_test_through_fake_srun(srun, tmp_path):
    """A tiny training and its evaluation run to the end through the slurm scripts
    (one task, gloo on CPU, MASTER_ADDR from SLURM_NODELIST)."""
    env, read = srun
    data = make_tiny_ade(tmp_path / 'data', n_train=2, n_val=1)
    config = write_tiny_config(tmp_path / 'tiny.py', data, BASE_CONFIG)
    work = tmp_path / 'work'
    proc = slurm('slurm_train.sh', ['cpu', 'tiny', config, work, '--cfg-options',
                                    'train_cfg.max_iters=2'], env, timeout=300,
                 GPUS=1, FAKE_SRUN_RUN=1, PORT=free_port())
    out = check(subprocess.CompletedProcess(proc.args, proc.returncode,
                                            proc.stdout + proc.stderr))
    assert read()[0][:5] == ['-p', 'cpu', '--job-name=tiny', '--gres=gpu:1', '--ntasks=1']
    assert 'Iter(train) [2/2]' in out
    assert "launcher: slurm" in out and "backend='gloo'" in out
    assert (work / 'iter_2.pth').is_file()
    proc = slurm('slurm_test.sh', ['cpu', 'tiny_test', config, work / 'iter_2.pth',
                                   '--work-dir', tmp_path / 'test'], env, timeout=300,
                 GPUS=1, FAKE_SRUN_RUN=1, PORT=free_port())
    out = check(subprocess.CompletedProcess(proc.args, proc.returncode,
                                            proc.stdout + proc.stderr))
    assert re.search(r'Iter\(test\) \[1/1\].*mIoU: [0-9.]+', out), out[-3000:]


def test_slurm_on_gpus_sets_the_address_for_mmengine(monkeypatch):
    """With CUDA mmengine's init_dist('slurm') runs; the torchrun variables are set
    first so that MASTER_ADDR does not depend on `scontrol` being on the node."""
    from mmengine.config import Config

    from dtop.utils.launch import prepare_distributed
    for key in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT'):
        monkeypatch.setenv(key, 'x')  # restored (removed) after the test
        monkeypatch.delenv(key)
    monkeypatch.setenv('PATH', '/nonexistent')
    monkeypatch.setenv('SLURM_PROCID', '1')
    monkeypatch.setenv('SLURM_NTASKS', '2')
    monkeypatch.setenv('SLURM_LOCALID', '1')
    monkeypatch.setenv('SLURM_NODELIST', 'gpu[07-08]')
    cfg = Config(dict(env_cfg=dict(dist_cfg=dict(backend='nccl'))))
    prepare_distributed(cfg, 'slurm', cuda_available=True)
    assert cfg.env_cfg.dist_cfg.backend == 'nccl'  # GPU runs are left to mmengine
    assert [os.environ[k] for k in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR',
                                    'MASTER_PORT')] == ['1', '2', '1', 'gpu07', '29500']
