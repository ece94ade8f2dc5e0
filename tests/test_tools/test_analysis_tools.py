"""End-to-end runs of tools/analysis_tools on a tiny model and a generated ADE-layout
dataset: get_flops, benchmark (incl. the forced keep ratio) and sweep_threshold."""
import csv
import importlib.util
import json
import os.path as osp

import numpy as np
import pytest
import torch
from mmengine.registry import init_default_scope
from mmseg.registry import MODELS
from PIL import Image

import dtop  # noqa: F401
import dtop.evaluation  # noqa: F401
from dtop.evaluation.flops import DToPCostDims, dense_flops
from tests.utils.tiny_models import tiny_model_cfg
from tests.utils.tiny_segmentor import sharpen

ROOT = osp.abspath(osp.join(osp.dirname(__file__), '..', '..'))
NUM_CLASSES = 150  # ADE20KDataset's classes


def load_tool(name):
    path = osp.join(ROOT, 'tools', 'analysis_tools', f'{name}.py')
    spec = importlib.util.spec_from_file_location(f'tool_{name}', path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def make_ade_dataset(root, num_images=3):
    """ADE layout: images/validation/*.jpg, annotations/validation/*.png."""
    rng = np.random.default_rng(0)
    sizes = [(80, 112), (64, 96), (96, 64), (64, 64)]
    for sub in ('images/validation', 'annotations/validation'):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(num_images):
        h, w = sizes[i % len(sizes)]
        img = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        img[: h // 2] //= 3  # some structure
        Image.fromarray(img).save(root / 'images' / 'validation' / f'img_{i}.jpg')
        ann = np.zeros((h, w), np.uint8)
        ann[: h // 2] = 1 + i % 3
        ann[h // 2:] = 5
        Image.fromarray(ann).save(root / 'annotations' / 'validation' / f'img_{i}.png')
    return root


def write_config(tmp_path, data_root, prune_threshold=0.9):
    model = tiny_model_cfg(num_classes=NUM_CLASSES, img_size=(64, 64),
                           prune_threshold=prune_threshold, test_mode='slide')
    model['test_cfg']['crop_batch_size'] = 2
    pipeline = [dict(type='LoadImageFromFile'),
                dict(type='Resize', scale=(128, 64), keep_ratio=True),
                dict(type='LoadAnnotations', reduce_zero_label=True),
                dict(type='PackSegInputs')]
    cfg = dict(
        default_scope='mmseg',
        custom_imports=dict(imports=['dtop', 'dtop.evaluation'], allow_failed_imports=False),
        model=model,
        test_dataloader=dict(
            batch_size=1, num_workers=0, persistent_workers=False,
            sampler=dict(type='DefaultSampler', shuffle=False),
            dataset=dict(type='ADE20KDataset', data_root=str(data_root),
                         data_prefix=dict(img_path='images/validation',
                                          seg_map_path='annotations/validation'),
                         pipeline=pipeline)),
        test_evaluator=dict(type='IoUFlopsMetric', iou_metrics=['mIoU']),
        test_cfg=dict(type='TestLoop'),
        custom_hooks=[dict(type='FlopsMetricDimsHook')],
        default_hooks=dict(logger=dict(type='LoggerHook', interval=1)),
        log_level='WARNING',
        env_cfg=dict(cudnn_benchmark=False, dist_cfg=dict(backend='gloo')),
    )
    path = tmp_path / 'tiny_dtop.py'
    path.write_text('\n'.join(f'{k} = {v!r}' for k, v in cfg.items()) + '\n')
    return str(path), model


def tiny_checkpoint_setup(tmp, num_images=3, sharpened=True):
    """A generated ADE-layout dataset under ``tmp``, a config that tests the tiny model
    on it, and a checkpoint of that model (seed 0).

    Args:
        sharpened (bool): initialised (``init_weights``) and sharpened so that p0 < 1
            prunes on random weights; False: the weights as built.

    Returns:
        dict: ``tmp``, ``config``, ``ckpt`` (paths) and ``model_cfg``.
    """
    data_root = make_ade_dataset(tmp / 'ade', num_images=num_images)
    config, model_cfg = write_config(tmp, data_root)
    init_default_scope('mmseg')
    torch.manual_seed(0)
    model = MODELS.build(model_cfg)
    if sharpened:
        model.init_weights()
        sharpen(model, q_scale=1, k_scale=25)
    ckpt = tmp / 'tiny.pth'
    torch.save(dict(state_dict=model.state_dict(), meta=dict()), ckpt)
    return dict(tmp=tmp, config=config, ckpt=str(ckpt), model_cfg=model_cfg)


@pytest.fixture(scope='module')
def tiny_setup(tmp_path_factory):
    return tiny_checkpoint_setup(tmp_path_factory.mktemp('analysis_tools'))


def test_get_flops_tiny_config_matches_analytic(tiny_setup, tmp_path):
    tool = load_tool('get_flops')
    out = tmp_path / 'flops.json'
    res = tool.main([tiny_setup['config'], '--out', str(out)])
    lib, ana = res['library'], res['analytic']
    assert set(lib) == set(ana)
    for k in ana:
        assert lib[k] == pytest.approx(ana[k], rel=1e-9)
    assert json.loads(out.read_text())['shape'] == [64, 64]
    res = tool.main([tiny_setup['config'], '--shape', '96', '64', '--backend', 'fvcore'])
    dims = DToPCostDims.from_config(tiny_setup['model_cfg'])
    want = dense_flops(dims, (96, 64))['backbone_final_head'] / 1e9
    got = res['library']['backbone + final head  [README BASE convention]']
    assert got == pytest.approx(want, rel=1e-6)


def test_benchmark_variants_are_policies_of_the_model(tiny_setup):
    """dense / dense+aux / p0=1 / pruned are exit policies of the model's own loop."""
    bench = load_tool('benchmark')
    init_default_scope('mmseg')
    model = MODELS.build(tiny_setup['model_cfg'])
    model.load_state_dict(torch.load(tiny_setup['ckpt'])['state_dict'])
    model.eval()
    x = torch.randn(3, 3, 64, 64)

    def run(variant, **kw):
        policy, skip = bench.variant_setup(variant, model.exit_policy, **kw)
        model.set_exit_policy(policy)
        model.test_cfg['skip_idle_aux_heads'] = skip
        return model.encode_decode_with_stats(x)

    with torch.no_grad():
        model.prune_threshold = [None, None]
        ref = model.encode_decode(x, [])
        for variant, heads in (('dense', (False, False, True)),
                               ('p0=1', (False, False, True)),
                               ('dense+aux', (True, True, True))):
            seg, out = run(variant)
            torch.testing.assert_close(seg, ref)
            assert out.heads_run == heads and out.active_counts.tolist() == [[16] * 3] * 3
        model.test_cfg['skip_idle_aux_heads'] = True
        for exit_by in ('score', 'random'):
            model.set_exit_policy(bench.keep_ratio_policy([0.5], exit_by=exit_by))
            out = model.run_stages(x)
            # 16 tokens -> 8 -> 4, exactly, for every image
            assert out.active_counts.tolist() == [[16, 8, 4]] * 3
            assert (out.exit_stage == 0).sum().item() == 3 * 8
        _, out = run('pruned', keep_ratio=[0.75, 0.5], keep_jitter=0.25, seed=1)
        counts = out.active_counts
        assert (counts[:, 0] == 16).all() and (counts[:, 1] <= 16).all()
        assert (counts[:, 2] <= counts[:, 1]).all()
        _, out = run('pruned', threshold=[0.5])
        assert model.prune_threshold == [0.5, 0.5]
        # by score: the most confident tokens exit
        model.set_exit_policy(bench.keep_ratio_policy([0.5, 1.0]))
        out = model.run_stages(x)
        from dtop.models.decode_heads.atm_prune_head import token_scores
        out0, canvas0 = out.head_outputs[0]
        conf = token_scores(out0.image_values, canvas0.flatten(2)).amax(1)  # stage-0 scores
        exited = out.exit_stage.flatten(1) == 0
        for b in range(3):
            assert conf[b][exited[b]].min() >= conf[b][~exited[b]].max()
    with pytest.raises(ValueError, match='one number or 2'):
        model.set_exit_policy(bench.keep_ratio_policy([0.5, 0.5, 0.5]))


def test_benchmark_units_are_slide_windows_or_whole_images(tiny_setup, capsys):
    bench = load_tool('benchmark')
    init_default_scope('mmseg')
    from dtop.apis import init_model, load_config
    cfg = load_config(tiny_setup['config'])
    model = init_model(cfg, tiny_setup['ckpt'], device='cpu')
    images = []  # the test images as the model's data preprocessor gives them
    from mmengine.runner import Runner
    loader = Runner.build_dataloader(dict(cfg.test_dataloader, num_workers=0,
                                          persistent_workers=False))
    for data in loader:
        images.append(model.data_preprocessor(data, False)['inputs'][0])
    assert len({tuple(im.shape[-2:]) for im in images}) > 1  # sizes differ
    # slide: windows of the test crop size, the first one at the top left
    crops = bench.real_crops(cfg, model, 5, 'cpu')
    assert crops.shape == (5, 3, 64, 64)
    torch.testing.assert_close(crops[0], images[0][:, :64, :64])
    # whole-image inference: the images, centre-cropped to the size they all have
    model.test_cfg = dict(mode='whole')
    units = bench.real_crops(cfg, model, 3, 'cpu')
    h = min(im.shape[-2] for im in images)
    w = min(im.shape[-1] for im in images)
    assert units.shape == (3, 3, h, w)
    for unit, im in zip(units, images):
        y, x = (im.shape[-2] - h) // 2, (im.shape[-1] - w) // 2
        torch.testing.assert_close(unit, im[:, y:y + h, x:x + w])
    assert 'centre-cropped' in capsys.readouterr().out


@pytest.fixture
def restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_benchmark_end_to_end(tiny_setup, tmp_path, capsys, restore_threads):
    bench = load_tool('benchmark')
    # (1 thread: tiny ops + a busy shared CPU make OpenMP barriers the bottleneck)
    out = tmp_path / 'bench.json'
    res = bench.main([tiny_setup['config'], tiny_setup['ckpt'], '--batch-size', '2',
                      '--keep-ratio', '0.5', '--repeats', '2', '--num-crops', '4',
                      '--out', str(out), '--device', 'cpu', '--threads', '1'])
    rows = res['rows']
    assert {(r['batch_size'], r['variant']) for r in rows} == {
        (b, v) for b in (1, 2) for v in ('dense', 'dense+aux', 'pruned')}
    for r in rows:
        assert r['crops_per_s'] > 0 and len(r['times_s']) == 2
        assert r['realization'] == pytest.approx(r['speedup'] / r['gflops_reduction'])
    pruned = [r for r in rows if r['variant'] == 'pruned']
    dims = DToPCostDims.from_config(tiny_setup['model_cfg'])
    dense = dense_flops(dims, (64, 64))
    for r in pruned:
        assert r['keep_frac'] == pytest.approx([1.0, 0.5, 0.25])
        # (tiny dims: the 150-query heads dominate, so compare like with like)
        assert r['gflops'] < dense['backbone_all_heads'] / 1e9
        assert r['gflops_executed'] == pytest.approx(r['gflops'])  # equal counts: no padding
    assert json.loads(out.read_text())['rows'][0]['crop_shape'] == [64, 64]
    assert 'realiz.' in capsys.readouterr().out
    for r in rows:  # dense: backbone + final head; dense+aux: every head on every token
        if r['variant'] != 'pruned':
            assert r['keep_frac'] == [1.0] * 3 and r['gflops_executed'] == r['gflops']
            key = 'backbone_final_head' if r['variant'] == 'dense' else 'backbone_all_heads'
            assert r['gflops'] == pytest.approx(dense[key] / 1e9)
            assert r['heads_run'] == [r['variant'] == 'dense+aux'] * 2 + [True]
    # p0=1 is an alias of dense; --threshold installs ConfidenceThreshold(p0)
    res = bench.main([tiny_setup['config'], tiny_setup['ckpt'], '--batch-sizes', '2',
                      '--variants', 'dense', 'p0=1', 'pruned', '--repeats', '1',
                      '--warmup', '0', '--threshold', '0.5', '--threads', '1'])
    rows = {r['variant']: r for r in res['rows']}
    assert len(rows) == 3 and rows['p0=1']['gflops'] == rows['dense']['gflops']
    assert rows['pruned']['exit_policy'].startswith('ConfidenceThreshold(p0=0.5')


def test_sweep_threshold_end_to_end(tiny_setup, tmp_path):
    sweep = load_tool('sweep_threshold')
    work = tmp_path / 'sweep'
    rows = sweep.main([tiny_setup['config'], tiny_setup['ckpt'], '--thresholds', '0.5',
                       '0.9', '1.0', '--work-dir', str(work)])
    assert [r['p0'] for r in rows] == [0.5, 0.9, 1.0]
    for r in rows:
        assert 'mIoU' in r and r['num_images'] == 3
        assert r['GFLOPs_img'] > 0 and r['s_per_img'] > 0
    # p0 = 1 is dense; lower thresholds prune more
    assert rows[-1]['GFLOPs_reduction_noaux_pct'] == pytest.approx(0.0, abs=1e-9)
    # (at p0 = 1 the idle auxiliary heads are skipped, so compare without them)
    noaux = [r['GFLOPs_img_noaux'] for r in rows]
    assert noaux[0] <= noaux[1] <= noaux[2] and noaux[0] < noaux[2]
    assert rows[-1]['GFLOPs_img'] == pytest.approx(rows[-1]['GFLOPs_img_noaux'])
    for ext in ('csv', 'md', 'png', 'json'):
        assert (work / f'sweep.{ext}').stat().st_size > 0
    with open(work / 'sweep.csv') as f:
        assert len(list(csv.DictReader(f))) == 3
