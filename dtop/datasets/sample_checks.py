"""Checks of one sample: its files' headers (nothing is decoded) and its label values.

:func:`inspect_file` / :func:`inspect_sample_files` read image and annotation
headers (existence, zero bytes, format, annotation mode, equal sizes);
:func:`out_of_range_labels` lists label values outside
``[0, num_classes) ∪ {ignore_index}``.
"""
import os.path as osp
from typing import List, Optional, Tuple

import numpy as np

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
