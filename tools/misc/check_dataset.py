"""Pre-flight check of a dataset split: decode every image and annotation.

Reports, with counts and the first file names of each kind: unreadable images or
annotations (missing, empty, not an image), entries of the image folder that are
not readable files (a dangling symlink: the dataset would skip the sample without
a word), annotations whose size differs from their image, annotations that are not
single-channel label maps (e.g. RGBA), label values outside
``[0, num_classes) ∪ {ignore_index}`` (after the dataset's label mapping, e.g.
``reduce_zero_label``), images smaller than 2 px, a split without any labelled
pixel (aAcc / mIoU would be nan), and an empty data root. Exit status 1 when
anything is wrong, 0 otherwise.

Examples::

    python tools/misc/check_dataset.py configs/demo/segvit_vit-t16-8l_1xb8-1200_demo-128x128.py
    python tools/misc/check_dataset.py CONFIG --split train --show 10
    python tools/misc/check_dataset.py CONFIG --cfg-options \\
        test_dataloader.dataset.data_root=data/ade/ADEChallengeData2016
"""
import argparse
import os.path as osp
import sys
from collections import OrderedDict
from typing import Dict, List, Optional

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

SPLITS = ('train', 'val', 'test')


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    from dtop.utils.cli import add_cfg_options_arg
    p = argparse.ArgumentParser(description='Decode every sample of a dataset split and '
                                'report bad files (exit 1 on problems)')
    p.add_argument('config', help='config file')
    p.add_argument('--split', choices=SPLITS, default='test',
                   help='which dataloader\'s dataset to check (default: test)')
    p.add_argument('--show', type=int, default=5,
                   help='file names shown per kind of problem (default 5)')
    add_cfg_options_arg(p, 'override config settings, e.g. '
                        'test_dataloader.dataset.data_root=PATH', metavar=None)
    return p.parse_args(argv)


def build_dataset(cfg, split: str):
    """The split's dataset with an empty pipeline (files are decoded here)."""
    import copy

    from mmengine.registry import init_default_scope

    from dtop.datasets.checks import build_checked_dataset
    key = f'{split}_dataloader'
    if key not in cfg or not cfg[key]:
        raise KeyError(f'the config has no {key}; choose --split from those it has.')
    ds_cfg = copy.deepcopy(cfg[key]['dataset'])
    pipeline = ds_cfg.get('pipeline', [])
    ds_cfg['pipeline'] = []
    ds_cfg.pop('indices', None)
    init_default_scope(cfg.get('default_scope', 'mmseg'))
    # skipped entries are reported by check_split, not warned about here
    return build_checked_dataset(ds_cfg, split, warn_skipped=False), pipeline


def check_split(cfg, split: str, progress: bool = True) -> Dict:
    """Decode every sample of ``split`` and collect the problems.

    Args:
        cfg (Config): the config.
        split (str): ``train``, ``val`` or ``test``.
        progress (bool): show mmengine's progress bar.

    Returns:
        dict: ``num_samples``, ``problems`` (an ordered dict: kind -> list of
        messages), ``source`` (where the files were looked for).

    Raises:
        DataError: the split holds no sample (the message names the data root).
    """
    from mmengine.utils import ProgressBar

    from dtop.datasets.checks import (build_load_transforms, check_not_empty, check_sample,
                                      describe_dataset_source, iter_base_datasets,
                                      no_labelled_pixels_message, skipped_image_entries)
    dataset, pipeline = build_dataset(cfg, split)
    check_not_empty(dataset, split)
    inner = next(iter(iter_base_datasets(dataset)), dataset)
    classes = (getattr(inner, 'metainfo', None) or {}).get('classes') or []
    ignore_index = getattr(inner, 'ignore_index', 255)
    loaders = build_load_transforms(pipeline)
    problems: Dict[str, List[str]] = OrderedDict()
    skipped = skipped_image_entries(dataset)  # dangling symlinks: not in the split
    if skipped:
        problems['not a readable file'] = skipped
    n = len(dataset)
    stats: Dict[str, int] = {}
    reduce_zero_label = False
    bar = ProgressBar(n) if progress else None
    for i in range(n):
        info = dataset.get_data_info(i)
        reduce_zero_label |= bool(info.get('reduce_zero_label'))
        for kind, msg in check_sample(info, len(classes), ignore_index, loaders,
                                      stats).items():
            problems.setdefault(kind, []).append(msg)
        if bar is not None:
            bar.update()
    if bar is not None:
        print()
    unlabelled = no_labelled_pixels_message(stats, split, len(classes), ignore_index,
                                            reduce_zero_label)
    if unlabelled:
        problems['no labelled pixels'] = [unlabelled]
    return dict(num_samples=n, problems=problems, source=describe_dataset_source(inner),
                num_classes=len(classes), ignore_index=ignore_index)


def format_report(report: Dict, split: str, show: int = 5) -> str:
    """Human-readable report of :func:`check_split`."""
    lines = [f'{split} split: {report["num_samples"]} samples ({report["source"]}); '
             f'{report["num_classes"]} classes, ignore index {report["ignore_index"]}']
    if not report['problems']:
        lines.append('OK: every image and annotation decodes, sizes match, labels are in '
                     'range.')
        return '\n'.join(lines)
    bad = sum(len(v) for v in report['problems'].values())
    lines.append(f'PROBLEMS: {bad} in {len(report["problems"])} kind(s):')
    for kind, msgs in report['problems'].items():
        lines.append(f'  {kind}: ' + ('the whole split' if kind == 'no labelled pixels'
                                     else f'{len(msgs)} sample(s)'))
        lines += [f'    {m}' for m in msgs[:show]]
        if len(msgs) > show:
            lines.append(f'    ... {len(msgs) - show} more (--show N lists more)')
    return '\n'.join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    from dtop.apis import load_config
    from dtop.utils.errors import DataError
    try:  # only the data matters here: the model options are not checked
        cfg = load_config(args.config, args.cfg_options, validate=False)
    except FileNotFoundError as exc:
        print(f'error: {exc}', file=sys.stderr)
        return 2
    try:
        report = check_split(cfg, args.split)
    except DataError as exc:
        print(f'PROBLEM: {exc}')
        return 1
    print(format_report(report, args.split, args.show))
    return 1 if report['problems'] else 0


if __name__ == '__main__':
    from dtop.utils.errors import run_cli
    sys.exit(run_cli(main))
