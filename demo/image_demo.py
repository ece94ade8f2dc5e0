"""Segment one image with a DToP model: overlay, token exit map and GFLOPs.

Any image of any size works (the config's test pipeline and slide inference take
care of it). The output picture shows the prediction over the image next to the
exit map (the stage at which each token was finalised), with a legend giving
the share of tokens per exit stage; the GFLOPs of this image (pruned, with and
without the auxiliary heads, and the dense model on the same crops) are printed.

Examples::

    python demo/image_demo.py data/demo/images/validation/demo_validation_00000.jpg \\
        configs/demo/dtop_segvit_vit-t16-8l_1xb8-100_demo-128x128.py \\
        work_dirs/demo/dtop/iter_100.pth --out-file exit_demo.png
    # another p0 at test time (one value for all auxiliary stages, or one each)
    python demo/image_demo.py photo.jpg CONFIG CKPT --threshold 0.8

The checkpoint must fit the config (a key or shape mismatch stops with the first
mismatches; ``--allow-partial-load`` overrides). Images smaller than
``MIN_RENDER_SIDE`` pixels are enlarged (nearest neighbour) for the picture only;
images whose longer side exceeds ``--max-side`` (default 2048 px; 0: no limit) are
downscaled before inference, with a line saying so, which bounds time, memory and
the picture's size.
"""
import argparse
import json
import math
import os
import os.path as osp
import sys
from typing import Dict, List, Optional

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import mmcv  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from dtop.apis import inference_model  # noqa: E402
from dtop.utils.cli import add_partial_load_arg, add_trust_checkpoint_arg  # noqa: E402
from dtop.utils.errors import DataError, DToPUserError, OptionError, run_cli  # noqa: E402

#: the shorter side of the rendered panels is at least this (small images are
#: enlarged with nearest-neighbour sampling so that pixels, titles and legend stay
#: readable); the longer side is capped at ``MAX_RENDER_SIDE``.
MIN_RENDER_SIDE = 256
MAX_RENDER_SIDE = 4096
#: default ``--max-side``: larger images are downscaled before inference (the
#: test pipeline resizes them anyway); the picture stays about 2 x 2048 x 2048.
DEFAULT_MAX_SIDE = 2048
#: smallest accepted ``--max-side`` other than 0 (no limit)
MIN_MAX_SIDE = 64


def _opacity(text: str) -> float:
    """argparse type: a finite number in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'--opacity must be a number in [0, 1], got '
                                         f'{text!r}') from None
    if not (0.0 <= value <= 1.0):  # also rejects nan
        raise argparse.ArgumentTypeError(
            f'--opacity must be in [0, 1] (0 = image only, 1 = colours only), got {text}')
    return value


def _threshold(text: str):
    """argparse type for one p0 value: a number (validated fully in build_model)."""
    if text == 'None':
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f'--threshold values must be numbers in [0, 1] (>= 1 disables pruning), got '
            f'{text!r}') from None


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='DToP single-image inference: segmentation, exit map, GFLOPs')
    parser.add_argument('img', help='image file (any size)')
    parser.add_argument('config', help='model config')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--out-file', default=None,
                        help='output picture (default: <image name>_dtop.png here)')
    parser.add_argument('--threshold', type=_threshold, nargs='+', default=None,
                        help='p0 for the auxiliary stages (one value, or one per stage); '
                        '1.0 disables pruning')
    parser.add_argument('--device', default='cuda:0' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--max-side', type=int, default=DEFAULT_MAX_SIDE,
                        help='downscale the image first so that its longer side is at most '
                        f'this many pixels (default {DEFAULT_MAX_SIDE}; a line says so when it '
                        'does). This bounds the output picture too: two panels side by '
                        'side, each at most MAX_SIDE px on its longer side. 0 keeps the full '
                        'size (a 6000x6000 photo then took 86 s and 7.4 GB of memory; with '
                        '2000: 15 s, 1.6 GB)')
    parser.add_argument('--opacity', type=_opacity, default=0.6,
                        help='opacity of the segmentation colours, in [0, 1]')
    parser.add_argument('--out-json', default=None, help='also write the numbers here')
    add_partial_load_arg(parser)
    parser.add_argument('--precision', choices=['fp32', 'bf16', 'fp16'], default=None,
                        help='inference precision (autocast; default: the config\'s, fp32)')
    add_trust_checkpoint_arg(parser)
    return parser.parse_args(argv)


def build_model(config: str, checkpoint: str, device: str,
                threshold: Optional[List[float]] = None, precision: Optional[str] = None,
                strict: bool = True):
    """Build the segmentor from ``config`` and load ``checkpoint`` (:mod:`dtop.apis`).

    Args:
        config (str): config file (its ``custom_imports`` register DToP).
        checkpoint (str): checkpoint path.
        device (str): e.g. ``'cpu'`` or ``'cuda:0'``.
        threshold (list[float], optional): overrides ``model.prune_threshold``.
        precision (str, optional): overrides ``model.test_cfg.precision``.
        strict (bool): stop when the checkpoint does not fit the model. Default True.

    Returns:
        tuple: ``(model, cfg)``; ``cfg`` is ``model.cfg``.

    Raises:
        FileNotFoundError: missing config or checkpoint.
        CheckpointError / CheckpointMismatchError: unreadable or unfitting checkpoint.
        DToPUserError: an invalid threshold (named).
    """
    from dtop.apis import init_model, load_config, set_prune_threshold
    cfg = load_config(config, checkpoint=checkpoint, precision=precision)
    if threshold is not None:
        try:
            set_prune_threshold(cfg, threshold[0] if len(threshold) == 1 else list(threshold))
        except ValueError as exc:
            raise DToPUserError(f'--threshold: {exc}') from None
    model = init_model(cfg, checkpoint, device=device, allow_partial_load=not strict)
    if not hasattr(model, 'run_stages'):
        raise TypeError(f'{config} does not build a DToP model ({type(model).__name__}); '
                        'exit maps need DToPEncoderDecoder.')
    return model, model.cfg


def image_flops(model, stats: dict) -> Dict[str, float]:
    """GFLOPs of one image from its per-crop token counts.

    Args:
        model: the DToP segmentor.
        stats (dict): the sample's ``dtop_stats``.

    Returns:
        dict: ``gflops`` (pruned, with the auxiliary heads that ran),
        ``gflops_noaux``, ``gflops_dense`` (backbone + final head on all tokens of
        the same crops), ``gflops_dense_allheads``, ``reduction_pct`` (with aux
        heads vs dense), ``num_crops``, ``exit_pct`` (per stage, last = never
        exited). Computed by :func:`dtop.evaluation.metrics.image_gflops`, the
        function behind ``IoUFlopsMetric``, so both report the same numbers (an
        auxiliary head skipped at ``p0 = 1`` costs nothing in either).
    """
    from dtop.evaluation import DToPCostDims
    from dtop.evaluation.metrics import image_gflops
    from dtop.visualization import exit_fractions
    dims = DToPCostDims.from_model(model)
    counts = np.asarray(stats['token_counts'], dtype=np.float64).reshape(-1, dims.num_stages)
    return dict(image_gflops(stats, dims), num_crops=int(counts.shape[0]),
                exit_pct=[float(100 * f) for f in
                          exit_fractions(counts, int(stats['grid_tokens']))])


def render_scale(height: int, width: int, min_side: int = MIN_RENDER_SIDE,
                 max_side: int = MAX_RENDER_SIDE) -> int:
    """Integer enlargement factor for the picture of an ``height x width`` image.

    The shorter side becomes at least ``min_side`` pixels unless that would make
    the longer side exceed ``max_side``; images that are large enough get 1.
    """
    short, long = min(height, width), max(height, width)
    if short >= min_side:
        return 1
    return max(1, min(math.ceil(min_side / short), max_side // long))


def _enlarged_sample(sample, factor: int):
    """A copy of ``sample`` whose prediction is ``factor`` times larger (nearest)."""
    from mmengine.structures import PixelData
    if factor == 1:
        return sample
    big = sample.clone()
    pred = sample.pred_sem_seg.data
    big.pred_sem_seg = PixelData(data=pred.repeat_interleave(factor, -2)
                                 .repeat_interleave(factor, -1))
    return big


def render(model, image_rgb: np.ndarray, sample, opacity: float = 0.6,
           max_side: int = MAX_RENDER_SIDE) -> np.ndarray:
    """Prediction overlay | exit map, with titles and the stage legend (RGB).

    Images whose shorter side is below :data:`MIN_RENDER_SIDE` are enlarged by an
    integer factor (nearest neighbour: every pixel and token stays a sharp square)
    so that the picture and its text are readable, as long as the longer side
    stays within ``max_side``; a 1x1 image works too.
    """
    from mmengine.visualization import Visualizer

    from dtop.apis import dataset_meta_from_config
    from dtop.visualization import DToPVisualizer
    name = 'dtop_image_demo'
    if Visualizer.check_instance_created(name):
        vis = Visualizer.get_instance(name)
    else:
        vis = DToPVisualizer(name=name, alpha=opacity)
    meta = getattr(model, 'dataset_meta', None) or {}
    classes, palette = meta.get('classes'), meta.get('palette')
    if classes is None:  # a model not from dtop.apis.init_model
        meta = dataset_meta_from_config({}, model.decode_head.num_classes)
        classes, palette = meta['classes'], meta['palette']
    vis.dataset_meta = dict(classes=list(classes), palette=[list(c) for c in palette])
    vis.alpha = opacity
    factor = render_scale(*image_rgb.shape[:2], max_side=max_side)
    if factor > 1:
        image_rgb = np.ascontiguousarray(
            image_rgb.repeat(factor, axis=0).repeat(factor, axis=1))
        sample = _enlarged_sample(sample, factor)
    return vis.draw_panels(image_rgb, sample, draw_gt=False)


def _first_image_in(folder: str) -> str:
    """An image file in ``folder`` (searched a few levels deep) for a message."""
    exts = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp')
    for visited, (root, dirs, files) in enumerate(os.walk(folder)):
        for name in sorted(files):
            if name.lower().endswith(exts):
                return f'{osp.join(root, name)}.'
        dirs.sort(key=lambda d: ('image' not in d.lower(), d))  # images/ first
        if visited >= 200:
            break
    return f'{osp.join(folder, "IMAGE.jpg")} (no image file found in it).'


def read_image(path: str) -> np.ndarray:
    """Read ``path`` as a BGR image (as ``LoadImageFromFile``), or name the problem.

    Raises:
        FileNotFoundError: no such file.
        DataError: a directory, empty, not an image, or undecodable.
    """
    from dtop.datasets.checks import inspect_file
    if osp.isdir(path):
        raise DataError(f'image {path} is a directory; pass one image file (jpg, png, ...) '
                        'from it, e.g. ' + _first_image_in(path))
    if not osp.isfile(path):
        raise FileNotFoundError(f'image not found: {path}')
    problem, _, _ = inspect_file(path, 'image')
    if problem:
        raise DataError(f'{problem}; pass a readable image file (jpg, png, ...).')
    try:
        image = mmcv.imread(path)  # BGR, as LoadImageFromFile
    except Exception as exc:  # noqa: BLE001  (cv2.error and friends, named)
        raise DataError(f'cannot decode image {path}: {type(exc).__name__}: {exc}') from exc
    if image is None or image.size == 0:
        raise DataError(f'cannot decode image {path}: the decoder returned nothing.')
    return image


def limit_size(image: np.ndarray, max_side: int) -> np.ndarray:
    """Downscale ``image`` so that its longer side is at most ``max_side`` (0: as is),
    saying so in one line."""
    height, width = image.shape[:2]
    if not max_side or max(height, width) <= max_side:
        return image
    small = mmcv.imrescale(image, max_side / max(height, width))
    print(f'note: image {width}x{height} px downscaled to {small.shape[1]}x{small.shape[0]} '
          f'px (--max-side {max_side}; --max-side 0 keeps the full size: slower, more '
          'memory)', flush=True)
    return small


def main(argv: Optional[List[str]] = None) -> dict:
    args = parse_args(argv)
    if args.max_side != 0 and args.max_side < MIN_MAX_SIDE:
        raise OptionError(f'--max-side must be 0 (no limit) or at least {MIN_MAX_SIDE} px, '
                          f'got {args.max_side}; e.g. --max-side {DEFAULT_MAX_SIDE}.')
    if args.trust_checkpoint:
        from dtop.utils.checkpoint import set_trust_checkpoint
        set_trust_checkpoint(True)
    image = read_image(args.img)
    image = limit_size(image, args.max_side)
    model, _ = build_model(args.config, args.checkpoint, args.device, args.threshold,
                             args.precision, strict=not args.allow_partial_load)
    sample = inference_model(model, image)
    stats = sample.metainfo['dtop_stats']
    flops = image_flops(model, stats)
    drawn = render(model, mmcv.bgr2rgb(image), sample, args.opacity,
                   max_side=min(MAX_RENDER_SIDE, args.max_side or MAX_RENDER_SIDE))
    out_file = args.out_file or (osp.splitext(osp.basename(args.img))[0] + '_dtop.png')
    if osp.dirname(out_file):
        os.makedirs(osp.dirname(out_file), exist_ok=True)
    mmcv.imwrite(mmcv.rgb2bgr(drawn), out_file)

    stages = len(flops['exit_pct'])
    exits = ', '.join(f"after stage {s + 1}: {flops['exit_pct'][s]:.1f}%"
                      for s in range(stages - 1))
    print(f'image {args.img}: {image.shape[1]}x{image.shape[0]} px, '
          f"{flops['num_crops']} crop(s) of {tuple(stats['crop_shape'])}, p0 = "
          f'{model.prune_threshold}')
    print(f"GFLOPs: {flops['gflops']:.3f} with aux heads, {flops['gflops_noaux']:.3f} "
          f"without; dense {flops['gflops_dense']:.3f} (backbone + final head) -> "
          + (f"{flops['reduction_pct']:.1f}% less" if flops['reduction_pct'] >= 0 else
             f"{-flops['reduction_pct']:.1f}% more (the auxiliary heads cost more than "
             'pruning saved)'))
    print(f"tokens exited {exits}; reached the final stage: {flops['exit_pct'][-1]:.1f}%")
    print(f'saved {out_file}')
    result = dict(image=args.img, out_file=out_file, shape=list(image.shape[:2]), **flops)
    if args.out_json:
        with open(args.out_json, 'w', encoding='utf-8') as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == '__main__':
    run_cli(main)
