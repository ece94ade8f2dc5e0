"""Convert PASCAL-Context (PASCAL in Detail annotations) to mmseg's Pascal-Context-59 layout.

Inputs (the raw downloads)::

    VOCdevkit/VOC2010/JPEGImages/*.jpg          PASCAL VOC 2010 trainval images
    trainval_merged.json                        PASCAL in Detail annotations

Outputs (what ``PascalContextDataset59`` reads)::

    VOCdevkit/VOC2010/SegmentationClassContext/<name>.png   uint8 labels 0..59
    VOCdevkit/VOC2010/ImageSets/SegmentationContext/train.txt  (4998 names)
    VOCdevkit/VOC2010/ImageSets/SegmentationContext/val.txt    (5105 names)

Label values: 0 is background / "other" (every category outside the 59, and
unannotated pixels), 1..59 are the 59 classes in alphabetical order (aeroplane ..
wood) -- the order of mmseg's ``PascalContextDataset59.METAINFO``. With
``reduce_zero_label=True`` (as in the configs) 0 becomes 255 (ignored) and the
classes become 0..58.

The per-image class mask is painted as the Detail API's ``Detail.getMask(img)``
does (each segmentation annotation of the image, in file order, writes its
``category_id`` over its RLE mask), but read straight from the json: neither the
``detail`` package nor ``pycocotools`` is needed.

Usage::

    python tools/dataset_converters/pascal_context.py VOCdevkit trainval_merged.json \
        [-o OUT_DIR] [--nproc 8]
"""
import argparse
import json
import os
import os.path as osp
from collections import defaultdict
from multiprocessing import Pool
from typing import Dict, Iterable, List, Mapping, Sequence, Tuple, Union

import numpy as np
from PIL import Image

# (PASCAL in Detail category id, name) of the 59 Pascal-Context classes; label i+1.
CONTEXT59: Tuple[Tuple[int, str], ...] = (
    (2, 'aeroplane'), (9, 'bag'), (18, 'bed'), (19, 'bedclothes'), (22, 'bench'),
    (23, 'bicycle'), (25, 'bird'), (31, 'boat'), (33, 'book'), (34, 'bottle'),
    (44, 'building'), (45, 'bus'), (46, 'cabinet'), (59, 'car'), (65, 'cat'),
    (68, 'ceiling'), (72, 'chair'), (80, 'cloth'), (85, 'computer'), (98, 'cow'),
    (104, 'cup'), (105, 'curtain'), (113, 'dog'), (115, 'door'), (144, 'fence'),
    (158, 'floor'), (159, 'flower'), (162, 'food'), (187, 'grass'), (189, 'ground'),
    (207, 'horse'), (220, 'keyboard'), (232, 'light'), (258, 'motorbike'),
    (259, 'mountain'), (260, 'mouse'), (284, 'person'), (295, 'plate'),
    (296, 'platform'), (308, 'pottedplant'), (324, 'road'), (326, 'rock'),
    (347, 'sheep'), (349, 'shelves'), (354, 'sidewalk'), (355, 'sign'), (360, 'sky'),
    (366, 'snow'), (368, 'sofa'), (397, 'table'), (415, 'track'), (416, 'train'),
    (420, 'tree'), (424, 'truck'), (427, 'tvmonitor'), (440, 'wall'), (445, 'water'),
    (454, 'window'), (458, 'wood'))


def detail_to_label_lut(max_id: int = 1024) -> np.ndarray:
    """Lookup table PASCAL-in-Detail category id -> Pascal-Context-59 label.

    Args:
        max_id (int): table size; ids >= ``max_id`` are not representable.

    Returns:
        np.ndarray: ``(max_id,)`` uint8; 0 for background and the other categories.
    """
    lut = np.zeros(max_id, dtype=np.uint8)
    for label, (cat_id, _) in enumerate(CONTEXT59, start=1):
        lut[cat_id] = label
    return lut


# ----------------------------------------------------------------------------- RLE
def rle_string_to_counts(s: Union[str, bytes]) -> List[int]:
    """Decode a COCO compressed-RLE ``counts`` string into run lengths.

    The format (``rleFrString`` of the COCO mask API): each run is a
    variable-length integer of 5-bit groups stored as ``chr(48 + group)``, bit
    0x20 meaning "more groups follow", the last group sign-extended from bit
    0x10; from the third run on, each value is a delta to the run two before.

    Args:
        s (str or bytes): compressed counts.

    Returns:
        list[int]: run lengths, alternating 0-runs and 1-runs, 0-run first.
    """
    data = s.encode('ascii') if isinstance(s, str) else bytes(s)
    counts: List[int] = []
    p = 0
    while p < len(data):
        x = k = 0
        more = True
        while more:
            if p >= len(data):
                raise ValueError('truncated compressed RLE string')
            c = data[p] - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def decode_rle(segmentation: Mapping) -> np.ndarray:
    """Decode one COCO-style RLE (compressed string or list of counts) to a mask.

    Args:
        segmentation (Mapping): ``{'size': [h, w], 'counts': str | list[int]}``.

    Returns:
        np.ndarray: ``(h, w)`` bool mask.
    """
    if not isinstance(segmentation, Mapping) or 'counts' not in segmentation:
        raise ValueError('expected an RLE dict {"size": [h, w], "counts": ...}, got '
                         f'{type(segmentation).__name__} (polygon annotations are not '
                         'supported; PASCAL in Detail uses RLE)')
    h, w = (int(v) for v in segmentation['size'])
    counts = segmentation['counts']
    if isinstance(counts, (str, bytes)):
        counts = rle_string_to_counts(counts)
    counts = np.asarray(counts, dtype=np.int64)
    if (counts < 0).any() or counts.sum() != h * w:
        raise ValueError(f'RLE counts sum to {int(counts.sum())}, expected h*w = {h * w}')
    flat = np.repeat(np.arange(len(counts)) % 2 == 1, counts)
    return flat.reshape(w, h).T  # RLE runs go down the columns (Fortran order)


# ----------------------------------------------------------------------------- masks
def class_mask(height: int, width: int, anns: Iterable[Mapping]) -> np.ndarray:
    """Paint the Detail category ids of an image's annotations (file order wins last).

    Args:
        height (int): image height.
        width (int): image width.
        anns (Iterable[Mapping]): ``annos_segmentation`` entries of the image.

    Returns:
        np.ndarray: ``(height, width)`` int64 category ids, 0 where unannotated.
    """
    mask = np.zeros((height, width), dtype=np.int64)
    for ann in anns:
        m = decode_rle(ann['segmentation'])
        if m.shape != mask.shape:
            raise ValueError(f'annotation {ann.get("id")} has size {m.shape}, image has '
                             f'{mask.shape}')
        mask[m] = int(ann['category_id'])
    return mask


def to_context59(mask: np.ndarray, lut: np.ndarray) -> Tuple[np.ndarray, int]:
    """Map Detail category ids to labels 0..59.

    Args:
        mask (np.ndarray): ``(H, W)`` category ids.
        lut (np.ndarray): from :func:`detail_to_label_lut`.

    Returns:
        tuple: ``(H, W)`` uint8 labels and the number of pixels of categories
        outside the 59 (mapped to 0).
    """
    if mask.size and int(mask.max()) >= len(lut):
        raise ValueError(f'category id {int(mask.max())} exceeds the table ({len(lut)})')
    labels = lut[mask]
    other = int(((labels == 0) & (mask != 0)).sum())
    return labels, other


def _convert_one(task: Tuple[Mapping, List[Mapping], str]) -> Tuple[str, int]:
    img, anns, out_dir = task
    mask = class_mask(int(img['height']), int(img['width']), anns)
    labels, other = to_context59(mask, detail_to_label_lut())
    name = osp.splitext(osp.basename(img['file_name']))[0]
    Image.fromarray(labels).save(osp.join(out_dir, name + '.png'))
    return name, other


def load_detail_json(json_path: str) -> Tuple[List[Mapping], Dict[int, List[Mapping]]]:
    """Read images and per-image segmentation annotations from a Detail json.

    Args:
        json_path (str): ``trainval_merged.json``.

    Returns:
        tuple: image entries, and ``image_id -> [annotation, ...]`` in file order.
    """
    if not osp.isfile(json_path):
        raise FileNotFoundError(f'annotation file not found: {json_path} (download '
                                'trainval_merged.json of PASCAL in Detail / PASCAL-Context)')
    with open(json_path) as f:
        data = json.load(f)
    for key in ('images', 'annos_segmentation'):
        if key not in data:
            raise ValueError(f'{json_path} has no "{key}": not a PASCAL in Detail '
                             f'annotation file (root keys: {sorted(data)[:8]})')
    per_image: Dict[int, List[Mapping]] = defaultdict(list)
    for ann in data['annos_segmentation']:
        per_image[ann['image_id']].append(ann)
    return data['images'], per_image


def convert(devkit_path: str, json_path: str, out_dir: str = None, nproc: int = 1,
            phases: Sequence[str] = ('train', 'val')) -> Dict[str, List[str]]:
    """Write label PNGs and split files for the given phases.

    Args:
        devkit_path (str): the ``VOCdevkit`` folder (with ``VOC2010/JPEGImages``).
        json_path (str): ``trainval_merged.json``.
        out_dir (str, optional): label folder; default
            ``VOCdevkit/VOC2010/SegmentationClassContext``.
        nproc (int): worker processes.
        phases (Sequence[str]): image phases to convert.

    Returns:
        dict: phase -> sorted image names written.
    """
    voc = osp.join(devkit_path, 'VOC2010')
    img_dir = osp.join(voc, 'JPEGImages')
    if not osp.isdir(img_dir):
        raise FileNotFoundError(f'{img_dir} not found: pass the VOCdevkit folder that holds '
                                'VOC2010/JPEGImages')
    out_dir = out_dir or osp.join(voc, 'SegmentationClassContext')
    split_dir = osp.join(voc, 'ImageSets', 'SegmentationContext')
    os.makedirs(out_dir, exist_ok=True)
    os.makedirs(split_dir, exist_ok=True)

    images, per_image = load_detail_json(json_path)
    splits: Dict[str, List[str]] = {}
    other_pixels = 0
    for phase in phases:
        todo = [img for img in images if img.get('phase') == phase]
        missing = [img['file_name'] for img in todo
                   if not osp.isfile(osp.join(img_dir, img['file_name']))]
        if missing:
            print(f'warning: {len(missing)} {phase} images missing in {img_dir}, e.g. '
                  f'{missing[0]} (labels are written anyway)')
        tasks = [(img, per_image.get(img['image_id'], []), out_dir) for img in todo]
        if nproc > 1:
            with Pool(nproc) as pool:
                results = list(pool.imap_unordered(_convert_one, tasks, chunksize=16))
        else:
            results = [_convert_one(t) for t in tasks]
        names = sorted(name for name, _ in results)
        other_pixels += sum(o for _, o in results)
        with open(osp.join(split_dir, f'{phase}.txt'), 'w') as f:
            f.writelines(n + '\n' for n in names)
        splits[phase] = names
    if other_pixels:
        print(f'note: {other_pixels} annotated pixels belong to categories outside the 59 '
              'classes and were labelled 0 (background)')
    return splits


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Convert PASCAL-Context (PASCAL in Detail json) to mmseg '
                    'Pascal-Context-59 label PNGs and split files.')
    parser.add_argument('devkit_path', help='VOCdevkit folder (holds VOC2010/JPEGImages)')
    parser.add_argument('json_path', help='trainval_merged.json')
    parser.add_argument('-o', '--out_dir', help='label output folder (default: '
                        'VOCdevkit/VOC2010/SegmentationClassContext)')
    parser.add_argument('--nproc', type=int, default=1, help='worker processes')
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    splits = convert(args.devkit_path, args.json_path, args.out_dir, args.nproc)
    print(', '.join(f'{k}: {len(v)} images' for k, v in splits.items()))


if __name__ == '__main__':
    main()
