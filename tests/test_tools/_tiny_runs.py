"""Helpers for the tools tests: a tiny ADE20K-layout dataset, tiny configs derived
from the shipped ADE20K configs, and a runner for the shell launchers.

Not a test module (leading underscore); imported by the tests next to it.
"""
import glob
import importlib.util
import json
import os
import os.path as osp
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
BASE_CONFIG = ROOT / 'configs/segvit/segvit_vit-b16_4xb4-160k_ade20k-512x512.py'
PRUNE_CONFIG = ROOT / 'configs/dtop/dtop_segvit_vit-b16_4xb4-40k_ade20k-512x512.py'

# Number of real labels in the tiny dataset (PNG values 1..TINY_LABELS; 0 is the
# ignored "other" class, removed by reduce_zero_label).
TINY_LABELS = 4
TINY_NUM_CLASSES = 8  # model queries; > TINY_LABELS so absent classes exist too


def make_tiny_ade(root: os.PathLike, n_train: int = 4, n_val: int = 2,
                  size=(120, 160), seed: int = 0) -> Path:
    """Write a tiny dataset in mmseg's ADE20K layout.

    ``images/{training,validation}/*.jpg`` and ``annotations/.../*.png`` with
    vertical bands of labels ``1..TINY_LABELS`` and a top strip of label 0 (ignored
    after ``reduce_zero_label``). Each label has its own colour plus noise, so a
    model can learn something in a few iterations.

    Args:
        root: output directory.
        n_train, n_val: images per split.
        size: ``(H, W)`` of every image.
        seed: RNG seed.

    Returns:
        Path: ``root``.
    """
    import cv2
    root = Path(root)
    rng = np.random.default_rng(seed)
    palette = rng.integers(0, 255, (TINY_LABELS + 1, 3))
    for split, n in (('training', n_train), ('validation', n_val)):
        (root / 'images' / split).mkdir(parents=True, exist_ok=True)
        (root / 'annotations' / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            H, W = size
            label = np.zeros((H, W), np.uint8)
            bands = rng.permutation(np.arange(1, TINY_LABELS + 1))
            edges = np.linspace(0, W, len(bands) + 1).astype(int)
            for value, x0, x1 in zip(bands, edges[:-1], edges[1:]):
                label[:, x0:x1] = value
            label[:H // 8] = 0
            img = palette[label].astype(np.float32) + rng.normal(0, 10, (H, W, 3))
            cv2.imwrite(str(root / 'images' / split / f'img_{i}.jpg'),
                        np.clip(img, 0, 255).astype(np.uint8))
            cv2.imwrite(str(root / 'annotations' / split / f'img_{i}.png'), label)
    return root


#: The data part of the tiny configs (after their ``img_scale``, ``data_root`` and
#: ``train_pipeline``): the ADE20K test pipeline, and loaders without worker processes.
TINY_DATA_CFG = '''\
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                        dataset=dict(data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(num_workers=0, persistent_workers=False,
                      dataset=dict(data_root=data_root, pipeline=test_pipeline))
test_dataloader = val_dataloader
'''

_TINY_TEMPLATE = '''\
# Tiny CPU config derived from {base_name}: same model/optimizer/schedule/runtime
# types, tiny dims, a generated dataset, few iterations.
_base_ = [{base!r}]
crop_size = (128, 128)
img_scale = (512, 128)
data_root = {data_root!r}
__head = dict(type='ATMPruneHead', in_channels=32, channels=16,
              num_classes={num_classes}, num_heads=2, num_layers=1,
              loss_decode=dict(type='ATMLoss', num_classes={num_classes}))
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(img_size=crop_size, embed_dims=32, num_layers=6, num_heads=2,
                  mlp_ratio=2, out_indices=[1, 3, 5], drop_path_rate=0.0,
                  init_cfg=None),
    decode_head=__head,
    auxiliary_head=[__head, __head],
    test_cfg=dict(crop_size=crop_size, stride=(85, 85), crop_batch_size=2){model_extra})
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='RandomResize', scale=img_scale, ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs'),
]
''' + TINY_DATA_CFG + '''\
# A larger lr than the real 2e-5 so that a few iterations make confident tokens.
optim_wrapper = dict(optimizer=dict(lr=1e-3))
__iters = {max_iters}
train_cfg = dict(max_iters=__iters, val_interval=1000)
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=2),
    dict(type='PolyLR', power=0.9, eta_min=0.0, by_epoch=False, begin=2, end=__iters),
]
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=2))
randomness = dict(seed=0)
'''


def write_tiny_config(path: os.PathLike, data_root: os.PathLike,
                      base: os.PathLike = BASE_CONFIG,
                      prune_threshold: Optional[float] = None,
                      max_iters: int = 6,
                      num_classes: int = TINY_NUM_CLASSES) -> Path:
    """Write a tiny config inheriting ``base`` (a shipped ADE20K config).

    Args:
        path: where to write the ``.py`` config.
        data_root: a directory from :func:`make_tiny_ade`.
        base: the shipped config to inherit (BASE or prune).
        prune_threshold: overrides ``model.prune_threshold`` when given.
        max_iters: training iterations (also the PolyLR end).
        num_classes: queries of the tiny heads.

    Returns:
        Path: ``path``.
    """
    extra = '' if prune_threshold is None else f',\n    prune_threshold={prune_threshold!r}'
    text = _TINY_TEMPLATE.format(base_name=osp.basename(str(base)), base=str(base),
                                 data_root=str(data_root), num_classes=num_classes,
                                 model_extra=extra, max_iters=max_iters)
    path = Path(path)
    path.write_text(text)
    return path


#: The tools that tests run in process (their ``main``): name -> path from the root.
TOOL_SCRIPTS = dict(
    test='tools/test.py', train='tools/train.py', demo='demo/image_demo.py',
    benchmark='tools/analysis_tools/benchmark.py',
    get_flops='tools/analysis_tools/get_flops.py',
    sweep_threshold='tools/analysis_tools/sweep_threshold.py',
    ablate_exit_policy='tools/analysis_tools/ablate_exit_policy.py',
    confusion_matrix='tools/analysis_tools/confusion_matrix.py',
    browse_dataset='tools/analysis_tools/browse_dataset.py',
    check_dataset='tools/misc/check_dataset.py',
    print_config='tools/misc/print_config.py',
    publish_model='tools/misc/publish_model.py')


def load_tools(prefix: str, *names: str, **renamed: str) -> dict:
    """Import tools of :data:`TOOL_SCRIPTS` as modules.

    Args:
        prefix (str): of the module names, ``<prefix>_<path, '/' as '_', no .py>``.
        names (str): tools, by their name in :data:`TOOL_SCRIPTS`.
        renamed (str): more tools, ``key=name``: the tool ``name`` under ``key``.

    Returns:
        dict: ``{name or key: module}``.
    """
    modules = {}
    for key, name in [(n, n) for n in names] + list(renamed.items()):
        rel = TOOL_SCRIPTS[name]
        module_name = f'{prefix}_{rel.replace("/", "_")[:-len(".py")]}'
        spec = importlib.util.spec_from_file_location(module_name, ROOT / rel)
        modules[key] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(modules[key])
    return modules


def free_port() -> int:
    """A TCP port that is free right now (for torchrun's rendezvous)."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def run_launcher(script: str, args: Sequence[str], env: Optional[Dict[str, str]] = None,
                 timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``bash tools/<script> ARGS`` from the repository root.

    The child gets ``PYTHON`` = this interpreter, a free ``PORT`` and
    ``CUDA_VISIBLE_DEVICES=''`` (CPU, gloo) unless ``env`` overrides them.

    Returns:
        subprocess.CompletedProcess: with ``stdout`` (stderr merged) and
        ``wall_s`` (seconds) attached.
    """
    full_env = dict(os.environ)
    full_env.update(PYTHON=sys.executable, PORT=str(free_port()), CUDA_VISIBLE_DEVICES='')
    full_env.update(env or {})
    t0 = time.time()
    proc = subprocess.run(['bash', str(ROOT / 'tools' / script), *map(str, args)],
                          cwd=ROOT, env=full_env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=timeout)
    proc.wall_s = time.time() - t0
    return proc


def check(proc: subprocess.CompletedProcess) -> str:
    """Assert a launcher run succeeded; return its output."""
    assert proc.returncode == 0, f'exit {proc.returncode}; output tail:\n{proc.stdout[-6000:]}'
    return proc.stdout


def read_scalars(work_dir: os.PathLike) -> List[dict]:
    """All records of the (single) run's ``vis_data/scalars.json`` in ``work_dir``."""
    files = sorted(glob.glob(osp.join(str(work_dir), '*', 'vis_data', 'scalars.json')))
    assert files, f'no scalars.json under {work_dir}'
    records = []
    for f in files:
        with open(f) as fh:
            records += [json.loads(line) for line in fh if line.strip()]
    return records
