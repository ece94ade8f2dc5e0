"""A torchrun killed with SIGKILL takes its training worker with it: the
orphan used to keep training and writing checkpoints into WORK_DIR."""
import os
import signal
import subprocess
import sys
import time

import pytest

from _tiny_runs import BASE_CONFIG, ROOT, free_port, make_tiny_ade, write_tiny_config


def _children(pid):
    out = []
    for entry in os.listdir('/proc'):
        if not entry.isdigit():
            continue
        try:
            with open(f'/proc/{entry}/stat') as f:
                text = f.read()
        except OSError:
            continue
        if int(text[text.rindex(')') + 2:].split()[1]) == pid:
            out.append(int(entry))
    return out


def _alive(pid):
    """Running (not gone, not a zombie waiting to be reaped)."""
    try:
        with open(f'/proc/{pid}/stat') as f:
            text = f.read()
    except OSError:
        return False
    return text[text.rindex(')') + 2] not in 'ZX'


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='needs /proc')
def test_worker_dies_with_a_killed_torchrun(tmp_path):
    data = make_tiny_ade(tmp_path / 'data', n_train=2, n_val=1)
    config = write_tiny_config(tmp_path / 'tiny.py', data, BASE_CONFIG, max_iters=100000)
    work = tmp_path / 'work'
    env = dict(os.environ, PYTHON=sys.executable, PORT=str(free_port()),
               CUDA_VISIBLE_DEVICES='', GPUS='1')
    log = open(tmp_path / 'log.txt', 'w')
    proc = subprocess.Popen(['bash', str(ROOT / 'tools' / 'dist_train.sh'), str(config),
                             str(work), '--cfg-options', 'train_dataloader.num_workers=0',
                             'default_hooks.checkpoint.interval=100000'],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    workers = []
    try:
        deadline = time.time() + 240
        while time.time() < deadline:  # until the worker trains
            assert proc.poll() is None, (tmp_path / 'log.txt').read_text()[-3000:]
            if 'Iter(train)' in (tmp_path / 'log.txt').read_text():
                break
            time.sleep(1)
        else:
            pytest.fail('training did not start: ' + (tmp_path / 'log.txt').read_text()[-3000:])
        workers = _children(proc.pid)  # bash exec'd torchrun: same pid
        assert workers, 'no worker process found under torchrun'
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        t0 = time.time()
        while time.time() - t0 < 30 and any(_alive(w) for w in workers):
            time.sleep(0.5)
        alive = [w for w in workers if _alive(w)]
        assert not alive, f'workers {alive} still run after their torchrun was killed'
        assert time.time() - t0 < 15
    finally:
        for w in workers:
            try:
                os.kill(w, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if proc.poll() is None:
            proc.kill()
        log.close()
