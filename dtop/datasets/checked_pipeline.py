"""CheckedPipeline: training and testing name the files of a sample they cannot load.

:class:`CheckedPipeline` wraps a dataset's pipeline (``DToPRunner`` installs it on
every dataloader's dataset with :func:`install_sample_checks`): before the
pipeline runs it checks the image and annotation headers; any exception inside
the pipeline is re-raised as a :class:`~dtop.utils.errors.DataError` naming the
image and its annotation; after it, label values outside
``[0, num_classes) ∪ {ignore_index}`` stop the run with the file and the values.
"""
from typing import Optional

from dtop.utils.errors import DataError

from .dataset_checks import iter_base_datasets
from .sample_checks import _FIX, inspect_sample_files, out_of_range_labels


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
