"""Segment one image with a DToP model: overlay, token exit map and GFLOPs.

Any image of any size works (the config's test pipeline and slide inference take
care of it). The output picture shows the prediction over the image next to the
exit map (the stage at which each token was finalised), with a legend giving
the share of tokens per exit stage; the GFLOPs of this image (pruned, with and
without the auxiliary heads, and the dense model on the same crops) are printed.

Examples::

    python demo/image_demo.py data/demo/images/validation/demo_validation_00000.jpg \\
        configs/demo/dtop_segvit_vit-t16-8l_1xb8-500_demo-128x128.py \\
        work_dirs/demo/dtop/iter_500.pth --out-file exit_demo.png
    # another p0 at test time (one value for all auxiliary stages, or one each)
    python demo/image_demo.py photo.jpg CONFIG CKPT --threshold 0.8
"""
import argparse
import json
import os
import os.path as osp
import sys
from typing import Dict, List, Optional

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from dtop.utils import allow_full_checkpoint_unpickling  # noqa: E402

allow_full_checkpoint_unpickling()

import mmcv  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from mmengine.config import Config  # noqa: E402
from mmengine.dataset import Compose  # noqa: E402


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='DToP single-image inference: segmentation, exit map, GFLOPs')
    parser.add_argument('img', help='image file (any size)')
    parser.add_argument('config', help='model config')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--out-file', default=None,
                        help='output picture (default: <image name>_dtop.png here)')
    parser.add_argument('--threshold', type=float, nargs='+', default=None,
                        help='p0 for the auxiliary stages (one value, or one per stage); '
                        '1.0 disables pruning')
    parser.add_argument('--device', default='cuda:0' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--max-side', type=int, default=None,
                        help='downscale the image first so its longer side is at most this')
    parser.add_argument('--opacity', type=float, default=0.6,
                        help='opacity of the segmentation colours (0..1]')
    parser.add_argument('--out-json', default=None, help='also write the numbers here')
    return parser.parse_args(argv)


def build_model(config: str, checkpoint: str, device: str,
                threshold: Optional[List[float]] = None):
    """Build the segmentor from ``config`` and load ``checkpoint``.

    Args:
        config (str): config file (its ``custom_imports`` register DToP).
        checkpoint (str): checkpoint path.
        device (str): e.g. ``'cpu'`` or ``'cuda:0'``.
        threshold (list[float], optional): overrides ``model.prune_threshold``.

    Returns:
        tuple: ``(model, cfg)``.
    """
    from mmseg.apis import init_model
    if not osp.isfile(config):
        raise FileNotFoundError(f'config not found: {config}')
    if not osp.isfile(checkpoint):
        raise FileNotFoundError(f'checkpoint not found: {checkpoint}')
    cfg = Config.fromfile(config)
    if threshold is not None:
        cfg.model.prune_threshold = threshold[0] if len(threshold) == 1 else list(threshold)
    model = init_model(cfg, checkpoint, device=device)
    if not hasattr(model, 'run_stages'):
        raise TypeError(f'{config} does not build a DToP model ({type(model).__name__}); '
                        'exit maps need DToPEncoderDecoder.')
    return model, cfg


def _test_pipeline(cfg: Config) -> Compose:
    pipeline = cfg.get('test_pipeline', None) or cfg.test_dataloader.dataset.pipeline
    steps = [dict(t) for t in pipeline if t.get('type') != 'LoadAnnotations']
    if steps[0].get('type') in ('LoadImageFromFile', 'LoadImageFromNDArray'):
        steps[0] = dict(type='LoadImageFromNDArray')
    else:
        steps.insert(0, dict(type='LoadImageFromNDArray'))
    return Compose(steps)


def segment(model, cfg: Config, image_bgr: np.ndarray):
    """Run the test pipeline and the model on one BGR image.

    Returns:
        SegDataSample: with ``pred_sem_seg`` and metainfo ``dtop_stats``.
    """
    data = _test_pipeline(cfg)(dict(img=image_bgr))
    batch = dict(inputs=[data['inputs']], data_samples=[data['data_samples']])
    with torch.no_grad():
        return model.test_step(batch)[0]


def image_flops(model, stats: dict) -> Dict[str, float]:
    """GFLOPs of one image from its per-crop token counts.

    Args:
        model: the DToP segmentor.
        stats (dict): the sample's ``dtop_stats``.

    Returns:
        dict: ``gflops`` (pruned, with the auxiliary heads), ``gflops_noaux``,
        ``gflops_dense`` (backbone + final head on all tokens of the same crops),
        ``gflops_dense_allheads``, ``reduction_pct`` (with aux heads vs dense),
        ``num_crops``, ``exit_pct`` (per stage, last = never exited).
    """
    from dtop.evaluation.flops import DToPCostDims, model_flops
    from dtop.visualization import exit_fractions
    dims = DToPCostDims.from_model(model)
    counts = np.asarray(stats['token_counts'], dtype=np.float64).reshape(-1, dims.num_stages)
    crop_shape = tuple(int(v) for v in stats['crop_shape'])
    N = int(stats['grid_tokens'])
    cost = model_flops(dims, counts, crop_shape, grid_tokens=N)
    dense = model_flops(dims, np.full_like(counts, N), crop_shape, grid_tokens=N)
    g = 1e-9
    out = dict(gflops=float(cost['backbone_all_heads'].sum() * g),
               gflops_noaux=float(cost['backbone_final_head'].sum() * g),
               gflops_dense=float(dense['backbone_final_head'].sum() * g),
               gflops_dense_allheads=float(dense['backbone_all_heads'].sum() * g),
               num_crops=int(counts.shape[0]),
               exit_pct=[float(100 * f) for f in exit_fractions(counts, N)])
    out['reduction_pct'] = 100.0 * (1.0 - out['gflops'] / out['gflops_dense'])
    return out


def render(model, image_rgb: np.ndarray, sample, opacity: float = 0.6) -> np.ndarray:
    """Prediction overlay | exit map, with titles and the stage legend (RGB)."""
    from mmengine.visualization import Visualizer

    from dtop.visualization import DToPVisualizer
    name = 'dtop_image_demo'
    if name in Visualizer._instance_dict:
        vis = Visualizer.get_instance(name)
    else:
        vis = DToPVisualizer(name=name, alpha=opacity)
    meta = getattr(model, 'dataset_meta', None) or {}
    classes, palette = meta.get('classes'), meta.get('palette')
    if classes is None:
        num = model.decode_head.num_classes
        classes = [str(i) for i in range(num)]
        rng = np.random.default_rng(0)
        palette = rng.integers(0, 256, (num, 3)).tolist()
    vis.dataset_meta = dict(classes=list(classes), palette=[list(c) for c in palette])
    return vis.draw_panels(image_rgb, sample, draw_gt=False)


def main(argv: Optional[List[str]] = None) -> dict:
    args = parse_args(argv)
    if not osp.isfile(args.img):
        raise FileNotFoundError(f'image not found: {args.img}')
    image = mmcv.imread(args.img)  # BGR, as LoadImageFromFile
    if image is None:
        raise ValueError(f'cannot read image {args.img}')
    if args.max_side and max(image.shape[:2]) > args.max_side:
        image = mmcv.imrescale(image, args.max_side / max(image.shape[:2]))
    model, cfg = build_model(args.config, args.checkpoint, args.device, args.threshold)
    sample = segment(model, cfg, image)
    stats = sample.metainfo['dtop_stats']
    flops = image_flops(model, stats)
    drawn = render(model, mmcv.bgr2rgb(image), sample, args.opacity)
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
          f"{flops['reduction_pct']:.1f}% less")
    print(f"tokens exited {exits}; reached the final stage: {flops['exit_pct'][-1]:.1f}%")
    print(f'saved {out_file}')
    result = dict(image=args.img, out_file=out_file, shape=list(image.shape[:2]), **flops)
    if args.out_json:
        with open(args.out_json, 'w', encoding='utf-8') as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == '__main__':
    main()
