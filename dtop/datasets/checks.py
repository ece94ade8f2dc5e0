"""Data checks: bad files are named, label values are validated, empty roots stop early.

Three users:

* :class:`CheckedPipeline` wraps a dataset's pipeline during training and testing
  (``DToPRunner`` installs it on every dataloader's dataset): before the pipeline
  runs it checks the image and annotation headers (existence, zero bytes, format,
  annotation mode, equal sizes); any exception inside the pipeline is re-raised as
  a :class:`~dtop.utils.errors.DataError` naming the image and its annotation; after
  it, label values outside ``[0, num_classes) ∪ {ignore_index}`` stop the run with
  the file and the values.
* :func:`check_not_empty` stops a run whose data root holds no sample.
* ``tools/misc/check_dataset.py`` decodes a whole split (:func:`check_sample`).
"""
import os
import os.path as osp
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from dtop.utils.errors import DataError

#: PIL modes of single-channel label maps (mmseg decodes them as 2-D arrays).
LABEL_MODES = ('1', 'L', 'P', 'I', 'I;16', 'I;16L', 'I;16B')
_FIX = 'tools/misc/check_dataset.py CONFIG --split {split} lists every bad file of a split'


def _is_local(path) -> bool:
    return isinstance(path, str) and '://' not in path


def inspect_file(path: str, what: str) -> Tuple[Optional[str], Optional[Tuple[int, int]],
                                                 Optional[str]]:
    """Cheap header check of one image / annotation file (nothing is decoded).

    Args:
        path (str): local file.
        what (str): ``'image'`` or ``'annotation'``, for the message.

    Returns:
        tuple: ``(problem or None, (width, height) or None, PIL mode or None)``.
    """
    from PIL import Image, UnidentifiedImageError
    if not osp.exists(path):
        return f'{what} {path} does not exist', None, None
    if osp.isdir(path):
        return f'{what} {path} is a directory', None, None
    size = osp.getsize(path)
    if size == 0:
        return f'{what} {path} is empty (0 bytes)', None, None
    try:
        with Image.open(path) as im:
            return None, tuple(im.size), im.mode
    except UnidentifiedImageError:
        return f'{what} {path} is not a readable image file ({size} bytes)', None, None
    except OSError as exc:
        return f'{what} {path} cannot be read ({exc})', None, None


def inspect_sample_files(img_path: Optional[str], seg_path: Optional[str],
                         min_size: int = 1) -> List[str]:
    """Header-level problems of one sample (image + optional annotation).

    Args:
        img_path (str, optional): the image file.
        seg_path (str, optional): the annotation file.
        min_size (int): smallest accepted image side in pixels.

    Returns:
        list[str]: problems, empty when the headers look fine.
    """
    problems = []
    img_size = seg_size = None
    if _is_local(img_path):
        p, img_size, _ = inspect_file(img_path, 'image')
        if p:
            problems.append(p)
        elif min(img_size) < min_size:
            problems.append(f'image {img_path} is {img_size[0]}x{img_size[1]} px (W x H), '
                            f'smaller than {min_size} px')
    if _is_local(seg_path):
        p, seg_size, mode = inspect_file(seg_path, 'annotation')
        if p:
            problems.append(p)
        elif min(seg_size) < 2:
            problems.append(f'annotation {seg_path} is {seg_size[0]}x{seg_size[1]} px: label '
                            'maps need at least 2 px per side (mmseg\'s LoadAnnotations '
                            'squeezes a 1-px side away); remove the sample or use a larger '
                            'image')
        elif mode not in LABEL_MODES:
            problems.append(f'annotation {seg_path} has PIL mode {mode!r} '
                            f'({len(mode)} channels); label maps must be single-channel '
                            f'(mode L or P, one class index per pixel)')
    if img_size and seg_size and img_size != seg_size:
        problems.append(f'annotation {seg_path} is {seg_size[0]}x{seg_size[1]} px but image '
                        f'{img_path} is {img_size[0]}x{img_size[1]} px (W x H)')
    return problems


def out_of_range_labels(label, num_classes: int, ignore_index: int = 255,
                        limit: int = 10) -> List[int]:
    """Label values that are neither a class index nor the ignore index.

    Args:
        label (Tensor | np.ndarray): label map (after the dataset's label mapping).
        num_classes (int): number of classes.
        ignore_index (int): the ignored value.
        limit (int): at most this many values are returned.

    Returns:
        list[int]: sorted offending values (empty when all are valid).
    """
    import torch
    lab = label.detach() if hasattr(label, 'detach') else torch.from_numpy(
        np.ascontiguousarray(label))
    lab = lab.flatten()
    if lab.numel() == 0:
        return []
    if lab.is_floating_point() or int(lab.min()) < 0:  # rare: sort the offending values
        mask = ((lab < 0) | (lab >= num_classes)) & (lab != ignore_index)
        bad = lab[mask].unique().cpu().tolist()
    else:  # a histogram is ~10x cheaper than np.unique on a full-size label map
        counts = torch.bincount(lab.long(), minlength=num_classes)
        bad = [v for v in (torch.nonzero(counts[num_classes:]).flatten() + num_classes)
               .tolist() if v != ignore_index]
    return [int(v) for v in bad[:limit]]


def _where(img_path, seg_path) -> str:
    return f'{img_path} (annotation {seg_path})' if seg_path else str(img_path)


class CheckedPipeline:
    """A dataset pipeline that names the files of a sample it cannot load.

    Args:
        pipeline (Callable): the dataset's ``Compose`` pipeline.
        num_classes (int): classes of the dataset (for the label check).
        ignore_index (int): ignored label value. Default 255.
        split (str): ``train`` / ``val`` / ``test``, for the suggested command.
        check_labels (bool): check label values after the pipeline. Default True.
    """

    def __init__(self, pipeline, num_classes: Optional[int], ignore_index: int = 255,
                 split: str = 'val', check_labels: bool = True) -> None:
        self.pipeline = pipeline
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.split = split
        self.check_labels = check_labels

    @property
    def transforms(self):
        """The wrapped transforms (as ``Compose.transforms``)."""
        return getattr(self.pipeline, 'transforms', [])

    def __repr__(self) -> str:
        return f'CheckedPipeline({self.pipeline!r})'

    def __call__(self, results: dict):
        img_path = results.get('img_path')
        seg_path = results.get('seg_map_path')
        fix = _FIX.format(split=self.split)
        problems = inspect_sample_files(img_path, seg_path)
        if problems:
            raise DataError(f'cannot load sample {_where(img_path, seg_path)}: '
                            + '; '.join(problems) + f'. Fix or remove the file(s); {fix}.')
        try:
            out = self.pipeline(results)
        except DataError:
            raise
        except Exception as exc:  # noqa: BLE001  (re-raised with the file names)
            msg = str(exc).strip().splitlines()
            raise DataError(f'cannot load sample {_where(img_path, seg_path)}: '
                            f'{type(exc).__name__}: {msg[-1] if msg else ""} (in the data '
                            f'pipeline). {fix}.') from exc
        if out is not None and self.check_labels and self.num_classes:
            self._check_labels(out, img_path, seg_path, results)
        return out

    def _check_labels(self, out: dict, img_path, seg_path, results: dict) -> None:
        samples = out.get('data_samples') if isinstance(out, dict) else None
        gt = getattr(samples, 'gt_sem_seg', None)
        if gt is None:
            return
        bad = out_of_range_labels(gt.data, self.num_classes, self.ignore_index)
        if bad:
            mapping = ' after reduce_zero_label (raw value = value + 1)' if results.get(
                'reduce_zero_label') else ''
            raise DataError(
                f'sample {_where(img_path, seg_path)}: label values {bad}{mapping} are '
                f'outside [0, {self.num_classes}) and are not the ignore index '
                f'{self.ignore_index}; they would be trained on / scored as wrong classes. '
                f'Fix the annotation, or the classes of the dataset; '
                f'{_FIX.format(split=self.split)}.')


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


def install_sample_checks(dataset, split: str = 'val') -> int:
    """Wrap the pipelines of ``dataset`` (and of datasets inside it) in
    :class:`CheckedPipeline`; idempotent.

    Args:
        dataset: a built dataset (mmengine ``BaseDataset``, possibly wrapped).
        split (str): for the messages.

    Returns:
        int: the number of pipelines wrapped now.
    """
    wrapped = 0
    for ds in iter_base_datasets(dataset):
        if isinstance(ds.pipeline, CheckedPipeline):
            continue
        meta = getattr(ds, 'metainfo', None) or {}
        classes = meta.get('classes')
        ds.pipeline = CheckedPipeline(ds.pipeline, len(classes) if classes else None,
                                      getattr(ds, 'ignore_index', 255), split)
        wrapped += 1
    return wrapped


# ------------------------------------------------------------------ full decoding
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

