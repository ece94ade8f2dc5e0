"""Robustness (docs/robustness.md) through the tools, on a tiny model and a generated ADE-layout dataset:
checkpoints that do not fit or cannot be read, bad data files, empty data roots,
bad options, and test-time augmentation statistics. Every case must stop with a
message naming the thing and the fix, or behave correctly."""
import importlib.util
import os

import cv2
import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmseg.registry import MODELS
from PIL import Image

from _tiny_runs import BASE_CONFIG, ROOT, make_tiny_ade, write_tiny_config
from dtop.utils.errors import (CheckpointError, CheckpointMismatchError, DataError,
                               run_cli)


def _load(name, sub='tools'):
    spec = importlib.util.spec_from_file_location(f'rob_{name.replace("/", "_")}',
                                                  ROOT / sub / f'{name}.py')
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


test_tool = _load('test')
train_tool = _load('train')
check_tool = _load('misc/check_dataset')


def _save_model(cfg_path, out, embed_dims=None, seed=0):
    """Build the model of ``cfg_path`` (optionally wider) and save a checkpoint."""
    cfg = Config.fromfile(str(cfg_path))
    if embed_dims is not None:
        cfg.model.backbone.embed_dims = embed_dims
        cfg.model.decode_head.in_channels = embed_dims
        for head in cfg.model.auxiliary_head:
            head.in_channels = embed_dims
    init_default_scope('mmseg')
    torch.manual_seed(seed)
    model = MODELS.build(cfg.model)
    model.init_weights()
    torch.save(dict(state_dict=model.state_dict(), meta=dict(iter=1)), str(out))
    return str(out)


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp('robust')
    data = make_tiny_ade(root / 'data', n_train=2, n_val=2)
    config = write_tiny_config(root / 'tiny.py', data, BASE_CONFIG, max_iters=4)
    ckpt = _save_model(config, root / 'tiny.pth')
    wide = _save_model(config, root / 'wide.pth', embed_dims=64)
    return dict(root=root, data=data, config=str(config), ckpt=ckpt, wide=wide)


def _test(tiny, tmp_path, *extra, config=None, ckpt=None):
    return test_tool.main([config or tiny['config'], ckpt or tiny['ckpt'],
                           '--work-dir', str(tmp_path / 'test'), *extra])


# ------------------------------------------------------------------ checkpoints
def test_test_py_refuses_a_checkpoint_of_another_width(tiny, tmp_path, capsys):
    # as a command: one line naming the file, the first mismatches and the fix; exit 1
    with pytest.raises(SystemExit) as exit_info:
        run_cli(test_tool.main, [tiny['config'], tiny['wide'], '--work-dir',
                                 str(tmp_path / 't2')])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: checkpoint {tiny['wide']} does not fit the model")
    assert 'shape mismatches (checkpoint vs model): backbone.' in err
    assert '[64]' in err and '--allow-partial-load' in err and 'Traceback' not in err


def test_partial_load_is_an_explicit_opt_in(tiny, tmp_path):
    metrics = _test(tiny, tmp_path, '--allow-partial-load', ckpt=tiny['wide'])
    assert 'mIoU' in metrics


def test_prune_finetune_base_that_does_not_fit_stops_before_training(tiny, tmp_path):
    # what tools/dist_train_load.sh runs: train.py --cfg-options load_from=BASE
    work = tmp_path / 'ft'
    with pytest.raises(CheckpointMismatchError, match='does not fit the model'):
        train_tool.main([tiny['config'], '--work-dir', str(work),
                         '--cfg-options', f"load_from={tiny['wide']}",
                         'train_dataloader.num_workers=0'])
    assert not [n for n in os.listdir(work) if n.endswith('.pth')]


def test_resume_from_a_checkpoint_that_does_not_fit_stops(tiny, tmp_path):
    import shutil
    work = tmp_path / 'run'
    work.mkdir()
    shutil.copy(tiny['wide'], work / 'iter_2.pth')
    (work / 'last_checkpoint').write_text(str(work / 'iter_2.pth'))
    with pytest.raises(CheckpointMismatchError, match='iter_2.pth does not fit the model'):
        train_tool.main([tiny['config'], '--work-dir', str(work), '--resume',
                         '--cfg-options', 'train_dataloader.num_workers=0'])
    assert sorted(n for n in os.listdir(work) if n.endswith('.pth')) == ['iter_2.pth']
    assert (work / 'last_checkpoint').read_text() == str(work / 'iter_2.pth')


def test_truncated_checkpoint_is_named(tiny, tmp_path):
    bad = tmp_path / 'cut.pth'
    with open(tiny['ckpt'], 'rb') as f:
        bad.write_bytes(f.read()[:5000])
    with pytest.raises(CheckpointError, match=f'cannot read checkpoint {bad}: it is '
                                              'truncated or corrupt'):
        _test(tiny, tmp_path, ckpt=str(bad))


# ------------------------------------------------------------------------- data
def _copy_data(tiny, tmp_path):
    import shutil
    data = tmp_path / 'data'
    shutil.copytree(tiny['data'], data)
    cfg = tmp_path / 'cfg.py'
    cfg.write_text(f"_base_ = [{tiny['config']!r}]\n"
                   f"val_dataloader = dict(dataset=dict(data_root={str(data)!r}))\n"
                   f"test_dataloader = val_dataloader\n"
                   f"train_dataloader = dict(dataset=dict(data_root={str(data)!r}))\n")
    return data, str(cfg)


def _zero_byte_image(data):
    path = data / 'images' / 'validation' / 'img_1.jpg'
    path.write_bytes(b'')
    return path, r'is empty \(0 bytes\)'


def _annotation_of_another_size(data):
    path = data / 'annotations' / 'validation' / 'img_1.png'
    cv2.imwrite(str(path), np.ones((60, 70), np.uint8))
    return path, 'annotation .* is 70x60 px but image .* is 160x120 px'


def _rgba_annotation(data):
    path = data / 'annotations' / 'validation' / 'img_1.png'
    Image.fromarray(np.ones((120, 160, 4), np.uint8)).save(path)
    return path, "has PIL mode 'RGBA' \\(4 channels\\); label maps must be single-channel"


def _labels_out_of_range(data):
    path = data / 'annotations' / 'validation' / 'img_1.png'
    ann = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    ann[50:60, 50:60] = 200  # ADE20K has 150 classes: 200 -> 199 after reduce_zero_label
    cv2.imwrite(str(path), ann)
    return path, r'label values \[199\] after reduce_zero_label .* outside \[0, 150\)'


def _load_every_sample(cfg_path):
    """Iterate the test dataloader as DToPRunner builds it (no model needed)."""
    from dtop.engine import DToPRunner
    cfg = Config.fromfile(cfg_path)
    init_default_scope('mmseg')
    for _ in DToPRunner.build_dataloader(cfg.test_dataloader):
        pass


@pytest.mark.parametrize('damage', [_zero_byte_image, _annotation_of_another_size,
                                    _rgba_annotation, _labels_out_of_range])
def test_bad_sample_is_named(tiny, tmp_path, damage):
    data, cfg = _copy_data(tiny, tmp_path)
    path, reason = damage(data)
    with pytest.raises(DataError, match=reason) as info:
        _load_every_sample(cfg)
    msg = str(info.value)
    assert 'img_1.jpg' in msg and 'img_1.png' in msg  # the image and its annotation
    assert 'tools/misc/check_dataset.py' in msg


def test_labels_out_of_range_stop_tools_test_py(tiny, tmp_path):
    """End to end: no longer silently scored (mIoU 59.68 -> 43.20 with exit 0)."""
    data, cfg = _copy_data(tiny, tmp_path)
    _labels_out_of_range(data)
    with pytest.raises(DataError, match=r'img_1.jpg \(annotation .*img_1.png\): label '
                                        r'values \[199\]'):
        _test(tiny, tmp_path, config=cfg)


def test_one_pixel_image_is_named(tiny, tmp_path):
    # mmseg's LoadAnnotations squeezes a 1-px side away and then fails with
    # "'numpy.uint8' object does not support item assignment"
    data, cfg = _copy_data(tiny, tmp_path)
    cv2.imwrite(str(data / 'images' / 'validation' / 'img_1.jpg'),
                np.full((1, 1, 3), 90, np.uint8))
    cv2.imwrite(str(data / 'annotations' / 'validation' / 'img_1.png'),
                np.full((1, 1), 2, np.uint8))
    with pytest.raises(DataError, match=r'img_1.png is 1x1 px: label maps need at least 2 px'):
        _load_every_sample(cfg)


def test_empty_data_root_is_named(tiny, tmp_path):
    empty = tmp_path / 'empty_root'
    empty.mkdir()
    cfg = tmp_path / 'empty.py'
    cfg.write_text(f"_base_ = [{tiny['config']!r}]\n"
                   f"test_dataloader = dict(dataset=dict(data_root={str(empty)!r}))\n")
    with pytest.raises(DataError) as info:
        _load_every_sample(str(cfg))
    msg = str(info.value)
    assert msg.startswith('the val dataset cannot be read: No such file or directory: '
                          f'{empty}/images/validation')
    assert f"data_root='{empty}'" in msg and 'dataset.data_root=PATH' in msg
    # the folders exist but hold no image (mmengine: "need at least one array to
    # concatenate")
    for sub in ('images/validation', 'annotations/validation'):
        (empty / sub).mkdir(parents=True)
    with pytest.raises(DataError) as info:
        _load_every_sample(str(cfg))
    msg = str(info.value)
    assert msg.startswith("the val dataset is empty: no sample found for type='ADE20KDataset'")
    assert f"data_root='{empty}'" in msg and 'dataset.data_root=PATH' in msg


def test_check_dataset_reports_every_problem(tiny, tmp_path, capsys):
    data, cfg = _copy_data(tiny, tmp_path)
    assert check_tool.main([cfg, '--split', 'val']) == 0
    assert 'OK: every image and annotation decodes' in capsys.readouterr().out
    # one problem of each kind, on more images
    for i in range(2, 6):
        for sub, ext in (('images', 'jpg'), ('annotations', 'png')):
            src = data / sub / 'validation' / f'img_0.{ext}'
            (data / sub / 'validation' / f'img_{i}.{ext}').write_bytes(src.read_bytes())
    _zero_byte_image(data)  # img_1.jpg
    (data / 'annotations' / 'validation' / 'img_2.png').write_bytes(b'not a png')
    cv2.imwrite(str(data / 'annotations' / 'validation' / 'img_3.png'),
                np.ones((10, 10), np.uint8))
    ann = cv2.imread(str(data / 'annotations' / 'validation' / 'img_4.png'),
                     cv2.IMREAD_UNCHANGED)
    ann[0, 0] = 250
    cv2.imwrite(str(data / 'annotations' / 'validation' / 'img_4.png'), ann)
    Image.fromarray(np.ones((120, 160, 4), np.uint8)).save(
        data / 'annotations' / 'validation' / 'img_5.png')
    assert check_tool.main([cfg, '--split', 'val']) == 1
    out = capsys.readouterr().out
    assert 'val split: 6 samples' in out and 'PROBLEMS: 5 in 5 kind(s)' in out
    for kind, name in (('unreadable image', 'img_1.jpg is empty (0 bytes)'),
                       ('unreadable annotation', 'img_2.png is not a readable image'),
                       ('size mismatch', 'img_3.png is 10x10 px but image'),
                       ('labels out of range', 'img_4.png: values [249]'),
                       ('annotation mode', "img_5.png has PIL mode 'RGBA'")):
        assert f'  {kind}: 1 sample(s)' in out, kind
        assert name in out, name
    empty = tmp_path / 'nothing'
    empty.mkdir()
    assert check_tool.main([cfg, '--split', 'val', '--cfg-options',
                            f'val_dataloader.dataset.data_root={empty}']) == 1
    assert 'PROBLEM: the val dataset cannot be read' in capsys.readouterr().out


# ---------------------------------------------------------------------- options
@pytest.mark.parametrize('value,message', [
    ('nan', 'got nan; a NaN threshold would silently disable'),
    ('abc', "got the string 'abc'"),
    ('[0.5,0.5,0.5,0.5]', 'got 4 values'),
])
def test_bad_thresholds_are_named_where_they_enter(tiny, value, message):
    opts = ['--cfg-options', f'model.prune_threshold={value}']
    with pytest.raises(ValueError, match=message):
        test_tool.build_config(test_tool.parse_args([tiny['config'], tiny['ckpt'], *opts]))
    with pytest.raises(ValueError, match=message):
        train_tool.build_config(train_tool.parse_args([tiny['config'], *opts]))


# -------------------------------------------------------------------------- TTA
def test_tta_gflops_are_the_sum_over_passes(tiny, tmp_path):
    cfg = tmp_path / 'tta.py'
    cfg.write_text(
        f"_base_ = [{tiny['config']!r}]\n"
        "tta_pipeline = [\n"
        "    dict(type='LoadImageFromFile'),\n"
        "    dict(type='TestTimeAug', transforms=[\n"
        "        [dict(type='Resize', scale=(512, 128), keep_ratio=True)],\n"
        "        [dict(type='RandomFlip', prob=0., direction='horizontal'),\n"
        "         dict(type='RandomFlip', prob=1., direction='horizontal')],\n"
        "        [dict(type='LoadAnnotations', reduce_zero_label=True)],\n"
        "        [dict(type='PackSegInputs')]])]\n")
    plain = _test(tiny, tmp_path, config=str(cfg))
    tta = _test(tiny, tmp_path, '--tta', config=str(cfg))
    assert 'tta_passes_per_img' not in plain
    assert tta['tta_passes_per_img'] == 2
    # BASE model (p0 = 1): both passes cost the same, so the image costs twice as much
    for key in ('GFLOPs_img', 'GFLOPs_img_noaux', 'GFLOPs_dense_img'):
        assert tta[key] == pytest.approx(2 * plain[key], rel=1e-3), key
    assert tta['crops_per_img'] == 2 * plain['crops_per_img']
    assert tta['GFLOPs_crop'] == pytest.approx(plain['GFLOPs_crop'], rel=1e-3)


@pytest.mark.slow
def test_dist_train_load_with_a_base_that_does_not_fit_fails(tiny, tmp_path):
    """The launcher itself: non-zero exit, the one-line reason, no checkpoint written."""
    from _tiny_runs import run_launcher
    work = tmp_path / 'ft'
    proc = run_launcher('dist_train_load.sh', [tiny['config'], work, tiny['wide'],
                                               '--cfg-options',
                                               'train_dataloader.num_workers=0'])
    assert proc.returncode != 0
    assert f"error: checkpoint {tiny['wide']} does not fit the model" in proc.stdout
    assert not list(work.glob('*.pth'))
