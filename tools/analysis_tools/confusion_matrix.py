"""Confusion matrix of a trained model on a dataset split (rows: ground truth).

Runs the model of CONFIG with CHECKPOINT over the test (or val) split, exactly as
``tools/test.py`` does (same pipeline, slide inference, pruning threshold), and counts
every labelled pixel by (true class, predicted class); pixels with the ignore index
are skipped. Writes to ``--out-dir``:

* ``confusion_matrix.png``: the matrix normalised per true class (each row sums to
  100 %), classes sorted as in the dataset (``--top-k`` keeps the most confused ones);
* ``confusion_matrix.csv``: the same normalised matrix with class names;
* ``confusion_matrix.json``: raw pixel counts, the normalised matrix, the class
  names and the per-class IoU/accuracy derived from the counts.

Examples::

    python tools/analysis_tools/confusion_matrix.py \\
        configs/demo/dtop_segvit_vit-t16-8l_1xb8-100_demo-128x128.py \\
        work_dirs/demo/dtop/iter_100.pth --out-dir work_dirs/demo/confusion
    # the same model without pruning, on 20 images:
    python tools/analysis_tools/confusion_matrix.py CONFIG CKPT --out-dir OUT \\
        --num-images 20 --cfg-options model.prune_threshold=1.0
"""
import argparse
import csv
import json
import os
import os.path as osp
import sys
from typing import Dict, List, Optional, Sequence

import numpy as np

ROOT = osp.abspath(osp.join(osp.dirname(__file__), '..', '..'))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    from dtop.utils.cli import add_cfg_options_arg, add_trust_checkpoint_arg, tool_parser
    parser = tool_parser('Confusion matrix (PNG + normalised matrix files) of a model on the '
                         'test or val split.', __doc__)
    parser.add_argument('config', help='config file')
    parser.add_argument('checkpoint', help='checkpoint file (loaded strictly)')
    parser.add_argument('--out-dir', required=True, help='where the PNG, CSV and JSON go')
    parser.add_argument('--split', choices=['test', 'val'], default='test',
                        help='dataloader of the config to use (default: test)')
    parser.add_argument('--num-images', type=int, default=None,
                        help='only the first N images (default: all)')
    parser.add_argument('--top-k', type=int, default=None,
                        help='plot only the K classes with the most misclassified pixels '
                        '(the files keep all classes)')
    parser.add_argument('--device', default=None,
                        help='cpu or cuda (default: cuda when available)')
    add_cfg_options_arg(parser, 'override config settings (mmengine syntax), e.g. '
                        'model.prune_threshold=0.9')
    add_trust_checkpoint_arg(parser)
    args = parser.parse_args(argv)
    if args.num_images is not None and args.num_images < 1:
        parser.error(f'--num-images must be >= 1, got {args.num_images}')
    if args.top_k is not None and args.top_k < 2:
        parser.error(f'--top-k must be >= 2, got {args.top_k}')
    return args


def accumulate(cm: np.ndarray, pred: np.ndarray, gt: np.ndarray,
               ignore_index: int = 255) -> int:
    """Add one image to the confusion matrix ``cm`` (in place).

    Args:
        cm (np.ndarray): ``(K, K)`` int64 counts, rows = ground truth.
        pred (np.ndarray): ``(H, W)`` predicted class indices.
        gt (np.ndarray): ``(H, W)`` ground truth; ``ignore_index`` is skipped.
        ignore_index (int): label value that is not scored.

    Returns:
        int: pixels whose label is neither a class nor ``ignore_index`` (not counted).
    """
    k = cm.shape[0]
    gt = gt.astype(np.int64).ravel()
    pred = pred.astype(np.int64).ravel()
    valid = gt != ignore_index
    in_range = valid & (gt >= 0) & (gt < k)
    cm += np.bincount(k * gt[in_range] + np.clip(pred[in_range], 0, k - 1),
                      minlength=k * k).reshape(k, k)
    return int((valid & ~in_range).sum())


def normalize_rows(cm: np.ndarray) -> np.ndarray:
    """Per-true-class percentages (rows sum to 100; classes absent from GT stay 0)."""
    rows = cm.sum(axis=1, keepdims=True).astype(np.float64)
    return np.divide(100.0 * cm, rows, out=np.zeros(cm.shape), where=rows > 0)


def per_class_scores(cm: np.ndarray) -> Dict[str, List[Optional[float]]]:
    """IoU and accuracy (%) per class from the counts (``None`` when undefined)."""
    tp = np.diag(cm).astype(np.float64)
    gt, pred = cm.sum(1), cm.sum(0)
    union = gt + pred - tp
    iou = [100 * t / u if u > 0 else None for t, u in zip(tp, union)]
    acc = [100 * t / g if g > 0 else None for t, g in zip(tp, gt)]
    return dict(IoU=iou, Acc=acc)


def plot(norm: np.ndarray, classes: Sequence[str], path: str, title: str,
         top_k: Optional[int] = None, cm: Optional[np.ndarray] = None) -> List[int]:
    """Draw the normalised matrix to ``path``; return the plotted class indices."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    idx = list(range(len(classes)))
    if top_k is not None and top_k < len(classes) and cm is not None:
        wrong = cm.sum(1) - np.diag(cm)
        idx = sorted(np.argsort(-wrong, kind='stable')[:top_k].tolist())
    sub = norm[np.ix_(idx, idx)]
    names = [classes[i] for i in idx]
    n = len(idx)
    size = min(max(4.0, 0.45 * n + 2.5), 40.0)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    im = ax.imshow(sub, cmap='Blues', vmin=0, vmax=100)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label='% of the true class')
    ax.set_xticks(range(n), names, rotation=90 if n > 8 else 45, ha='center' if n > 8
                  else 'right', fontsize=max(4, 10 - n // 20))
    ax.set_yticks(range(n), names, fontsize=max(4, 10 - n // 20))
    ax.set_xlabel('predicted class')
    ax.set_ylabel('true class')
    ax.set_title(title)
    if n <= 30:
        for i in range(n):
            for j in range(n):
                if sub[i, j] >= 0.05:
                    ax.text(j, i, f'{sub[i, j]:.1f}' if sub[i, j] < 99.95 else '100',
                            ha='center', va='center', fontsize=7,
                            color='white' if sub[i, j] > 50 else 'black')
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return idx


def build(cfg_path: str, checkpoint: str, cfg_options: Optional[dict], device: str,
          trust_checkpoint: bool = False):
    """Config and model (checkpoint loaded strictly and safely, eval mode) for
    inference, through :func:`dtop.apis.init_model`."""
    from dtop.apis import init_model
    model = init_model(cfg_path, checkpoint, device=device, cfg_options=cfg_options,
                       trust_checkpoint=trust_checkpoint or None)
    return model.cfg, model


def main(argv: Optional[List[str]] = None) -> dict:
    import torch
    from mmengine.runner import Runner
    from mmengine.utils import ProgressBar

    from dtop.utils.errors import DataError
    args = parse_args(argv)
    device = args.device or ('cuda' if torch.cuda.is_available() else 'cpu')
    cfg, model = build(args.config, args.checkpoint, args.cfg_options, device,
                       args.trust_checkpoint)
    loader_cfg = cfg.get(f'{args.split}_dataloader')
    if not loader_cfg:
        raise DataError(f'{args.config} has no {args.split}_dataloader; use --split '
                        f'{"val" if args.split == "test" else "test"}')
    loader = Runner.build_dataloader(loader_cfg)
    dataset = loader.dataset
    classes = list(dataset.metainfo['classes'])
    ignore_index = int(getattr(dataset, 'ignore_index', 255))
    total = len(dataset) if args.num_images is None else min(args.num_images, len(dataset))
    if total == 0:
        raise DataError(f'the {args.split} split of {args.config} has no images '
                        f'(data_root {loader_cfg.dataset.get("data_root")})')
    cm = np.zeros((len(classes), len(classes)), np.int64)
    out_of_range, seen = 0, 0
    progress = ProgressBar(total)
    with torch.no_grad():
        for data in loader:
            for sample in model.test_step(data):
                if seen == total:
                    break
                pred = sample.pred_sem_seg.data.squeeze(0).cpu().numpy()
                gt = sample.gt_sem_seg.data.squeeze(0).cpu().numpy()
                out_of_range += accumulate(cm, pred, gt, ignore_index)
                seen += 1
                progress.update()
            if seen == total:
                break
    sys.stdout.write('\n')

    os.makedirs(args.out_dir, exist_ok=True)
    norm = normalize_rows(cm)
    scores = per_class_scores(cm)
    png = osp.join(args.out_dir, 'confusion_matrix.png')
    title = f'{osp.basename(args.config)}\n{seen} images, {args.split} split'
    plot(norm, classes, png, title, args.top_k, cm)
    with open(osp.join(args.out_dir, 'confusion_matrix.csv'), 'w', newline='',
              encoding='utf-8') as f:
        w = csv.writer(f)
        w.writerow(['true \\ predicted (% of the true class)'] + classes)
        for name, row in zip(classes, norm):
            w.writerow([name] + [f'{v:.4f}' for v in row])
    valid_iou = [v for v in scores['IoU'] if v is not None]
    result = dict(config=args.config, checkpoint=args.checkpoint, split=args.split,
                  num_images=seen, classes=classes, ignore_index=ignore_index,
                  counts=cm.tolist(), normalized=norm.round(6).tolist(),
                  per_class=scores,
                  mIoU=float(np.mean(valid_iou)) if valid_iou else None,
                  pixels_out_of_range=out_of_range)
    with open(osp.join(args.out_dir, 'confusion_matrix.json'), 'w', encoding='utf-8') as f:
        json.dump(result, f, indent=1)
    if out_of_range:
        print(f'warning: {out_of_range} labelled pixels had values outside '
              f'[0, {len(classes)}) and != {ignore_index}; they are not counted '
              '(tools/misc/check_dataset.py lists the files)')
    wrong = cm.sum(1) - np.diag(cm)
    worst = [i for i in np.argsort(-wrong, kind='stable')[:3] if wrong[i] > 0]
    for i in worst:
        j = int(np.argmax(np.where(np.arange(len(classes)) == i, -1, cm[i])))
        print(f'most confused: {classes[i]} -> {classes[j]} ({norm[i, j]:.1f} % of '
              f'{classes[i]} pixels)')
    print(f'mIoU from the matrix: {result["mIoU"]:.2f}' if result['mIoU'] is not None
          else 'mIoU from the matrix: n/a')
    print(f'written: {png}, confusion_matrix.csv, confusion_matrix.json in {args.out_dir}')
    return result


if __name__ == '__main__':
    from dtop.utils.errors import run_cli
    run_cli(main)
