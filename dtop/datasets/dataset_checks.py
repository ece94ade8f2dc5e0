"""Checks of a built dataset: its folders exist, it is not empty, no entry is lost.

:func:`build_checked_dataset` reports a missing folder or annotation file and
:func:`check_not_empty` an empty data root as a :class:`~dtop.utils.errors.DataError`
naming the data root and the fix; :func:`skipped_image_entries` names image
entries the dataset would leave out without a word.
"""
import os
import os.path as osp
from typing import List, Optional

from dtop.utils.errors import DataError

from .sample_checks import _FIX, _is_local


def iter_base_datasets(dataset):
    """The datasets with a pipeline inside (possibly wrapped) ``dataset``."""
    if hasattr(dataset, 'datasets'):  # ConcatDataset
        for d in dataset.datasets:
            yield from iter_base_datasets(d)
    elif hasattr(dataset, 'dataset') and not hasattr(dataset, 'pipeline'):
        yield from iter_base_datasets(dataset.dataset)  # Repeat / ClassBalanced / sliced
    elif hasattr(dataset, 'pipeline'):
        yield dataset


def describe_dataset_source(dataset) -> str:
    """Where a dataset looks for its files (data root, prefixes, suffix, ann file)."""
    parts = [f'{type(dataset).__name__}']
    for key in ('data_root', 'data_prefix', 'ann_file'):
        value = getattr(dataset, key, None)
        if value:
            parts.append(f'{key}={value!r}')
    for key in ('img_suffix', 'seg_map_suffix'):
        value = getattr(dataset, key, None)
        if value:
            parts.append(f'{key}={value!r}')
    return ', '.join(parts)


def skipped_image_entries(dataset, limit: Optional[int] = None) -> List[str]:
    """Entries of an image folder that the dataset skips without a word.

    A dataset that lists its image folder (no ``ann_file``; mmseg's
    ``list_dir_or_file``) silently leaves out every name with the image suffix
    that is not a regular file: a dangling symlink, a FIFO, ... Each such entry
    is named here, so that a lost sample is not a silent change of the split.

    Args:
        dataset: a built dataset (possibly wrapped).
        limit (int, optional): stop after this many.

    Returns:
        list[str]: one message per entry.
    """
    found: List[str] = []
    for ds in iter_base_datasets(dataset):
        if getattr(ds, 'ann_file', None):
            continue  # names come from a file: a missing image fails per sample
        img_dir = (getattr(ds, 'data_prefix', None) or {}).get('img_path')
        suffix = getattr(ds, 'img_suffix', None)
        if not (_is_local(img_dir) and suffix and osp.isdir(img_dir)):
            continue
        for root, _, files in os.walk(img_dir, followlinks=True):
            for name in sorted(files):
                if name.startswith('.') or not name.endswith(suffix):
                    continue
                path = osp.join(root, name)
                if osp.isfile(path):
                    continue
                if osp.islink(path) and not osp.exists(path):
                    what = f'is a dangling symlink (-> {os.readlink(path)})'
                else:
                    what = 'is not a regular file'
                found.append(f'image {path} {what}: the dataset skips it without a word; '
                             'fix the link or remove the entry')
                if limit is not None and len(found) >= limit:
                    return found
    return found


def build_checked_dataset(dataset_cfg: dict, split: str, warn_skipped: bool = True):
    """``DATASETS.build`` + ``full_init``, with a missing folder or annotation file
    reported as :class:`DataError` naming the data root and the fix.

    With ``warn_skipped``, image entries the dataset leaves out (dangling
    symlinks, :func:`skipped_image_entries`) are logged as a warning."""
    from mmengine.registry import DATASETS
    where = ', '.join(f'{k}={dataset_cfg.get(k)!r}' for k in
                      ('type', 'data_root', 'data_prefix', 'ann_file', 'img_suffix')
                      if dataset_cfg.get(k))
    opt = _root_option(split)
    try:
        dataset = DATASETS.build(dataset_cfg)
        if hasattr(dataset, 'full_init'):
            dataset.full_init()
    except ValueError as exc:
        if 'need at least one array to concatenate' not in str(exc):
            raise
        # mmengine's BaseDataset cannot serialise an empty sample list
        raise DataError(_empty_message(split, where, dataset_cfg.get('data_root'))) from exc
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise DataError(
            f'the {split} dataset cannot be read: {exc.strerror or exc}: '
            f'{exc.filename or ""} ({where}). Point data_root at the prepared dataset '
            f'(--cfg-options {opt}) or prepare the data '
            '(tools/dataset_converters/, or `python -m dtop.datasets.demo_generator` for '
            'the demo).') from exc
    check_not_empty(dataset, split)
    skipped = skipped_image_entries(dataset, limit=4) if warn_skipped else []
    if skipped:
        from mmengine.logging import print_log
        count = f'{len(skipped)}{"+" if len(skipped) == 4 else ""}'
        print_log(f'the {split} dataset skips image entries that are not readable files '
                  f'({count}), e.g. {skipped[0]}. {_FIX.format(split=split)}.',
                  logger='current', level=30)
    return dataset


def check_not_empty(dataset, split: str) -> None:
    """Raise :class:`DataError` when ``dataset`` holds no sample.

    Args:
        dataset: a built (and initialised) dataset.
        split (str): ``train`` / ``val`` / ``test``, for the message.
    """
    if len(dataset) > 0:
        return
    inner = next(iter(iter_base_datasets(dataset)), dataset)
    raise DataError(_empty_message(split, describe_dataset_source(inner),
                                   getattr(inner, 'data_root', None)))


def _root_option(split: str) -> str:
    """The ``--cfg-options`` setting that points ``split`` at another data root."""
    if split == 'train':
        return 'train_dataloader.dataset.data_root=PATH'
    return ('test_dataloader.dataset.data_root=PATH; val_dataloader.dataset.data_root=PATH '
            'for validation')


def _empty_message(split: str, where: str, root: Optional[str]) -> str:
    exists = f' (the folder {root} does not exist)' if root and not osp.isdir(root) else ''
    opt = _root_option(split)
    return (f'the {split} dataset is empty: no sample found for {where}{exists}. Point '
            f'data_root at the prepared dataset (--cfg-options {opt}), check the '
            'image/annotation suffixes and folders, or prepare the data '
            '(tools/dataset_converters/, or `python -m dtop.datasets.demo_generator` for '
            'the demo).')
