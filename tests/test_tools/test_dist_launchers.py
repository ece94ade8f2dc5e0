"""Fast tests of tools/dist_train.sh, dist_train_load.sh and dist_test.sh.

A fake ``PYTHON`` records the command line the launchers build, so argument
checks, defaults and pass-through are tested without starting torchrun.
"""
import os
import socket
import stat
import subprocess
import sys

import pytest

from _tiny_runs import BASE_CONFIG, PRUNE_CONFIG, ROOT, free_port

FAKE_PYTHON = '''#!/usr/bin/env bash
# Answers the launcher's port check with $FAKE_PORT_CHECK (empty: free), its GPU
# probe with $FAKE_GPUS, and echoes anything else.
if [[ "$1" == "-c" && "$2" == *socket* ]]; then echo "${FAKE_PORT_CHECK:-}"; exit 0; fi
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
                if k not in ('GPUS', 'NNODES', 'NODE_RANK', 'MASTER_ADDR', 'PORT',
                             'DTOP_RDZV_TIMEOUT')}
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
    # tools/_torchrun.py = torchrun in the same process, one-line rendezvous errors
    assert argv[0] == str(ROOT / 'tools/_torchrun.py')
    assert not any(a.startswith('--rdzv') for a in argv)  # one node: torchrun's defaults
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


# ------------------------------------------------ PORT, NNODES > 1
def error_lines(proc):
    return [ln for ln in proc.stderr.splitlines() if 'error:' in ln]


@pytest.mark.parametrize('port', ['70000', '0', '65536', '29x'])
def test_port_out_of_range_is_one_error_line(port, fake_python):
    proc = launch('dist_train.sh', BASE_CONFIG, 'w', PYTHON=fake_python, GPUS=1, PORT=port)
    assert proc.returncode == 2
    assert error_lines(proc) == [
        f"dist_train.sh: error: PORT must be an integer in 1..65535, got '{port}'; pick "
        'another PORT (e.g. PORT=29500)']
    assert 'ARGV' not in proc.stdout


def test_busy_port_is_one_error_line_before_torchrun():
    """A port something listens on: named, with a free one to use instead (the real
    interpreter checks; torchrun never starts)."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        s.listen()
        port = s.getsockname()[1]
        proc = launch('dist_train.sh', BASE_CONFIG, 'w', PYTHON=sys.executable, GPUS=1,
                      PORT=port)
    assert proc.returncode == 2, proc.stderr
    (line,) = error_lines(proc)
    assert line.startswith(f'dist_train.sh: error: PORT={port} is already in use on this host')
    assert 'pick another PORT, e.g. PORT=' in line
    assert 'torchrun' not in proc.stderr and 'Traceback' not in proc.stderr


def test_port_is_checked_on_node_0_only(fake_python):
    busy = dict(PYTHON=fake_python, GPUS=1, PORT=1234, FAKE_PORT_CHECK='busy 4321 in use')
    proc = launch('dist_train.sh', BASE_CONFIG, 'w', **busy)
    assert proc.returncode == 2
    assert 'PORT=1234 is already in use' in proc.stderr
    assert 'e.g. PORT=4321 (free now)' in proc.stderr
    # node 1: the port lives on node 0, nothing to check here
    proc = launch('dist_train.sh', BASE_CONFIG, 'w', NNODES=2, NODE_RANK=1,
                  MASTER_ADDR='10.0.0.1', **busy)
    assert '--master_port=1234' in argv_of(proc)


@pytest.mark.parametrize('env,message', [
    (dict(NNODES=2), 'NNODES=2 needs NODE_RANK set on every node (NODE_RANK=0 on the node '
                     'at MASTER_ADDR, 1 on the others)'),
    (dict(NNODES=4, MASTER_ADDR='10.0.0.1'), 'NNODES=4 needs NODE_RANK set on every node '
                                             '(NODE_RANK=0 on the node at MASTER_ADDR, '
                                             '1..3 on the others)'),
    (dict(NNODES=2, NODE_RANK=0), 'NNODES=2 needs MASTER_ADDR set on every node'),
    (dict(NNODES=2, NODE_RANK=1, MASTER_ADDR='h', DTOP_RDZV_TIMEOUT='soon'),
     "DTOP_RDZV_TIMEOUT must be an integer >= 1, got 'soon'"),
])
def test_multi_node_needs_explicit_rank_and_address(env, message, fake_python):
    proc = launch('dist_train.sh', BASE_CONFIG, 'w', PYTHON=fake_python, GPUS=1, **env)
    assert proc.returncode == 2
    (line,) = error_lines(proc)
    assert message in line
    assert 'ARGV' not in proc.stdout


def test_multi_node_says_whom_it_waits_for_and_sets_the_timeout(fake_python):
    common = dict(PYTHON=fake_python, GPUS=1, NNODES=2, MASTER_ADDR='10.0.0.1', PORT=1234)
    proc = launch('dist_train.sh', BASE_CONFIG, 'w', NODE_RANK=0, **common)
    argv = argv_of(proc)
    assert argv[1:3] == ['--rdzv-conf', 'timeout=300']  # the default
    assert ('waiting for NNODES=2 nodes at 10.0.0.1:1234 (this is node 0; gives up after '
            'DTOP_RDZV_TIMEOUT=300 s)') in proc.stderr
    proc = launch('dist_train.sh', BASE_CONFIG, 'w', NODE_RANK=1, DTOP_RDZV_TIMEOUT=20,
                  **common)
    assert argv_of(proc)[1:3] == ['--rdzv-conf', 'timeout=20']
    assert ('waiting for node 0 at 10.0.0.1:1234 (this is node 1 of NNODES=2; gives up '
            'after DTOP_RDZV_TIMEOUT=20 s)') in proc.stderr


@pytest.mark.parametrize('node_rank', [0, 1])
def test_rendezvous_timeout_is_one_error_line(node_rank, tmp_path):
    """The other node never comes: torchrun gives up after DTOP_RDZV_TIMEOUT with
    one line (it used to wait 15 minutes, then print a DistStoreError traceback)."""
    proc = launch('dist_train.sh', BASE_CONFIG, tmp_path / 'w', PYTHON=sys.executable,
                  GPUS=1, NNODES=2, NODE_RANK=node_rank, MASTER_ADDR='127.0.0.1',
                  PORT=free_port(), DTOP_RDZV_TIMEOUT=1)
    assert proc.returncode == 1, proc.stderr[-3000:]
    (line,) = error_lines(proc)
    if node_rank == 0:
        assert line.startswith('dist_train.sh: error: rendezvous timed out after 1 s: 1 of 2 '
                               'nodes joined at 127.0.0.1:')
        assert 'Start the other nodes (NODE_RANK=1' in line
    else:
        assert line.startswith('dist_train.sh: error: rendezvous failed after 1 s: node 0 was '
                               'not reachable at 127.0.0.1:')
    assert 'Traceback' not in proc.stderr and 'frame #' not in proc.stderr
    assert not (tmp_path / 'w').exists()  # no worker started


def test_torchrun_wrapper_names_a_port_taken_after_the_check():
    """The port can be taken between the launcher's check and torchrun's bind: the
    wrapper's line names it too (TCPStore's EADDRINUSE)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location('_torchrun', ROOT / 'tools/_torchrun.py')
    wrapper = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(wrapper)
    exc = RuntimeError('The server socket has failed to listen on any local network '
                       'address. port: 29500, useIpv6: false, code: -98, name: EADDRINUSE')
    assert wrapper.describe_failure(exc, 0, 1, '127.0.0.1', 29500, 900) == (
        'torchrun could not listen on PORT=29500 on this host (node 0): the port is in '
        'use. Pick another PORT (the same on every node).')
