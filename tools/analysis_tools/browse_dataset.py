"""Look at what the model is fed: samples of a split after the config's pipeline.

Each output picture is ``image | image with its labels`` (class colours of the
dataset's palette, class names written on the regions), as it comes out of the
config's pipeline, so the random resize/crop/flip of the training pipeline and the
label mapping (``reduce_zero_label``: value 0 becomes the ignore index, shown
uncoloured) are what you see. Also prints how many pixels of each class were seen.

Examples::

    python tools/analysis_tools/browse_dataset.py \\
        configs/demo/segvit_vit-t16-8l_1xb8-1200_demo-128x128.py \\
        --output-dir work_dirs/browse --split train --num 20
    # the test images at test-time size:
    python tools/analysis_tools/browse_dataset.py CONFIG --output-dir OUT --split test
"""
import argparse
import os
import os.path as osp
import sys
from typing import List, Optional

import numpy as np

ROOT = osp.abspath(osp.join(osp.dirname(__file__), '..', '..'))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    from dtop.utils.cli import add_cfg_options_arg, tool_parser
    parser = tool_parser('Save samples of a dataset split after the pipeline, with their '
                         'labels drawn.', __doc__)
    parser.add_argument('config', help='config file')
    parser.add_argument('--output-dir', required=True, help='where the pictures go')
    parser.add_argument('--split', choices=['train', 'val', 'test'], default='train',
                        help='dataloader of the config to browse (default: train, with '
                        'its random augmentation)')
    parser.add_argument('--num', type=int, default=None,
                        help='samples to save (default: the whole split)')
    parser.add_argument('--opacity', type=float, default=0.5,
                        help='opacity of the label colours, in [0, 1] (default 0.5)')
    parser.add_argument('--show', action='store_true',
                        help='also open each picture in a window (needs a display)')
    add_cfg_options_arg(parser)
    args = parser.parse_args(argv)
    if args.num is not None and args.num < 1:
        parser.error(f'--num must be >= 1, got {args.num}')
    if not 0.0 <= args.opacity <= 1.0:
        parser.error(f'--opacity must be in [0, 1], got {args.opacity}')
    return args


def main(argv: Optional[List[str]] = None) -> dict:
    import mmcv
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmengine.utils import ProgressBar
    from mmseg.registry import DATASETS
    from mmseg.visualization import SegLocalVisualizer

    import dtop  # noqa: F401  (registers the DToP dataset types)
    from dtop.utils.errors import DataError
    args = parse_args(argv)
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    init_default_scope(cfg.get('default_scope', 'mmseg'))
    loader_cfg = cfg.get(f'{args.split}_dataloader')
    if not loader_cfg:
        raise DataError(f'{args.config} has no {args.split}_dataloader')
    dataset = DATASETS.build(loader_cfg.dataset)
    classes = list(dataset.metainfo['classes'])
    total = len(dataset) if args.num is None else min(args.num, len(dataset))
    if total == 0:
        raise DataError(f'the {args.split} split of {args.config} has no images '
                        f'(data_root {loader_cfg.dataset.get("data_root")})')
    vis = SegLocalVisualizer(name='browse_dataset', alpha=args.opacity)
    vis.set_dataset_meta(classes=classes, palette=dataset.metainfo.get('palette'))
    os.makedirs(args.output_dir, exist_ok=True)
    ignore_index = int(getattr(dataset, 'ignore_index', 255))
    pixels = np.zeros(len(classes) + 2, np.int64)  # classes, ignored, out of range
    progress = ProgressBar(total)
    for i in range(total):
        item = dataset[i]
        sample = item['data_samples']
        img = item['inputs'].permute(1, 2, 0).numpy()[..., ::-1].copy()  # BGR -> RGB
        gt = sample.gt_sem_seg.data.squeeze(0).numpy().astype(np.int64)
        counts = np.bincount(gt[gt < len(classes)].ravel(), minlength=len(classes))
        pixels[:len(classes)] += counts[:len(classes)]
        pixels[-2] += int((gt == ignore_index).sum())
        pixels[-1] += int(((gt >= len(classes)) & (gt != ignore_index)).sum())
        vis.add_datasample('sample', img, sample, draw_gt=True, draw_pred=False,
                           with_labels=True)
        drawn = vis.get_image()
        picture = np.concatenate([img, np.full((img.shape[0], 4, 3), 255, np.uint8),
                                  drawn], axis=1)
        stem = osp.splitext(osp.basename(sample.img_path))[0]
        out = osp.join(args.output_dir, f'{i:05d}_{stem}.png')
        mmcv.imwrite(mmcv.rgb2bgr(picture), out)
        if args.show:
            vis.show(picture, win_name=stem)
        progress.update()
    sys.stdout.write('\n')
    labelled = pixels[:len(classes)].sum()
    seen = [(classes[c], int(pixels[c])) for c in np.argsort(-pixels[:len(classes)])
            if pixels[c] > 0]
    print(f'{total} samples of the {args.split} split -> {args.output_dir}')
    print('pixels per class: ' + ', '.join(
        f'{name} {100 * n / max(labelled, 1):.1f} %' for name, n in seen))
    print(f'ignored (value {ignore_index}): {int(pixels[-2])} pixels; classes never seen: '
          f'{len(classes) - len(seen)} of {len(classes)}')
    if pixels[-1]:
        print(f'warning: {int(pixels[-1])} pixels have labels outside [0, {len(classes)}) '
              f'and != {ignore_index} (tools/misc/check_dataset.py names the files)')
    return dict(num=total, pixels=dict(seen), ignored=int(pixels[-2]),
                out_of_range=int(pixels[-1]))


if __name__ == '__main__':
    from dtop.utils.errors import run_cli
    run_cli(main)
