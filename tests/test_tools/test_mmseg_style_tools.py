"""The mmseg-style tools on a real demo checkpoint: confusion_matrix, analyze_logs,
browse_dataset (tools/analysis_tools/) and print_config, publish_model (tools/misc/).

One module fixture trains the demo prune config (the one ``tools/run_demo.sh``
fine-tunes, p0 = 0.8, pruning live) for 4 iterations on a few generated demo images,
validating at the end, in process: a real mmengine checkpoint (with optimizer and
scheduler state) and real JSON scalar logs (losses, ``prune.keep_ratio_s*``, mIoU,
GFLOPs). Then the test loop gives the reference mIoU the confusion matrix must match.
"""
import copy
import csv
import hashlib
import importlib.util
import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.runner import Runner

from dtop.datasets.demo_generator import generate_demo_dataset
from dtop.utils.errors import CheckpointMismatchError

ROOT = Path(__file__).resolve().parents[2]
NUM_VAL = 3


def demo_prune_config() -> Path:
    """The segvit prune config of tools/run_demo.sh (its model table names it)."""
    text = (ROOT / 'tools' / 'run_demo.sh').read_text()
    block = text.split('declare -A DTOP_CONFIGS=(', 1)[1].split(')', 1)[0]
    return ROOT / re.search(r'\[segvit\]=(\S+)', block).group(1)


def load_tool(rel: str):
    spec = importlib.util.spec_from_file_location(Path(rel).stem, ROOT / rel)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope='module')
def demo_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('mmseg_tools')
    data = tmp / 'data'
    generate_demo_dataset(str(data), num_train=4, num_val=NUM_VAL, seed=0,
                          height_range=(128, 144), width_range=(128, 176))
    config = demo_prune_config()
    cfg = Config.fromfile(str(config))
    iters = 4
    cfg.merge_from_dict({
        'train_dataloader.batch_size': 2, 'train_dataloader.num_workers': 0,
        'train_dataloader.persistent_workers': False,
        'val_dataloader.num_workers': 0, 'val_dataloader.persistent_workers': False,
        'test_dataloader.num_workers': 0, 'test_dataloader.persistent_workers': False,
        'train_dataloader.dataset.data_root': str(data),
        'val_dataloader.dataset.data_root': str(data),
        'test_dataloader.dataset.data_root': str(data),
        'train_cfg.max_iters': iters, 'train_cfg.val_interval': iters,
        'default_hooks.logger.interval': 1, 'default_hooks.checkpoint.interval': iters,
        # a low threshold so that tokens exit after 4 iterations of training
        'model.prune_threshold': 0.2,
    })
    cfg.work_dir = str(tmp / 'work')
    cfg.experiment_name = 'mmseg_tools_demo'
    # mmengine keeps one Visualizer per name and process: an earlier in-process
    # Runner's instance would write the scalar log into that run's folder.
    cfg.visualizer.name = f'mmseg_tools_demo_{tmp.name}'
    runner = Runner.from_cfg(copy.deepcopy(cfg))
    runner.train()
    test_metrics = runner.test()
    ckpt = tmp / 'work' / f'iter_{iters}.pth'
    assert ckpt.is_file()
    # the config the tools get: the demo config with the test data and threshold
    tool_cfg = tmp / 'demo_prune_tiny.py'
    tool_cfg.write_text(
        f'_base_ = [{str(config)!r}]\n'
        f'model = dict(prune_threshold=0.2)\n'
        f'test_dataloader = dict(num_workers=0, persistent_workers=False, '
        f'dataset=dict(data_root={str(data)!r}))\n'
        f'val_dataloader = test_dataloader\n'
        f'train_dataloader = dict(num_workers=0, persistent_workers=False, '
        f'dataset=dict(data_root={str(data)!r}))\n')
    return dict(tmp=tmp, data=data, ckpt=ckpt, config=tool_cfg, work=tmp / 'work',
                test_metrics=test_metrics, iters=iters)


# --------------------------------------------------------------- confusion_matrix
def test_accumulate_counts_gt_rows_and_skips_ignored_and_out_of_range():
    tool = load_tool('tools/analysis_tools/confusion_matrix.py')
    cm = np.zeros((3, 3), np.int64)
    gt = np.array([[0, 0, 1], [2, 255, 7]])
    pred = np.array([[0, 1, 1], [0, 2, 2]])
    assert tool.accumulate(cm, pred, gt, ignore_index=255) == 1  # the label 7
    assert cm.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 0]]
    norm = tool.normalize_rows(cm)
    assert norm[0].tolist() == [50.0, 50.0, 0.0]
    scores = tool.per_class_scores(cm)
    assert scores['IoU'] == pytest.approx([100 / 3, 50.0, 0.0])


def test_confusion_matrix_on_the_demo_checkpoint(demo_run, tmp_path, capsys):
    tool = load_tool('tools/analysis_tools/confusion_matrix.py')
    out = tmp_path / 'cm'
    res = tool.main([str(demo_run['config']), str(demo_run['ckpt']), '--out-dir', str(out),
                     '--device', 'cpu'])
    assert (out / 'confusion_matrix.png').stat().st_size > 0
    cm = np.array(res['counts'])
    k = len(res['classes'])
    assert cm.shape == (k, k) and res['num_images'] == NUM_VAL
    # every labelled pixel of the val annotations is counted once (0 = ignored)
    anns = sorted((demo_run['data'] / 'annotations' / 'validation').glob('*.png'))
    labelled = sum(int((cv2.imread(str(a), cv2.IMREAD_UNCHANGED) != 0).sum()) for a in anns)
    assert cm.sum() == labelled
    gt_counts = np.zeros(k, np.int64)
    for a in anns:
        lab = cv2.imread(str(a), cv2.IMREAD_UNCHANGED).astype(np.int64)
        gt_counts += np.bincount(lab[lab != 0] - 1, minlength=k)[:k]
    assert cm.sum(1).tolist() == gt_counts.tolist()  # rows are the ground truth
    # the same predictions as the test loop: its mIoU (2 decimals) from the counts
    assert res['mIoU'] == pytest.approx(demo_run['test_metrics']['mIoU'], abs=0.006)
    with open(out / 'confusion_matrix.csv', newline='') as f:
        rows = list(csv.reader(f))
    assert rows[0][1:] == res['classes'] and len(rows) == k + 1
    norm = np.array([[float(v) for v in r[1:]] for r in rows[1:]])
    present = gt_counts > 0
    assert np.allclose(norm[present].sum(1), 100.0, atol=1e-3)
    assert np.all(norm[~present] == 0)
    with open(out / 'confusion_matrix.json') as f:
        assert json.load(f)['counts'] == res['counts']
    assert 'mIoU from the matrix' in capsys.readouterr().out


def test_confusion_matrix_refuses_a_checkpoint_of_another_model(demo_run, tmp_path):
    tool = load_tool('tools/analysis_tools/confusion_matrix.py')
    wrong = tmp_path / 'wrong.pth'
    sd = torch.load(demo_run['ckpt'], map_location='cpu', weights_only=False)['state_dict']
    sd = {k: v for k, v in sd.items() if not k.startswith('decode_head.')}
    torch.save(dict(state_dict=sd), wrong)
    with pytest.raises(CheckpointMismatchError, match='model keys missing'):
        tool.main([str(demo_run['config']), str(wrong), '--out-dir', str(tmp_path / 'o')])
    assert not (tmp_path / 'o').exists()  # stopped before any work


# --------------------------------------------------------------- analyze_logs
def test_analyze_logs_plots_losses_keep_ratios_and_metrics(demo_run, tmp_path, capsys):
    tool = load_tool('tools/analysis_tools/analyze_logs.py')
    out = tmp_path / 'curves.png'
    work = str(demo_run['work'])
    res = tool.main([work, work, '--legend', 'prune', 'again', '--keys', 'loss',
                     'prune.keep_ratio_s*', 'mIoU', 'GFLOPs_img', '--out', str(out)])
    assert out.stat().st_size > 0
    drawn = res['drawn']
    assert drawn['loss'] == ['prune', 'again']
    assert drawn['prune.keep_ratio_s*'] == [
        'prune: prune.keep_ratio_s1', 'prune: prune.keep_ratio_s2',
        'again: prune.keep_ratio_s1', 'again: prune.keep_ratio_s2']
    series = res['runs']['prune']
    assert [s for s, _ in series['loss']] == list(range(1, demo_run['iters'] + 1))
    assert all(0 < v <= 1 for _, v in series['prune.keep_ratio_s1'])
    assert series['mIoU'][-1][0] == demo_run['iters']
    assert 'mIoU' in capsys.readouterr().out

    res = tool.main([work, '--list-keys'])
    assert 'lr' in res['runs'][Path(work).name]
    with pytest.raises(SystemExit, match='no logged key matches "mDice"'):
        tool.main([work, '--keys', 'mDice', '--out', str(tmp_path / 'x.png')])


def test_analyze_logs_merges_a_resumed_run(tmp_path):
    tool = load_tool('tools/analysis_tools/analyze_logs.py')
    for stamp, recs in (('20260101_000000', [(1, 3.0), (2, 2.0)]),
                        ('20260102_000000', [(2, 1.5), (3, 1.0)])):
        d = tmp_path / 'run' / stamp / 'vis_data'
        d.mkdir(parents=True)
        (d / 'scalars.json').write_text(''.join(
            json.dumps(dict(loss=v, lr=1e-3, iter=s, step=s)) + '\n' for s, v in recs))
    run = tool.load_run(str(tmp_path / 'run'))
    assert run['loss'] == [(1, 3.0), (2, 1.5), (3, 1.0)]  # the later record wins
    assert 'iter' not in run and 'step' not in run


# --------------------------------------------------------------- browse_dataset
def test_browse_dataset_train_split(demo_run, tmp_path, capsys):
    tool = load_tool('tools/analysis_tools/browse_dataset.py')
    out = tmp_path / 'browse'
    res = tool.main([str(demo_run['config']), '--output-dir', str(out), '--num', '3'])
    pics = sorted(out.glob('*.png'))
    assert [p.name[:6] for p in pics] == ['00000_', '00001_', '00002_']
    crop = Config.fromfile(str(demo_run['config'])).model.data_preprocessor.size
    pixels = 0
    for p in pics:  # image | 4-pixel separator | image with labels, at most one crop
        h, w, c = cv2.imread(str(p)).shape
        assert c == 3 and (w - 4) % 2 == 0
        assert 0 < h <= crop[0] and 0 < (w - 4) // 2 <= crop[1]
        pixels += h * (w - 4) // 2
    assert sum(res['pixels'].values()) + res['ignored'] == pixels
    assert res['out_of_range'] == 0
    assert 'pixels per class' in capsys.readouterr().out


def test_browse_dataset_rejects_bad_options(demo_run, tmp_path):
    tool = load_tool('tools/analysis_tools/browse_dataset.py')
    with pytest.raises(SystemExit):
        tool.main([str(demo_run['config']), '--output-dir', str(tmp_path), '--opacity', '5'])


# --------------------------------------------------------------- print_config
def test_print_config_resolves_bases_and_options(demo_run, tmp_path, capsys):
    tool = load_tool('tools/misc/print_config.py')
    config = ROOT / 'configs/dtop/dtop_segvit_vit-l16_4xb4-40k_pascal-context-59-480x480.py'
    out = tmp_path / 'resolved.py'
    text = tool.main([str(config), '--cfg-options', 'model.prune_threshold=0.5',
                      'train_cfg.max_iters=7', '--out', str(out)])
    assert 'prune_threshold=0.5' in text and "type='ATMPruneHead'" in text
    resolved = Config.fromfile(str(out))
    want = Config.fromfile(str(config))
    want.merge_from_dict({'model.prune_threshold': 0.5, 'train_cfg.max_iters': 7})
    assert resolved.to_dict() == want.to_dict()
    assert '_base_' not in out.read_text()

    text = tool.main([str(config), '--key', 'param_scheduler.1', '--format', 'json'])
    assert json.loads(text) == dict(type='PolyLR', power=0.9, eta_min=0.0, by_epoch=False,
                                    begin=1500, end=40000)
    text = tool.main([str(config), '--key', 'model.decode_head'])
    assert text.startswith('model.decode_head = dict(') and 'num_classes=59' in text
    with pytest.raises(SystemExit, match=r'no "heads" in model \(it has: '):
        tool.main([str(config), '--key', 'model.heads'])
    capsys.readouterr()


# --------------------------------------------------------------- publish_model
def test_publish_model_strips_training_state_and_hashes(demo_run, tmp_path, capsys):
    tool = load_tool('tools/misc/publish_model.py')
    final = tool.main([str(demo_run['ckpt']), str(tmp_path / 'pub' / 'dtop_demo.pth'),
                       '--config', str(demo_run['config'])])
    final = Path(final)
    digest = hashlib.sha256(final.read_bytes()).hexdigest()
    assert final.name == f'dtop_demo-{digest[:8]}.pth'
    assert sorted(p.name for p in final.parent.iterdir()) == [final.name]  # no temp file
    src = torch.load(demo_run['ckpt'], map_location='cpu', weights_only=False)
    pub = torch.load(final, map_location='cpu', weights_only=False)
    assert set(pub) == {'state_dict', 'meta'}
    assert {'optimizer', 'param_schedulers', 'message_hub'} <= set(src)
    assert pub['state_dict'].keys() == src['state_dict'].keys()
    assert all(torch.equal(pub['state_dict'][k], v) for k, v in src['state_dict'].items())
    assert final.stat().st_size < demo_run['ckpt'].stat().st_size / 2
    out = capsys.readouterr().out
    assert 'dropped: ' in out and 'optimizer' in out and digest in out

    wrong_cfg = ROOT / 'configs/segvit/segvit_vit-b16_4xb4-160k_ade20k-512x512.py'
    with pytest.raises(CheckpointMismatchError, match='shape mismatches'):
        tool.main([str(demo_run['ckpt']), str(tmp_path / 'no' / 'x.pth'),
                   '--config', str(wrong_cfg)])
    assert not (tmp_path / 'no').exists()


# --------------------------------------------------------------- --help of every tool
@pytest.mark.parametrize('rel', ['tools/analysis_tools/confusion_matrix.py',
                                 'tools/analysis_tools/analyze_logs.py',
                                 'tools/analysis_tools/browse_dataset.py',
                                 'tools/misc/print_config.py',
                                 'tools/misc/publish_model.py'])
def test_help_shows_usage_and_examples(rel, capsys):
    tool = load_tool(rel)
    with pytest.raises(SystemExit) as exc:
        tool.parse_args(['--help'])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith('usage: ') and 'python tools/' in text
