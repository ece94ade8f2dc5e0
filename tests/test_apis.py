"""dtop.apis (load_config / init_model / inference_model) and mmseg's MMSegInferencer
on a tiny DToP config and checkpoint written to disk."""
import os.path as osp

import cv2
import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.dataset import Compose
from mmseg.registry import MODELS

from dtop.apis import (init_model, inference_model, load_config, parse_cfg_options,
                       set_prune_threshold, validate_model_options)
from dtop.evaluation import DToPCostDims, model_flops
from dtop.utils.errors import CheckpointMismatchError, OptionError
from tests.utils.tiny_models import tiny_dtop_model_cfg

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
RUNTIME = osp.join(ROOT, 'configs', '_base_', 'default_runtime.py')
NUM_CLASSES = 10  # as DToPDemoDataset, the config's test dataset
CLASSES = [f'class_{i}' for i in range(NUM_CLASSES)]
#: the tiny config's test resize (w, h): a 50x70 image becomes 96x134, padded to 96x144
RESIZE = (160, 96)
#: an untrained model's confidences are about 0.28: with p0 = 0.25 all tokens but the
#: k = 2 most confident of each class exit after the first stage
P0, TOPK = 0.25, 2


def _model_cfg(**kw):
    cfg = tiny_dtop_model_cfg(num_classes=NUM_CLASSES, prune_threshold=P0,
                              keep_topk_per_class=TOPK, **kw)
    cfg['data_preprocessor']['test_cfg'] = dict(size_divisor=16)
    return cfg


def write_config(path, model_cfg) -> str:
    """A config like the shipped ones: the runtime base (scope, custom_imports,
    DToPVisualizer), a model, a test pipeline and a test dataloader."""
    path.write_text(
        f'_base_ = [{RUNTIME!r}]\n'
        f'model = {model_cfg!r}\n'
        'test_pipeline = [\n'
        "    dict(type='LoadImageFromFile'),\n"
        f"    dict(type='Resize', scale={RESIZE!r}, keep_ratio=True),\n"
        "    dict(type='LoadAnnotations'),\n"
        "    dict(type='PackSegInputs'),\n"
        ']\n'
        'test_dataloader = dict(batch_size=1, num_workers=0, dataset=dict(\n'
        "    type='DToPDemoDataset', data_root='unused', pipeline=test_pipeline))\n")
    return str(path)


def save_checkpoint(path, model_cfg, seed=0, meta=True) -> str:
    torch.manual_seed(seed)
    model = MODELS.build(model_cfg)
    model.init_weights()
    ckpt = dict(state_dict=model.state_dict())
    if meta:
        palette = np.random.default_rng(seed).integers(0, 256, (NUM_CLASSES, 3)).tolist()
        ckpt['meta'] = dict(dataset_meta=dict(classes=CLASSES, palette=palette))
    torch.save(ckpt, str(path))
    return str(path)


def write_image(path, h, w, seed) -> str:
    img = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    cv2.imwrite(str(path), img)
    return str(path)


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('apis')
    model_cfg = _model_cfg()
    return dict(tmp=tmp, model_cfg=model_cfg,
                config=write_config(tmp / 'tiny_dtop.py', model_cfg),
                ckpt=save_checkpoint(tmp / 'tiny.pth', model_cfg),
                image=write_image(tmp / 'img.png', 50, 70, seed=1))


@pytest.fixture(scope='module')
def model(tiny):
    return init_model(tiny['config'], tiny['ckpt'], device='cpu')


# --------------------------------------------------------------------- load_config
def test_load_config_applies_options_and_names_bad_values(tiny):
    cfg = load_config(tiny['config'], ['model.prune_threshold=0.5'], precision='bf16')
    assert cfg.model.prune_threshold == 0.5 and cfg.model.test_cfg.precision == 'bf16'
    assert load_config(tiny['config'], {'model.prune_threshold': 0.7}).model.prune_threshold \
        == 0.7
    with pytest.raises(FileNotFoundError, match='config file not found: nope.py'):
        load_config('nope.py')
    with pytest.raises(FileNotFoundError, match='checkpoint not found: none.pth'):
        load_config(tiny['config'], checkpoint='none.pth')
    for value, message in [('nan', 'got nan; a NaN threshold'),
                           ('abc', "got the string 'abc'"),
                           ('[0.5,0.5,0.5,0.5]', 'got 4 values')]:
        with pytest.raises(OptionError, match=message):
            load_config(tiny['config'], [f'model.prune_threshold={value}'])
    with pytest.raises(OptionError, match='keep_topk_per_class'):
        load_config(tiny['config'], ['model.keep_topk_per_class=-1'])
    with pytest.raises(OptionError, match='expected KEY=VALUE'):
        parse_cfg_options(['model.prune_threshold'])
    # a Config object is copied, not changed
    cfg = Config.fromfile(tiny['config'])
    load_config(cfg, ['model.prune_threshold=0.9'])
    assert cfg.model.prune_threshold == P0


def test_exit_policy_and_threshold_override(tiny):
    cfg = load_config(tiny['config'], ["model.exit_policy.type=FixedKeepRatio",
                                       'model.exit_policy.ratio=0.5'])
    policy = validate_model_options(cfg)
    assert type(policy).__name__ == 'FixedKeepRatio' and policy.prunes
    with pytest.raises(OptionError, match='has no threshold'):
        set_prune_threshold(cfg, 0.9)
    cfg = load_config(tiny['config'])
    assert set_prune_threshold(cfg, [0.8, None]) == [0.8, None]
    assert cfg.model.prune_threshold == [0.8, None]
    assert not validate_model_options(load_config(tiny['config'],
                                                  ['model.prune_threshold=1.0'])).prunes


# ---------------------------------------------------------------------- init_model
def test_init_model_loads_the_checkpoint_and_its_meta(tiny, model):
    assert not model.training and model.cfg.model.prune_threshold == P0
    saved = torch.load(tiny['ckpt'], map_location='cpu', weights_only=True)
    own = model.state_dict()
    assert set(own) == set(saved['state_dict'])
    assert all(torch.equal(own[k], v) for k, v in saved['state_dict'].items())
    assert model.dataset_meta['classes'] == CLASSES
    assert model.dataset_meta['palette'] == saved['meta']['dataset_meta']['palette']


def test_init_model_meta_from_the_config_dataset(tiny):
    from dtop.datasets import DEMO_CLASSES
    bare = save_checkpoint(tiny['tmp'] / 'bare.pth', tiny['model_cfg'], meta=False)
    model = init_model(tiny['config'], bare, cfg_options=['model.prune_threshold=0.9'])
    assert list(model.dataset_meta['classes']) == list(DEMO_CLASSES)
    assert len(model.dataset_meta['palette']) == NUM_CLASSES
    assert model.prune_threshold == [0.9, 0.9]


def test_init_model_refuses_a_checkpoint_of_another_model(tiny):
    other = save_checkpoint(tiny['tmp'] / 'other.pth', _model_cfg(embed_dims=48))
    with pytest.raises(CheckpointMismatchError, match=r'(?s)does not fit the model: .*'
                       r'shape mismatches \(checkpoint vs model\): backbone\.'):
        init_model(tiny['config'], other)
    model = init_model(tiny['config'], other, allow_partial_load=True)  # warns only
    assert model.dataset_meta['classes'] == CLASSES


# ----------------------------------------------------------------- inference_model
def _predict_directly(model, image_path):
    """``model.predict`` on the image run through the config's test steps by hand."""
    pipeline = Compose([dict(type='LoadImageFromFile'),
                        dict(type='Resize', scale=RESIZE, keep_ratio=True),
                        dict(type='PackSegInputs')])
    data = pipeline(dict(img_path=image_path))
    batch = model.data_preprocessor(dict(inputs=[data['inputs']],
                                         data_samples=[data['data_samples']]), False)
    with torch.no_grad():
        return model.predict(batch['inputs'], batch['data_samples'])[0]


def test_inference_model_equals_predict(tiny, model):
    sample = inference_model(model, tiny['image'])
    ref = _predict_directly(model, tiny['image'])
    assert torch.equal(sample.pred_sem_seg.data, ref.pred_sem_seg.data)
    assert torch.allclose(sample.seg_logits.data, ref.seg_logits.data)
    stats, ref_stats = sample.metainfo['dtop_stats'], ref.metainfo['dtop_stats']
    assert torch.equal(stats['token_counts'], ref_stats['token_counts'])
    assert torch.equal(stats['exit_map'], ref_stats['exit_map'])
    # the prediction and the exit map are at the image's size (50x70); the model
    # ran on the resized, padded 96x144 input
    assert tuple(sample.pred_sem_seg.data.shape) == (1, 50, 70)
    assert tuple(stats['exit_map'].shape) == (96, 144)
    exit_map = stats['exit_map_ori']
    assert tuple(exit_map.shape) == (50, 70) and exit_map.dtype == torch.uint8
    S = model.backbone.num_stages
    assert int(exit_map.max()) < S and int(stats['exit_map'].min()) == 0, \
        f'p0 = {P0} should let tokens of this untrained model exit after stage 1'
    assert set(exit_map.unique().tolist()) <= set(stats['exit_map'].unique().tolist())


def test_inference_model_takes_arrays_and_lists_of_any_size(tiny, model):
    from_file = inference_model(model, tiny['image'])
    from_array = inference_model(model, cv2.imread(tiny['image']))
    assert torch.equal(from_file.pred_sem_seg.data, from_array.pred_sem_seg.data)
    other = write_image(tiny['tmp'] / 'big.jpg', 120, 90, seed=2)
    samples = inference_model(model, [tiny['image'], other])
    assert isinstance(samples, list) and len(samples) == 2
    assert tuple(samples[1].pred_sem_seg.data.shape) == (1, 120, 90)
    assert tuple(samples[1].metainfo['dtop_stats']['exit_map_ori'].shape) == (120, 90)
    assert torch.equal(samples[0].pred_sem_seg.data, from_file.pred_sem_seg.data)


def _cost(dims, stats, dense=False):
    counts = np.asarray(stats['token_counts']).reshape(-1, dims.num_stages)
    N = int(stats['grid_tokens'])
    if dense:
        counts = np.full_like(counts, N)
        return model_flops(dims, counts, stats['crop_shape'], grid_tokens=N)
    return model_flops(dims, counts, stats['crop_shape'], grid_tokens=N,
                       heads_run=stats['heads_run'])


def test_gflops_are_the_cost_model_of_the_returned_counts(tiny, model):
    stats = inference_model(model, tiny['image']).metainfo['dtop_stats']
    dims = DToPCostDims.from_model(model)
    cost, dense = _cost(dims, stats), _cost(dims, stats, dense=True)
    assert stats['gflops'] == pytest.approx(1e-9 * cost['backbone_all_heads'].sum())
    assert stats['gflops_noaux'] == pytest.approx(1e-9 * cost['backbone_final_head'].sum())
    assert stats['gflops_dense'] == pytest.approx(1e-9 * dense['backbone_final_head'].sum())
    counts = np.asarray(stats['token_counts'])
    assert counts[0, -1] < stats['grid_tokens'], 'tokens should have exited'
    assert stats['gflops_noaux'] < stats['gflops_dense']
    assert stats['reduction_pct'] == pytest.approx(
        100 * (1 - stats['gflops'] / stats['gflops_dense']))


def test_without_pruning_gflops_are_dense(tiny):
    model = init_model(tiny['config'], tiny['ckpt'],
                       cfg_options=['model.prune_threshold=1.0'])
    stats = inference_model(model, tiny['image']).metainfo['dtop_stats']
    assert stats['heads_run'] == (False, False, True)  # idle auxiliary heads skipped
    assert np.all(np.asarray(stats['token_counts']) == stats['grid_tokens'])
    assert stats['gflops'] == pytest.approx(stats['gflops_dense'])
    assert stats['reduction_pct'] == pytest.approx(0.0, abs=1e-9)
    assert int(stats['exit_map_ori'].min()) == model.backbone.num_stages - 1


# ------------------------------------------------------------------ MMSegInferencer
def test_mmseg_inferencer_runs_a_dtop_config(tiny, model):
    from mmseg.apis import MMSegInferencer
    inferencer = MMSegInferencer(model=tiny['config'], weights=tiny['ckpt'], device='cpu')
    assert inferencer.model.dataset_meta['classes'] == CLASSES
    sample = inferencer(tiny['image'], return_datasamples=True)
    ours = inference_model(model, tiny['image'])
    assert torch.equal(sample.pred_sem_seg.data, ours.pred_sem_seg.data)
    assert torch.equal(sample.metainfo['dtop_stats']['token_counts'],
                       ours.metainfo['dtop_stats']['token_counts'])
    # mask + visualisation (DToPVisualizer adds the exit-map panel)
    out = inferencer(tiny['image'], return_vis=True)
    assert np.array_equal(out['predictions'], ours.pred_sem_seg.data[0].numpy())
    assert out['visualization'].shape[0] >= 50 and out['visualization'].shape[1] > 2 * 70
