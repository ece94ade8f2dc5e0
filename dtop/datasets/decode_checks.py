"""Full decoding of a sample, as training / testing would (``tools/misc/check_dataset.py``).

:func:`check_sample` lists a sample's problems by category;
:func:`no_labelled_pixels_message` reports a split without any labelled pixel.
"""
from typing import Dict, Optional, Sequence

import numpy as np

from .sample_checks import inspect_sample_files, out_of_range_labels


def build_load_transforms(pipeline_cfg: Optional[Sequence[dict]]):
    """mmseg's LoadImageFromFile / LoadAnnotations with the config's arguments."""
    from mmseg.registry import TRANSFORMS
    img_cfg, ann_cfg = dict(type='LoadImageFromFile'), dict(type='LoadAnnotations')
    for t in pipeline_cfg or []:
        if t.get('type') == 'LoadImageFromFile':
            img_cfg = dict(t)
        elif t.get('type') == 'LoadAnnotations':
            ann_cfg = dict(t)
    return TRANSFORMS.build(img_cfg), TRANSFORMS.build(ann_cfg)


def check_sample(info: dict, num_classes: int, ignore_index: int = 255,
                 loaders=None, stats: Optional[Dict[str, int]] = None) -> Dict[str, str]:
    """Decode one sample as training/testing would and list its problems.

    Args:
        info (dict): a ``data_list`` item (``img_path``, ``seg_map_path``,
            ``reduce_zero_label``, ``label_map``, ...).
        num_classes (int): classes of the dataset.
        ignore_index (int): ignored label value.
        loaders (tuple, optional): ``(LoadImageFromFile, LoadAnnotations)``
            transforms (default: mmseg's with default arguments).
        stats (dict, optional): counters updated in place: ``annotations``
            (decoded label maps) and ``labelled_pixels`` (pixels with a class in
            ``[0, num_classes)``), for :func:`no_labelled_pixels_message`.

    Returns:
        dict: problem category -> message; categories are ``unreadable image``,
        ``unreadable annotation``, ``annotation mode``, ``size mismatch``,
        ``labels out of range`` and ``tiny image``. Empty when the sample is fine.
    """
    load_img, load_ann = loaders or build_load_transforms(None)
    img_path, seg_path = info.get('img_path'), info.get('seg_map_path')
    problems: Dict[str, str] = {}
    header = inspect_sample_files(img_path, seg_path)
    for p in header:
        if p.startswith('image'):
            problems['unreadable image'] = p
        elif 'PIL mode' in p:
            problems['annotation mode'] = p
        elif ' px but image ' in p:
            problems['size mismatch'] = p
        else:
            problems['unreadable annotation'] = p
    img_shape = None
    if 'unreadable image' not in problems:
        try:
            res = load_img(dict(info, seg_fields=[]))
            if res is None or res.get('img') is None:
                raise ValueError('the decoder returned nothing')
            img_shape = res['img'].shape[:2]
        except Exception as exc:  # noqa: BLE001
            problems['unreadable image'] = (f'image {img_path} cannot be decoded '
                                            f'({type(exc).__name__}: {exc})')
    if img_shape is not None and min(img_shape) < 2:
        problems['tiny image'] = (f'image {img_path} is {img_shape[1]}x{img_shape[0]} px; '
                                  'it holds less than one token of context')
    if seg_path and not ({'unreadable annotation', 'annotation mode'} & set(problems)):
        try:
            res = load_ann(dict(info, seg_fields=[]))
            gt = res['gt_seg_map']
        except Exception as exc:  # noqa: BLE001
            problems['unreadable annotation'] = (f'annotation {seg_path} cannot be decoded '
                                                 f'({type(exc).__name__}: {exc})')
        else:
            if gt.ndim != 2:
                problems['annotation mode'] = (f'annotation {seg_path} decodes to shape '
                                               f'{gt.shape}; expected a 2-D label map')
            elif img_shape is not None and tuple(gt.shape) != tuple(img_shape) and \
                    'size mismatch' not in problems:
                problems['size mismatch'] = (f'annotation {seg_path} is {gt.shape[1]}x'
                                             f'{gt.shape[0]} px but image {img_path} is '
                                             f'{img_shape[1]}x{img_shape[0]} px (W x H)')
            if stats is not None:
                stats['annotations'] = stats.get('annotations', 0) + 1
                stats['labelled_pixels'] = stats.get('labelled_pixels', 0) + int(
                    np.count_nonzero((gt >= 0) & (gt < num_classes)))
            bad = out_of_range_labels(gt, num_classes, ignore_index) if gt.ndim == 2 else []
            if bad:
                raw = ' (raw values: these + 1, reduce_zero_label)' \
                    if info.get('reduce_zero_label') else ''
                problems['labels out of range'] = (
                    f'annotation {seg_path}: values {bad}{raw} outside [0, {num_classes}) '
                    f'and not {ignore_index}')
    return problems


def no_labelled_pixels_message(stats: Dict[str, int], split: str, num_classes: int,
                               ignore_index: int = 255,
                               reduce_zero_label: bool = False) -> Optional[str]:
    """The problem of a split whose annotations hold no class label at all.

    Every pixel is the ignore index (or out of range): nothing is trained on, and
    aAcc / mIoU are ``nan``. None when some pixel is labelled or nothing was decoded.

    Args:
        stats (dict): the counters :func:`check_sample` filled.
        split (str): for the message.
        num_classes (int): classes of the dataset.
        ignore_index (int): the ignored value.
        reduce_zero_label (bool): whether raw 0 became the ignore index.
    """
    if not stats.get('annotations') or stats.get('labelled_pixels', 0) > 0:
        return None
    raw = ' (raw value 0 becomes it: reduce_zero_label=True)' if reduce_zero_label else ''
    return (f'no labelled pixels in split {split}: none of its {stats["annotations"]} '
            f'annotation(s) has a pixel with a class in [0, {num_classes}); all are the '
            f'ignore index {ignore_index}{raw} or out of range, so aAcc and mIoU would be '
            'nan. Check the annotation folder / seg_map_suffix, the label encoding and '
            'reduce_zero_label')

