"""Data checks: bad files are named, label values are validated, empty roots stop early.

The public names of the data checks, one concern per module:

* :mod:`~dtop.datasets.sample_checks`: header checks of one sample's image and
  annotation (:func:`inspect_file`, :func:`inspect_sample_files`) and label values
  outside ``[0, num_classes) ∪ {ignore_index}`` (:func:`out_of_range_labels`).
* :mod:`~dtop.datasets.checked_pipeline`: :class:`CheckedPipeline` wraps a
  dataset's pipeline during training and testing (``DToPRunner`` installs it on
  every dataloader's dataset, :func:`install_sample_checks`), so a sample that
  cannot be loaded is a :class:`~dtop.utils.errors.DataError` naming its files.
* :mod:`~dtop.datasets.dataset_checks`: :func:`build_checked_dataset` and
  :func:`check_not_empty` stop a run whose data root is missing or holds no
  sample; :func:`skipped_image_entries` names entries a dataset skips silently.
* :mod:`~dtop.datasets.decode_checks`: ``tools/misc/check_dataset.py`` decodes a
  whole split (:func:`check_sample`, :func:`no_labelled_pixels_message`).
"""
from .checked_pipeline import CheckedPipeline, install_sample_checks
from .dataset_checks import (build_checked_dataset, check_not_empty, describe_dataset_source,
                             iter_base_datasets, skipped_image_entries)
from .decode_checks import build_load_transforms, check_sample, no_labelled_pixels_message
from .sample_checks import LABEL_MODES, inspect_file, inspect_sample_files, out_of_range_labels

__all__ = [
    'LABEL_MODES', 'inspect_file', 'inspect_sample_files', 'out_of_range_labels',
    'CheckedPipeline', 'install_sample_checks', 'iter_base_datasets',
    'describe_dataset_source', 'skipped_image_entries', 'build_checked_dataset',
    'check_not_empty', 'build_load_transforms', 'check_sample',
    'no_labelled_pixels_message'
]
