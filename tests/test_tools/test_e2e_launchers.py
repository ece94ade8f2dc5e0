"""End to end through the shell launchers (slow): the README workflow on CPU.

BASE training (``dist_train.sh``) -> interrupted/resumed BASE (``--resume``) ->
prune fine-tune from the BASE checkpoint (``dist_train_load.sh``, pruning live) ->
evaluation (``dist_test.sh``, mIoU), plus a 2-process gloo BASE run. All on a
tiny ADE20K-layout dataset generated here and tiny configs derived from the
shipped ADE20K ViT-B configs.
"""
import re
import shutil

import pytest
import torch

from _tiny_runs import (BASE_CONFIG, PRUNE_CONFIG, check, make_tiny_ade, read_scalars,
                        run_launcher, write_tiny_config)

pytestmark = pytest.mark.slow

MAX_ITERS = 6


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    """Dataset + tiny BASE/prune configs; BASE trained to iteration 4 of 6."""
    root = tmp_path_factory.mktemp('e2e')
    data = make_tiny_ade(root / 'data')
    base_cfg = write_tiny_config(root / 'tiny_base.py', data, BASE_CONFIG,
                                 max_iters=MAX_ITERS)
    # p0 = 0.3: the barely trained BASE model gives scores of ~0.3-0.6, so tokens
    # do exit (the real configs use 0.9 / 0.95 on converged models).
    prune_cfg = write_tiny_config(root / 'tiny_prune.py', data, PRUNE_CONFIG,
                                  prune_threshold=0.3, max_iters=MAX_ITERS)
    work = root / 'base_interrupted'
    # "Interrupted" BASE run: stops at iteration 4 of 6 (checkpoints every 2).
    proc = run_launcher('dist_train.sh', [base_cfg, work, '--cfg-options',
                                          'train_cfg.max_iters=4'])
    out = check(proc)
    print(f'BASE to iter 4 (1 process): {proc.wall_s:.1f} s')
    return dict(root=root, data=data, base_cfg=base_cfg, prune_cfg=prune_cfg,
                base_work=work, base_log=out)


def test_base_checkpoints(tiny):
    work = tiny['base_work']
    assert (work / 'iter_2.pth').is_file() and (work / 'iter_4.pth').is_file()
    assert not (work / 'iter_6.pth').exists()
    assert (work / 'last_checkpoint').read_text().strip().endswith('iter_4.pth')
    ckpt = torch.load(work / 'iter_4.pth', map_location='cpu', weights_only=False)
    assert ckpt['meta']['iter'] == 4
    assert 'Iter(train) [4/4]' in tiny['base_log']
    # BASE: no pruning statistics are logged.
    assert not any('prune.keep_ratio_s1' in r for r in read_scalars(work))


def test_resume_continues_from_saved_iteration(tiny):
    work = tiny['root'] / 'base_resumed'
    shutil.copytree(tiny['base_work'], work)
    # `last_checkpoint` holds an absolute path into the original work dir: point it
    # at the copy, as a user resuming in place would have it.
    (work / 'last_checkpoint').write_text(str(work / 'iter_4.pth'))
    proc = run_launcher('dist_train.sh', [tiny['base_cfg'], work, '--resume'])
    out = check(proc)
    print(f'BASE resume 4 -> 6: {proc.wall_s:.1f} s')
    assert re.search(r'resumed epoch: 0, iter: 4', out), out[-3000:]
    assert 'Iter(train) [5/6]' in out and 'Iter(train) [6/6]' in out
    assert 'Iter(train) [1/6]' not in out and 'Iter(train) [4/6]' not in out
    ckpt = torch.load(work / 'iter_6.pth', map_location='cpu', weights_only=False)
    assert ckpt['meta']['iter'] == 6
    # The optimizer state was restored, not restarted: AdamW's step count is 6.
    steps = {int(s['step']) for s in ckpt['optimizer']['state'].values()}
    assert steps == {6}, steps


def test_prune_from_base_then_test(tiny):
    base_ckpt = tiny['base_work'] / 'iter_4.pth'
    work = tiny['root'] / 'prune'
    proc = run_launcher('dist_train_load.sh', [tiny['prune_cfg'], work, base_ckpt])
    out = check(proc)
    print(f'prune fine-tune from BASE (6 iters): {proc.wall_s:.1f} s')
    assert f'Load checkpoint from {base_ckpt}' in out
    # load_from is weights only: the fine-tune starts at iteration 1.
    assert 'Iter(train) [1/6]' in out and 'resumed' not in out
    ratios = [(r['prune.keep_ratio_s1'], r['prune.keep_ratio_s2'])
              for r in read_scalars(work) if 'prune.keep_ratio_s1' in r]
    assert len(ratios) == MAX_ITERS
    assert all(0 <= s2 <= s1 <= 1 for s1, s2 in ratios), ratios
    assert min(s2 for _, s2 in ratios) < 1.0, f'no token exited: {ratios}'

    proc = run_launcher('dist_test.sh', [tiny['prune_cfg'], work / f'iter_{MAX_ITERS}.pth',
                                         '--work-dir', tiny['root'] / 'test'])
    out = check(proc)
    print(f'dist_test.sh: {proc.wall_s:.1f} s')
    match = re.search(r'Iter\(test\) \[2/2\].*mIoU: ([0-9.]+)', out)
    assert match, out[-3000:]
    assert 0.0 <= float(match.group(1)) <= 100.0


def test_two_processes_gloo(tiny):
    work = tiny['root'] / 'base_2proc'
    proc = run_launcher('dist_train.sh', [tiny['base_cfg'], work, '--cfg-options',
                                          'train_cfg.max_iters=2'], env=dict(GPUS='2'))
    out = check(proc)
    print(f'BASE, GPUS=2 on CPU (gloo), 2 iters: {proc.wall_s:.1f} s')
    assert 'nproc_per_node=2' in out
    assert re.search(r'GPU number: 2', out) and "backend='gloo'" in out
    assert 'Iter(train) [2/2]' in out
    ckpt = torch.load(work / 'iter_2.pth', map_location='cpu', weights_only=False)
    assert ckpt['meta']['iter'] == 2
    assert any(k.startswith('decode_head.') for k in ckpt['state_dict'])
