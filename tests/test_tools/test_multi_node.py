"""Scale-out (slow): a 2-node run on one host (NNODES=2, one process per node,
gloo, two ``dist_train.sh`` invocations with NODE_RANK 0 and 1) trains exactly
as one node with two processes (``GPUS=2``): same logged losses, same weights.
Pruning is live (p0 = 0.3) and DDP runs with find_unused_parameters decided from
the model (False)."""
import os
import subprocess
import sys

import pytest
import torch

from _tiny_runs import (PRUNE_CONFIG, ROOT, check, free_port, make_tiny_ade, read_scalars,
                        run_launcher, write_tiny_config)

pytestmark = pytest.mark.slow

ITERS = 3
_NOT_COMPARED = ('time', 'data_time', 'memory', 'eta')


def _train_logs(work_dir):
    """``{iteration: {key: value}}`` of the training records of scalars.json."""
    out = {}
    for rec in read_scalars(work_dir):
        if 'loss' in rec:
            out[rec['step']] = {k: v for k, v in rec.items() if k not in _NOT_COMPARED}
    return out


def _two_nodes(config, work_dir, log_dir):
    port = str(free_port())
    procs, logs = [], []
    try:
        for rank in (0, 1):
            env = dict(os.environ, PYTHON=sys.executable, CUDA_VISIBLE_DEVICES='', GPUS='1',
                       NNODES='2', NODE_RANK=str(rank), MASTER_ADDR='127.0.0.1', PORT=port,
                       DTOP_RDZV_TIMEOUT='120')
            logs.append(open(log_dir / f'node{rank}.log', 'w+'))
            procs.append(subprocess.Popen(
                ['bash', str(ROOT / 'tools/dist_train.sh'), str(config), str(work_dir)],
                cwd=ROOT, env=env, stdout=logs[-1], stderr=subprocess.STDOUT))
        codes = [p.wait(timeout=400) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    texts = []
    for f in logs:
        f.seek(0)
        texts.append(f.read())
        f.close()
    for rank, (code, text) in enumerate(zip(codes, texts)):
        assert code == 0, f'node {rank} exit {code}:\n{text[-5000:]}'
    return texts


def test_two_nodes_train_like_one_node_with_two_processes(tmp_path):
    data = make_tiny_ade(tmp_path / 'data', n_train=4, n_val=1)
    config = write_tiny_config(tmp_path / 'tiny.py', data, PRUNE_CONFIG,
                               prune_threshold=0.3, max_iters=ITERS)
    one = tmp_path / 'one_node'
    out = check(run_launcher('dist_train.sh', [config, one], env=dict(GPUS='2')))
    assert 'nnodes=1' in out and 'nproc_per_node=2' in out

    two = tmp_path / 'two_nodes'  # one work dir, as on a shared file system
    node0, node1 = _two_nodes(config, two, tmp_path)
    assert ('waiting for NNODES=2 nodes at 127.0.0.1:' in node0
            and '(this is node 0; gives up after DTOP_RDZV_TIMEOUT=120 s)' in node0)
    assert 'waiting for node 0 at 127.0.0.1:' in node1
    assert f'Iter(train) [{ITERS}/{ITERS}]' in node0
    assert 'find_unused_parameters=False' in node0
    assert 'did not find any unused parameters' not in out + node0 + node1  # torch's warning

    logs_one, logs_two = _train_logs(one), _train_logs(two)
    assert sorted(logs_one) == list(range(1, ITERS + 1)), logs_one
    assert sorted(logs_two) == sorted(logs_one)
    for step in logs_one:
        assert logs_two[step].keys() == logs_one[step].keys()
        for key, value in logs_one[step].items():
            assert logs_two[step][key] == pytest.approx(value, rel=1e-6, abs=1e-7), \
                (step, key)
    assert any('prune.keep_ratio_s1' in r for r in logs_one.values())

    sd_one = torch.load(one / f'iter_{ITERS}.pth', map_location='cpu',
                        weights_only=False)['state_dict']
    sd_two = torch.load(two / f'iter_{ITERS}.pth', map_location='cpu',
                        weights_only=False)['state_dict']
    assert sd_one.keys() == sd_two.keys()
    for key in sd_one:
        torch.testing.assert_close(sd_two[key], sd_one[key], rtol=0, atol=1e-6,
                                   msg=lambda m, k=key: f'{k}: {m}')
