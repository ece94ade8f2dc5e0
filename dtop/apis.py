"""High-level API, as :mod:`mmseg.apis`: read a config, build a model, segment images.

Every tool and the demo use it, so configs, options and checkpoints are handled
the same way everywhere:

* :func:`load_config`: the one place that reads a config file; applies
  ``--cfg-options``, registers DToP, sets the default scope, checks the pruning
  options (``prune_threshold``, ``keep_topk_per_class``, ``exit_policy``);
* :func:`build_model` (no weights) / :func:`init_model` (checkpoint loaded
  strictly, ``dataset_meta`` and ``model.cfg`` set, eval mode on ``device``);
* :func:`inference_model`: images through the test pipeline and
  ``model.test_step``; ``dtop_stats`` also gets the exit map at the image's size
  and the image's GFLOPs.

``mmseg.apis.MMSegInferencer(model=CONFIG, weights=CKPT)`` works with the DToP
configs too (they set ``default_scope``, ``custom_imports`` and ``DToPVisualizer``).

Example::

    from dtop.apis import inference_model, init_model
    model = init_model('configs/demo/dtop_segvit_vit-t16-8l_1xb8-100_demo-128x128.py',
                       'work_dirs/demo/dtop/iter_100.pth', device='cpu')
    sample = inference_model(model, 'photo.jpg')
    sample.pred_sem_seg.data            # (1, H, W) class indices
    sample.dtop_stats['exit_map_ori']   # (H, W) exit stage of each pixel's token
    sample.dtop_stats['gflops']         # this image's dynamic GFLOPs
"""
import copy
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from mmengine.config import Config

from dtop.utils.config import CfgOptions, default_work_dir, parse_cfg_options
from dtop.utils.model_config import (TTA_MODEL_TYPES, ConfigType, load_config,
                                     num_stages_of, set_prune_threshold,
                                     validate_model_options)

ImageType = Union[str, np.ndarray, Sequence[Union[str, np.ndarray]]]
_LOADERS = ('LoadImageFromFile', 'LoadImageFromNDArray', 'InferencerLoader')
_ANNOTATION_LOADERS = ('LoadAnnotations', 'LoadDepthAnnotation')

__all__ = ['TTA_MODEL_TYPES', 'load_config', 'parse_cfg_options', 'validate_model_options',
           'set_prune_threshold', 'num_stages_of', 'default_work_dir', 'build_model',
           'init_model', 'dataset_meta_from_config', 'build_test_pipeline',
           'prepare_data', 'inference_model', 'add_image_stats']


# -------------------------------------------------------------------------- models
def build_model(cfg: Config, init_weights: bool = False):
    """The segmentor of ``cfg`` (CPU, train mode as built), without a checkpoint.

    Pretrained-weight downloads are switched off (``pretrained``, the backbone's
    ``init_cfg``, a decode head's ``Pretrained`` one); ``cfg`` itself is not changed.

    Args:
        cfg (Config): from :func:`load_config`.
        init_weights (bool): run ``init_weights`` (the model's random
            initialisation) instead of keeping the constructors' defaults.
    """
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS
    model_cfg = copy.deepcopy(cfg.model)
    model_cfg.pop('pretrained', None)
    if (model_cfg.get('backbone') or {}).get('init_cfg') is not None:
        model_cfg.backbone.init_cfg = None
    if ((model_cfg.get('decode_head') or {}).get('init_cfg') or {}).get('type') == 'Pretrained':
        model_cfg.decode_head.init_cfg = None  # (EoMT's query blocks from DINOv2)
    if (model_cfg.get('init_cfg') or {}).get('type') == 'Pretrained':
        model_cfg.init_cfg = None
    init_default_scope(cfg.get('default_scope', 'mmseg'))
    model = MODELS.build(model_cfg)
    if init_weights:
        model.init_weights()
    return model


def init_model(config: ConfigType, checkpoint: Optional[str] = None, device: str = 'cpu',
               cfg_options: CfgOptions = None, *, allow_partial_load: bool = False,
               trust_checkpoint: Optional[bool] = None):
    """A segmentor ready for inference, as ``mmseg.apis.init_model``.

    Args:
        config (str | Path | Config): config file or object (see :func:`load_config`).
        checkpoint (str, optional): weights; read and loaded strictly (a key or
            shape mismatch stops with the first mismatches). Without one the
            model keeps its random initialisation (``init_weights``).
        device (str): e.g. ``'cpu'``, ``'cuda:0'``.
        cfg_options (dict | list[str], optional): ``--cfg-options``.
        allow_partial_load (bool): load a checkpoint whose keys or shapes do not
            all match (a warning lists them), as ``--allow-partial-load``.
        trust_checkpoint (bool, optional): unpickle the checkpoint fully (it can run
            code it carries; ``--trust-checkpoint``). Default: the safe loader of
            :func:`dtop.utils.checkpoint.torch_load_checkpoint` (unless
            :func:`~dtop.utils.checkpoint.set_trust_checkpoint` said otherwise).

    Returns:
        nn.Module: in eval mode on ``device``, with ``model.cfg`` and
        ``model.dataset_meta`` (``classes``, ``palette``: from the checkpoint's
        meta, else the config's dataset, else numbered classes).

    Raises:
        FileNotFoundError: missing config or checkpoint.
        CheckpointError / CheckpointMismatchError: unreadable or unfitting checkpoint.
        NonFiniteError: the checkpoint's weights hold NaN or Inf (the first named).
        OptionError: invalid model options.
    """
    from dtop.utils.checkpoint import load_checkpoint_strict
    cfg = load_config(config, cfg_options, checkpoint=checkpoint)
    model = build_model(cfg, init_weights=checkpoint is None)
    meta = {}
    if checkpoint is not None:
        ckpt = load_checkpoint_strict(model, checkpoint, strict=not allow_partial_load,
                                      trust=trust_checkpoint)
        ckpt_meta = ckpt.get('meta') if isinstance(ckpt.get('meta'), dict) else {}
        if isinstance(ckpt_meta.get('dataset_meta'), dict):
            meta = dict(ckpt_meta['dataset_meta'])
        elif 'CLASSES' in ckpt_meta:  # mmseg 0.x checkpoints
            meta = dict(classes=ckpt_meta['CLASSES'], palette=ckpt_meta.get('PALETTE'))
    num_classes = getattr(getattr(model, 'decode_head', None), 'num_classes', None)
    if not meta.get('classes'):
        meta.update(dataset_meta_from_config(cfg, num_classes))
    elif not meta.get('palette'):
        meta['palette'] = _default_palette(len(meta['classes']))
    model.dataset_meta = meta
    model.cfg = cfg
    return model.to(device).eval()


def _default_palette(num: int) -> List[List[int]]:
    return np.random.default_rng(0).integers(0, 256, (num, 3)).tolist()


def _dataset_metainfo(ds_cfg) -> dict:
    """``METAINFO`` of a dataset config's class, updated by its ``metainfo``."""
    from mmseg.registry import DATASETS
    while isinstance(ds_cfg, dict) and 'pipeline' not in ds_cfg and \
            isinstance(ds_cfg.get('dataset') or (ds_cfg.get('datasets') or [None])[0], dict):
        ds_cfg = ds_cfg.get('dataset') or ds_cfg['datasets'][0]  # dataset wrappers
    if not isinstance(ds_cfg, dict) or not isinstance(ds_cfg.get('type'), str):
        return {}
    cls = DATASETS.get(ds_cfg['type'])
    meta = dict(getattr(cls, 'METAINFO', None) or {})
    meta.update(ds_cfg.get('metainfo') or {})
    return meta


def dataset_meta_from_config(cfg, num_classes: Optional[int] = None) -> dict:
    """``classes`` and ``palette`` of the config's test (else val, train) dataset.

    A dataset whose number of classes differs from ``num_classes`` is passed over;
    the fallback is ``'0' ... 'K-1'`` with a fixed random palette.
    """
    for key in ('test_dataloader', 'val_dataloader', 'train_dataloader'):
        loader = cfg.get(key, None) or {}
        meta = _dataset_metainfo(loader.get('dataset')) if isinstance(loader, dict) else {}
        if meta.get('classes') and num_classes in (None, len(meta['classes'])):
            classes = list(meta['classes'])
            palette = meta.get('palette') or _default_palette(len(classes))
            return dict(classes=classes, palette=[list(c) for c in palette])
    num = int(num_classes or 0)
    return dict(classes=[str(i) for i in range(num)], palette=_default_palette(num))


# ----------------------------------------------------------------------- inference
def build_test_pipeline(cfg, from_ndarray: bool = False):
    """The config's test pipeline for inference (as ``mmseg.apis.inference_model``).

    ``test_pipeline`` (else ``test_dataloader.dataset.pipeline``) without the
    annotation loaders; the first step loads from a file, or from an array with
    ``from_ndarray`` (keeping the loader's arguments). ``cfg`` is not changed.

    Returns:
        Compose: the pipeline.
    """
    from mmengine.dataset import Compose
    pipeline = cfg.get('test_pipeline', None) or cfg.test_dataloader.dataset.pipeline
    steps = [copy.deepcopy(dict(t)) for t in pipeline
             if t.get('type') not in _ANNOTATION_LOADERS]
    loader = 'LoadImageFromNDArray' if from_ndarray else 'LoadImageFromFile'
    if steps and steps[0].get('type') in _LOADERS:
        steps[0]['type'] = loader
    else:
        steps.insert(0, dict(type=loader))
    return Compose(steps)


def prepare_data(images: ImageType, model) -> Tuple[List[dict], bool]:
    """Run each image through :func:`build_test_pipeline` of ``model.cfg``.

    Args:
        images: a path or ``(H, W, 3)`` BGR array (as ``mmcv.imread``), or a list.
        model: with ``cfg`` (see :func:`init_model`).

    Returns:
        tuple: one ``dict(inputs=[...], data_samples=[...])`` batch per image, and
        whether a list was given.
    """
    is_batch = isinstance(images, (list, tuple))
    pipelines = {}
    batches = []
    for img in (images if is_batch else [images]):
        from_array = isinstance(img, np.ndarray)
        if from_array not in pipelines:
            pipelines[from_array] = build_test_pipeline(model.cfg, from_array)
        data = pipelines[from_array](dict(img=img) if from_array else dict(img_path=str(img)))
        batches.append(dict(inputs=[data['inputs']], data_samples=[data['data_samples']]))
    return batches, is_batch


def add_image_stats(model, sample, dims=None):
    """Add the image-level figures to a predicted sample's ``dtop_stats``.

    Adds ``exit_map_ori`` (``(H, W)`` uint8 exit stage of each pixel at the
    original image size; ``exit_map`` stays at the model-input size) and the
    keys of :func:`dtop.evaluation.metrics.image_gflops` (``gflops`` of this
    image, ``gflops_dense``, ...), the numbers ``IoUFlopsMetric`` reports.

    Returns:
        SegDataSample: ``sample`` (changed in place); unchanged without ``dtop_stats``.
    """
    from dtop.evaluation import DToPCostDims
    from dtop.evaluation.metrics import image_gflops
    from dtop.visualization import exit_map_to_original
    stats = sample.metainfo.get('dtop_stats')
    if stats is None:
        return sample
    stats = dict(stats)
    if stats.get('exit_map') is not None:
        stats['exit_map_ori'] = torch.from_numpy(
            exit_map_to_original(stats['exit_map'], sample.metainfo))
    stats.update(image_gflops(stats, dims or DToPCostDims.from_model(model)))
    sample.set_metainfo(dict(dtop_stats=stats))
    return sample


def inference_model(model, images: ImageType):
    """Segment image(s) with ``model`` (from :func:`init_model`), as mmseg's.

    Each image runs through the test pipeline of ``model.cfg`` and
    ``model.test_step`` on its own (images of different sizes are fine).

    Args:
        model: the segmentor, with ``cfg``.
        images: a path or ``(H, W, 3)`` BGR array, or a list of them.

    Returns:
        SegDataSample | list[SegDataSample]: one per image (a list if a list was
        given), with ``pred_sem_seg``, ``seg_logits`` and, for DToP models,
        ``dtop_stats`` completed by :func:`add_image_stats`.
    """
    from mmengine.registry import init_default_scope
    init_default_scope(model.cfg.get('default_scope', 'mmseg'))
    batches, is_batch = prepare_data(images, model)
    dims = None
    results = []
    with torch.no_grad():
        for data in batches:
            sample = model.test_step(data)[0]
            if 'dtop_stats' in sample.metainfo and dims is None:
                from dtop.evaluation import DToPCostDims
                dims = DToPCostDims.from_model(model)
            results.append(add_image_stats(model, sample, dims))
    return results if is_batch else results[0]
