"""Every user fault ends in ONE ``error:`` line (docs/robustness.md,
"User errors and bugs"): the tool's ``main`` runs through ``run_cli`` in-process,
exits non-zero, prints exactly one ``error:`` line that names the file / value and
the fix, and no traceback, unless ``DTOP_TRACEBACK=1`` (then the exception
propagates, with its traceback). Bugs keep their traceback.

One test per row of the issue's table; tiny config, data and checkpoint generated
here (``_tiny_runs``)."""
import os
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmseg.registry import MODELS

from _tiny_runs import PRUNE_CONFIG, ROOT, load_tools, make_tiny_ade, write_tiny_config
from dtop.utils.errors import (DataError, OptionError, _stop_dataloader_workers, run_cli,
                               user_error_message)


TOOLS = load_tools('ole', 'test', 'train', 'demo', 'benchmark', 'get_flops', 'check_dataset',
                   'print_config', 'confusion_matrix', 'browse_dataset', 'sweep_threshold',
                   'ablate_exit_policy')


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp('one_line')
    data = make_tiny_ade(root / 'data', n_train=1, n_val=2)
    config = write_tiny_config(root / 'tiny.py', data, PRUNE_CONFIG, max_iters=2)
    cfg = Config.fromfile(str(config))
    init_default_scope('mmseg')
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    ckpt = root / 'tiny.pth'  # tensors only: loads with or without full unpickling
    torch.save(dict(state_dict=model.state_dict()), str(ckpt))
    return dict(root=root, data=data, config=str(config), ckpt=str(ckpt))


def one_error_line(capsys, monkeypatch, tool, argv, *names, exc=Exception):
    """Run ``tool.main(argv)`` as the command line does; return its ``error:`` line.

    Asserts: exit status 1, exactly one ``error:`` line on stderr, containing every
    string of ``names``, and no traceback. Then, with ``DTOP_TRACEBACK=1``, the
    exception (of type ``exc``) propagates instead (Python prints its traceback).
    """
    monkeypatch.delenv('DTOP_TRACEBACK', raising=False)
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        run_cli(TOOLS[tool].main, [str(a) for a in argv])
    assert info.value.code == 1
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith('error:')]
    assert len(lines) == 1, err
    assert 'Traceback' not in err, err
    for name in names:
        assert str(name) in lines[0], (name, lines[0])
    monkeypatch.setenv('DTOP_TRACEBACK', '1')
    with pytest.raises(exc) as info:
        run_cli(TOOLS[tool].main, [str(a) for a in argv])
    _stop_dataloader_workers()  # while the traceback keeps a DataLoader iterator alive
    del info
    monkeypatch.delenv('DTOP_TRACEBACK')
    capsys.readouterr()
    return lines[0]


def _test_argv(tiny, tmp_path, *extra, config=None, ckpt=None):
    return [config or tiny['config'], ckpt or tiny['ckpt'], '--work-dir', tmp_path / 'w',
            *extra]


# -------------------------------------------------- config values, checked at build
def test_test_cfg_mode_bogus(tiny, tmp_path, capsys, monkeypatch):
    one_error_line(capsys, monkeypatch, 'test',
                   _test_argv(tiny, tmp_path, '--cfg-options', 'model.test_cfg.mode=bogus'),
                   'test_cfg.mode must be "whole" or "slide"', "'bogus'", exc=OptionError)


def test_test_cfg_precision_int8(tiny, tmp_path, capsys, monkeypatch):
    cfg = tmp_path / 'int8.py'  # image_demo has no --cfg-options: a config file
    cfg.write_text(f"_base_ = [{tiny['config']!r}]\n"
                   "model = dict(test_cfg=dict(precision='int8'))\n")
    img = tiny['data'] / 'images' / 'validation' / 'img_0.jpg'
    one_error_line(capsys, monkeypatch, 'demo',
                   [img, cfg, tiny['ckpt'], '--out-file', tmp_path / 'o.png'],
                   'test_cfg.precision must be one of', "'int8'", exc=OptionError)


def test_keep_topk_per_class_negative(tiny, tmp_path, capsys, monkeypatch):
    one_error_line(capsys, monkeypatch, 'train',
                   [tiny['config'], '--work-dir', tmp_path / 'w', '--cfg-options',
                    'model.keep_topk_per_class=-1'],
                   'keep_topk_per_class', '-1', exc=OptionError)
    assert not (tmp_path / 'w').exists()


def test_unknown_model_key(tiny, tmp_path, capsys, monkeypatch):
    # before: a TypeError traceback (25-37 lines, by tool); nested keys are named too
    line = one_error_line(capsys, monkeypatch, 'benchmark',
                          [tiny['config'], '--cfg-options', 'model.foo=1'],
                          "DToPEncoderDecoder got an unexpected key 'foo'", 'model.foo',
                          'prune_threshold', exc=OptionError)
    assert line.startswith('error: model: ')
    line = one_error_line(capsys, monkeypatch, 'test',
                          _test_argv(tiny, tmp_path, '--cfg-options',
                                     'model.backbone.embed_dim=8'),
                          "model.backbone: DToPVisionTransformer got an unexpected key "
                          "'embed_dim'", "did you mean 'embed_dims'", exc=OptionError)


def test_test_cfg_stride_zero(tiny, tmp_path, capsys, monkeypatch):
    one_error_line(capsys, monkeypatch, 'test',
                   _test_argv(tiny, tmp_path, '--cfg-options', 'model.test_cfg.stride=0'),
                   'test_cfg.stride must be two positive ints', 'got 0',
                   'model.test_cfg.stride=', exc=OptionError)


# ----------------------------------------------------------------- tool options
def test_benchmark_batch_sizes_zero(tiny, capsys, monkeypatch):
    # before: ZeroDivisionError (integer modulo by zero), 12 lines
    one_error_line(capsys, monkeypatch, 'benchmark',
                   [tiny['config'], '--batch-sizes', '0'],
                   '--batch-sizes must be >= 1, got 0', exc=OptionError)


def test_get_flops_shape_zero(tiny, capsys, monkeypatch):
    # before: a 94-line traceback from the patch embedding's convolution
    one_error_line(capsys, monkeypatch, 'get_flops',
                   [tiny['config'], '--shape', '0', '0'],
                   '--shape 0 0', 'at least the patch size 16 px', exc=OptionError)


def test_image_demo_directory_as_image(tiny, tmp_path, capsys, monkeypatch):
    # before: "FileNotFoundError: image not found: DIR" (12 lines)
    one_error_line(capsys, monkeypatch, 'demo',
                   [tiny['data'], tiny['config'], tiny['ckpt'], '--out-file',
                    tmp_path / 'o.png'],
                   f"image {tiny['data']} is a directory", 'img_0.jpg', exc=DataError)


def test_work_dir_that_is_a_file(tiny, tmp_path, capsys, monkeypatch):
    afile = tmp_path / 'afile'
    afile.write_text('x')
    for tool, argv in (('train', [tiny['config'], '--work-dir', afile]),
                       ('test', [tiny['config'], tiny['ckpt'], '--work-dir', afile]),
                       ('train', [tiny['config'], '--work-dir', afile / 'sub'])):
        one_error_line(capsys, monkeypatch, tool, argv, f'work dir {afile}', 'is a file',
                       '--work-dir DIR', exc=OptionError)
    assert afile.read_text() == 'x'


def test_cfg_options_item_without_equals(tiny, tmp_path, capsys, monkeypatch):
    # before: "ValueError: not enough values to unpack" tracebacks (27-29 lines)
    cfg, ckpt, out = tiny['config'], tiny['ckpt'], tmp_path / 'o'
    for tool, argv in (
            ('test', [cfg, ckpt]), ('train', [cfg]), ('check_dataset', [cfg]),
            ('print_config', [cfg]), ('confusion_matrix', [cfg, ckpt, '--out-dir', out]),
            ('browse_dataset', [cfg, '--output-dir', out]), ('benchmark', [cfg]),
            ('get_flops', [cfg]), ('sweep_threshold', [cfg, ckpt, '--thresholds', '0.9']),
            ('ablate_exit_policy', [cfg, ckpt])):
        one_error_line(capsys, monkeypatch, tool,
                       argv + ['--cfg-options', 'model.prune_threshold'],
                       "--cfg-options: expected KEY=VALUE items, got "
                       "'model.prune_threshold'", exc=OptionError)


def test_test_py_missing_config_or_checkpoint(tiny, tmp_path, capsys, monkeypatch):
    # before: FileNotFoundError tracebacks (15 lines)
    one_error_line(capsys, monkeypatch, 'test', [tmp_path / 'nope.py', tiny['ckpt']],
                   f"config file not found: {tmp_path / 'nope.py'} (pass the path of a "
                   "config .py file", exc=FileNotFoundError)
    one_error_line(capsys, monkeypatch, 'test', [tiny['config'], tmp_path / 'nope.pth'],
                   f"checkpoint not found: {tmp_path / 'nope.pth'} (pass a .pth file",
                   exc=FileNotFoundError)


def test_test_py_bad_sample_in_a_dataloader_worker(tiny, tmp_path, capsys, monkeypatch):
    """before: the DataLoader worker's re-raise embedded torch's traceback in the
    message (28 lines); now the worker's own one-line message."""
    data = tmp_path / 'data'
    shutil.copytree(tiny['data'], data)
    bad = data / 'images' / 'validation' / 'img_1.jpg'
    bad.write_bytes(bad.read_bytes()[:400])  # a truncated JPEG
    line = one_error_line(
        capsys, monkeypatch, 'test',
        _test_argv(tiny, tmp_path, '--cfg-options', f'test_dataloader.dataset.data_root={data}',
                   'test_dataloader.num_workers=2'),
        f'cannot load sample {bad}', 'tools/misc/check_dataset.py', exc=DataError)
    assert 'DataLoader worker' not in line and 'Original Traceback' not in line


# ------------------------------------------------------------- check_dataset.py
def _dataset_cfg(tmp_path, tiny, data):
    cfg = tmp_path / 'cfg.py'
    cfg.write_text(f"_base_ = [{tiny['config']!r}]\n"
                   f"test_dataloader = dict(dataset=dict(data_root={str(data)!r}))\n")
    return str(cfg)


def test_check_dataset_names_a_dangling_image_symlink(tiny, tmp_path, capsys):
    # before: the sample was dropped without a word and the checker said OK (exit 0)
    data = tmp_path / 'data'
    shutil.copytree(tiny['data'], data)
    link = data / 'images' / 'validation' / 'img_9.jpg'
    os.symlink(tmp_path / 'gone.jpg', link)
    shutil.copy(data / 'annotations' / 'validation' / 'img_0.png',
                data / 'annotations' / 'validation' / 'img_9.png')
    assert TOOLS['check_dataset'].main([_dataset_cfg(tmp_path, tiny, data)]) == 1
    out = capsys.readouterr().out
    assert 'not a readable file: 1 sample(s)' in out
    assert f'image {link} is a dangling symlink (-> {tmp_path / "gone.jpg"})' in out
    assert 'OK:' not in out


def test_check_dataset_names_a_split_without_labelled_pixels(tiny, tmp_path, capsys):
    # before: "OK", and tools/test.py reported aAcc / mIoU nan with exit 0
    data = tmp_path / 'data'
    shutil.copytree(tiny['data'], data)
    for png in (data / 'annotations' / 'validation').glob('*.png'):
        cv2.imwrite(str(png), np.zeros((120, 160), np.uint8))  # 0 -> 255 (ignored)
    assert TOOLS['check_dataset'].main([_dataset_cfg(tmp_path, tiny, data)]) == 1
    out = capsys.readouterr().out
    assert 'no labelled pixels: the whole split' in out
    assert 'no labelled pixels in split test: none of its 2 annotation(s)' in out
    assert 'ignore index 255' in out and 'reduce_zero_label' in out


# ------------------------------------------------------------- image_demo.py
def test_image_demo_max_side_default_bounds_the_picture(tiny, tmp_path, capsys,
                                                        monkeypatch):
    demo = TOOLS['demo']
    assert demo.parse_args(['i', 'c', 'k']).max_side == demo.DEFAULT_MAX_SIDE == 2048
    img = tmp_path / 'wide.png'
    cv2.imwrite(str(img), np.full((40, 2600, 3), 120, np.uint8))
    out = tmp_path / 'wide_dtop.png'
    result = demo.main([str(img), tiny['config'], tiny['ckpt'], '--out-file', str(out),
                        '--device', 'cpu'])
    stdout = capsys.readouterr().out
    notes = [ln for ln in stdout.splitlines() if ln.startswith('note: image 2600x40 px '
                                                               'downscaled to 2048x')]
    assert len(notes) == 1 and '--max-side 0 keeps the full size' in notes[0]
    assert max(result['shape']) == 2048
    h, w = cv2.imread(str(out)).shape[:2]
    assert w <= 2 * 2048 + 200 and h <= 2048, (h, w)
    one_error_line(capsys, monkeypatch, 'demo',
                   [img, tiny['config'], tiny['ckpt'], '--max-side', '-5'],
                   '--max-side must be 0 (no limit) or at least 64 px, got -5',
                   exc=OptionError)


# ------------------------------------------------------------------- the policy
def test_bugs_keep_their_traceback_user_errors_do_not(tmp_path):
    def unpack():
        a, b = [1]  # noqa: F841  (a ValueError from an operation: a bug)

    def type_error():
        return len(3)

    for bug in (unpack, type_error):
        with pytest.raises((ValueError, TypeError)):
            run_cli(bug)
    try:
        open(tmp_path / 'nope' / 'x.json')
    except OSError as exc:
        assert user_error_message(exc) == f"No such file or directory: {tmp_path / 'nope'}" \
            '/x.json'
    try:
        TOOLS['benchmark'].run_benchmark(None, torch.zeros(1, 3, 8, 8), [1], ['bogus'], 1)
    except ValueError as exc:  # an explicit `raise ValueError(...)` check of a tool
        assert user_error_message(exc).startswith("unknown variant 'bogus'")


def test_one_line_as_a_real_command(tiny, tmp_path):
    """The subprocess view: exit status 1, one line; DTOP_TRACEBACK=1 shows it all."""
    argv = [sys.executable, str(ROOT / 'tools' / 'test.py'), str(tmp_path / 'nope.py'),
            tiny['ckpt']]
    env = {k: v for k, v in os.environ.items() if k != 'DTOP_TRACEBACK'}
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith(
        f"error: config file not found: {tmp_path / 'nope.py'} (pass the path of a config")
    assert 'Traceback' not in proc.stderr
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120,
                          env=dict(env, DTOP_TRACEBACK='1'))
    assert proc.returncode == 1 and 'Traceback (most recent call last)' in proc.stderr
