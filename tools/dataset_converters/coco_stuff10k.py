"""Convert COCO-Stuff-10K (``cocostuff-10k-v1.1``) to mmseg's ``COCOStuffDataset`` layout.

Inputs (the raw download, unzipped)::

    cocostuff-10k-v1.1/images/<name>.jpg
    cocostuff-10k-v1.1/annotations/<name>.mat     variable 'S': labels 0..182
    cocostuff-10k-v1.1/imageLists/train.txt       9000 names (no extension)
    cocostuff-10k-v1.1/imageLists/test.txt        1000 names

Outputs (under ``OUT_DIR``, default the input folder)::

    images/train2014/<name>.jpg        images/test2014/<name>.jpg
    annotations/train2014/<name>_labelTrainIds.png
    annotations/test2014/<name>_labelTrainIds.png

Labels: the raw ``S`` values are 0 = unlabeled and the COCO-Stuff ids 1..182
(things 1..91, stuff 92..182), of which 11 thing ids are unused
(12, 26, 29, 30, 45, 66, 68, 69, 71, 83, 91). The 171 used ids are renumbered in
order to 1..171 and unlabeled stays 0, so with ``reduce_zero_label=True`` (as in
the configs) 0 becomes 255 (ignored) and the classes become 0..170, matching
``COCOStuffDataset.METAINFO``. Any other value (an unused id) is written as 0.

Usage::

    python tools/dataset_converters/coco_stuff10k.py cocostuff-10k-v1.1 \
        [-o OUT_DIR] [--nproc 8]
"""
import argparse
import os
import os.path as osp
import shutil
from multiprocessing import Pool
from typing import Dict, List, Tuple

import numpy as np
from PIL import Image

#: COCO thing ids in 1..91 that have no annotations in COCO(-Stuff).
UNUSED_THING_IDS = (12, 26, 29, 30, 45, 66, 68, 69, 71, 83, 91)
NUM_CLASSES = 171
SPLITS = {'train': 'train2014', 'test': 'test2014'}


def raw_to_train_id_lut() -> np.ndarray:
    """Lookup table raw COCO-Stuff-10K value -> train id (0 = unlabeled, 1..171).

    Returns:
        np.ndarray: ``(256,)`` uint8.
    """
    lut = np.zeros(256, dtype=np.uint8)
    used = [i for i in range(1, 183) if i not in UNUSED_THING_IDS]
    assert len(used) == NUM_CLASSES
    lut[used] = np.arange(1, NUM_CLASSES + 1, dtype=np.uint8)
    return lut


def load_label_mat(path: str) -> np.ndarray:
    """Read the ``S`` label matrix of one COCO-Stuff-10K ``.mat`` file.

    Args:
        path (str): ``annotations/<name>.mat``.

    Returns:
        np.ndarray: ``(H, W)`` integer labels.
    """
    try:
        from scipy.io import loadmat
    except ImportError as e:  # pragma: no cover - depends on the env
        raise ImportError('reading COCO-Stuff-10K .mat files needs scipy: '
                          '`pip install scipy`') from e
    try:
        mat = loadmat(path)
    except NotImplementedError as e:  # MATLAB v7.3 (HDF5) files
        raise ValueError(f'{path} is a MATLAB v7.3 file, which scipy cannot read; the '
                         'cocostuff-10k-v1.1 release uses v5 files -- re-download it') from e
    if 'S' not in mat:
        raise ValueError(f'{path} has no "S" label matrix (variables: '
                         f'{sorted(k for k in mat if not k.startswith("__"))})')
    labels = np.asarray(mat['S'])
    if labels.ndim != 2:
        raise ValueError(f'{path}: "S" must be 2-D, got shape {labels.shape}')
    return labels


def convert_labels(raw: np.ndarray) -> Tuple[np.ndarray, int]:
    """Map raw labels to train ids.

    Args:
        raw (np.ndarray): ``(H, W)`` raw values.

    Returns:
        tuple: ``(H, W)`` uint8 train ids and the count of pixels with an
        unknown value (written as 0).
    """
    raw = raw.astype(np.int64)
    bad = (raw < 0) | (raw > 182)
    lut = raw_to_train_id_lut()
    out = lut[np.clip(raw, 0, 255)]
    out[bad] = 0
    unknown = int(bad.sum()) + int(np.isin(raw, UNUSED_THING_IDS).sum())
    return out, unknown


def _convert_one(task: Tuple[str, str, str, str]) -> int:
    name, src_root, out_root, split = task
    sub = SPLITS[split]
    src_img = osp.join(src_root, 'images', name + '.jpg')
    dst_img = osp.join(out_root, 'images', sub, name + '.jpg')
    if osp.abspath(src_img) != osp.abspath(dst_img):
        shutil.copyfile(src_img, dst_img)
    labels, unknown = convert_labels(load_label_mat(osp.join(src_root, 'annotations',
                                                             name + '.mat')))
    Image.fromarray(labels).save(
        osp.join(out_root, 'annotations', sub, name + '_labelTrainIds.png'))
    return unknown


def read_list(path: str) -> List[str]:
    """Names of one split (one per line; extensions dropped)."""
    if not osp.isfile(path):
        raise FileNotFoundError(f'{path} not found: pass the cocostuff-10k-v1.1 folder '
                                '(with imageLists/train.txt and imageLists/test.txt)')
    with open(path) as f:
        return [osp.splitext(line.strip())[0] for line in f if line.strip()]


def convert(coco_path: str, out_dir: str = None, nproc: int = 1) -> Dict[str, List[str]]:
    """Copy images and write label PNGs for the train and test splits.

    Args:
        coco_path (str): the ``cocostuff-10k-v1.1`` folder.
        out_dir (str, optional): output root; default ``coco_path``.
        nproc (int): worker processes.

    Returns:
        dict: split -> names converted.
    """
    out_dir = out_dir or coco_path
    for d in ('images', 'annotations'):
        if not osp.isdir(osp.join(coco_path, d)):
            raise FileNotFoundError(f'{osp.join(coco_path, d)} not found: pass the '
                                    'cocostuff-10k-v1.1 folder')
    done: Dict[str, List[str]] = {}
    unknown = 0
    for split, sub in SPLITS.items():
        names = read_list(osp.join(coco_path, 'imageLists', f'{split}.txt'))
        missing = [n for n in names
                   if not osp.isfile(osp.join(coco_path, 'images', n + '.jpg'))
                   or not osp.isfile(osp.join(coco_path, 'annotations', n + '.mat'))]
        if missing:
            raise FileNotFoundError(f'{len(missing)} {split} images/annotations are missing, '
                                    f'e.g. images/{missing[0]}.jpg or '
                                    f'annotations/{missing[0]}.mat')
        os.makedirs(osp.join(out_dir, 'images', sub), exist_ok=True)
        os.makedirs(osp.join(out_dir, 'annotations', sub), exist_ok=True)
        tasks = [(n, coco_path, out_dir, split) for n in names]
        if nproc > 1:
            with Pool(nproc) as pool:
                unknown += sum(pool.imap_unordered(_convert_one, tasks, chunksize=16))
        else:
            unknown += sum(_convert_one(t) for t in tasks)
        done[split] = names
    if unknown:
        print(f'note: {unknown} pixels had unused/unknown ids and were written as 0 '
              '(unlabeled)')
    return done


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Convert COCO-Stuff-10K (cocostuff-10k-v1.1) to the mmseg layout.')
    parser.add_argument('coco_path', help='cocostuff-10k-v1.1 folder')
    parser.add_argument('-o', '--out_dir', help='output root (default: coco_path)')
    parser.add_argument('--nproc', type=int, default=1, help='worker processes')
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    done = convert(args.coco_path, args.out_dir, args.nproc)
    print(', '.join(f'{k}: {len(v)} images' for k, v in done.items()))


if __name__ == '__main__':
    main()
