"""Deterministic generator of the embedded DToP demo dataset (synthetic scenes).

The scenes are built so that token pruning has something to show:

* every class has its own colour *and* texture statistics, plus sensor noise;
* four pairs of classes have the same hue (the second 35 % darker) and differ in
  texture (``sky``/``water``, ``grass``/``tree``, ``sand``/``field``,
  ``road``/``wall``), so colour alone is unreliable for them;
* a scene is a horizon (sky above a ground class) plus objects of varied shape
  (ellipses, rectangles, polygons, blobs) and size, so large uniform regions are
  easy (their tokens should exit early) while boundaries, small objects and
  confusable neighbours are hard;
* images are 256x320 (H x W) by default, so that whole-image inference can
  batch them (``--height-range`` / ``--width-range`` draw varied sizes).

The layout follows ADE20K in mmseg: ``images/{training,validation}/*.jpg`` and
``annotations/{training,validation}/*.png``. Annotation value ``0`` means
"unlabeled / other" and classes are ``1..K``; the dataset is read with
``reduce_zero_label=True`` (as ADE20K), so class ``i`` of :data:`DEMO_CLASSES`
has training label ``i`` and value ``0`` becomes the ignore index 255.

Every image is drawn from its own random stream seeded by ``(seed, split,
index)``, so an image does not depend on how many others are generated.

Command line::

    python -m dtop.datasets.demo_generator --out data/demo \
        [--num-train 400] [--num-val 80] [--seed 0]
"""
import argparse
import multiprocessing
import os
import os.path as osp
import time
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from .demo_appearance import (CLASS_COLORS, TEXTURES, TWIN_SHADE,  # noqa: F401
                              _coords, _smooth_noise, class_appearance)
from .demo_meta import CONFUSABLE_PAIRS, DEMO_CLASSES, DEMO_PALETTE  # noqa: F401

#: Ground classes a horizon can stand on.
GROUND_CLASSES: Tuple[str, ...] = ('water', 'grass', 'sand', 'field', 'road', 'snow')

SPLITS: Dict[str, str] = {'train': 'training', 'val': 'validation'}

#: Default size range (height, width) of the generated images.
DEFAULT_HEIGHT_RANGE: Tuple[int, int] = (256, 256)
DEFAULT_WIDTH_RANGE: Tuple[int, int] = (320, 320)


# ----------------------------------------------------------------------- shapes
def _shape_mask(rng: np.random.Generator, shape: Tuple[int, int], kind: str,
                size: float) -> np.ndarray:
    """A boolean mask of one object of about ``size`` pixels across."""
    h, w = shape
    cy, cx = rng.uniform(0, h), rng.uniform(0, w)
    mask = np.zeros(shape, np.uint8)
    if kind == 'ellipse':
        axes = (max(2, int(size / 2 * rng.uniform(0.6, 1.4))),
                max(2, int(size / 2 * rng.uniform(0.4, 1.0))))
        cv2.ellipse(mask, (int(cx), int(cy)), axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
    elif kind == 'rect':
        rh, rw = size * rng.uniform(0.5, 1.5), size * rng.uniform(0.4, 1.2)
        y0, x0 = int(cy - rh / 2), int(cx - rw / 2)
        cv2.rectangle(mask, (x0, y0), (int(x0 + rw), int(y0 + rh)), 1, -1)
    elif kind == 'polygon':
        n = int(rng.integers(3, 8))
        ang = np.sort(rng.uniform(0, 2 * np.pi, n))
        rad = size / 2 * rng.uniform(0.5, 1.2, n)
        pts = np.stack([cx + rad * np.cos(ang), cy + rad * np.sin(ang)], 1)
        cv2.fillPoly(mask, [pts.round().astype(np.int32)], 1)
    elif kind == 'blob':
        field = _smooth_noise(rng, shape, max(4.0, size / 3))
        yy, xx = _coords(shape)
        dist = ((yy - cy) ** 2 + (xx - cx) ** 2) / (size / 2) ** 2
        mask = ((field * 0.6 - dist + 1.0) > 0.5).astype(np.uint8)
    else:
        raise ValueError(f'unknown shape kind {kind!r}')
    return mask.astype(bool)


def _horizon(rng: np.random.Generator, shape: Tuple[int, int]) -> np.ndarray:
    """Row index of the horizon per column ``(W,)``."""
    h, w = shape
    base = rng.uniform(0.25, 0.55) * h
    xs = np.arange(w, dtype=np.float32)
    wave = rng.uniform(0, 0.08 * h) * np.sin(xs / rng.uniform(15, 60) + rng.uniform(0, 6.3))
    return base + wave


# ------------------------------------------------------------------------ scene
def generate_scene(rng: np.random.Generator,
                   height: int,
                   width: int,
                   max_objects: int = 6,
                   noise_std: float = 6.0,
                   unlabeled_prob: float = 0.1) -> Tuple[np.ndarray, np.ndarray]:
    """Draw one synthetic scene.

    Args:
        rng (np.random.Generator): random stream (the only source of randomness).
        height (int): image height (>= 16).
        width (int): image width (>= 16).
        max_objects (int): at most this many objects on top of the horizon.
        noise_std (float): std of the i.i.d. Gaussian sensor noise.
        unlabeled_prob (float): probability of one small "other" clutter object
            (annotation value 0, ignored in training).

    Returns:
        tuple: ``image`` ``(H, W, 3)`` uint8 **RGB** and ``label`` ``(H, W)`` uint8
        with ``0`` = unlabeled and ``1..K`` = class ``index + 1``.
    """
    if height < 16 or width < 16:
        raise ValueError(f'demo images need both sides >= 16, got {height}x{width}')
    shape = (height, width)
    label = np.zeros(shape, np.uint8)
    canvas = np.zeros(shape + (3,), np.float32)

    def paint(name: str, mask: np.ndarray) -> None:
        if not mask.any():
            return
        canvas[mask] = class_appearance(rng, name, shape)[mask]
        label[mask] = DEMO_CLASSES.index(name) + 1

    # Background: sky above a wavy horizon, a ground class below (or one class).
    yy, _ = _coords(shape)
    if rng.uniform() < 0.8:
        top = 'sky' if rng.uniform() < 0.85 else str(rng.choice(['building', 'tree']))
        paint(top, np.ones(shape, bool))
        paint(str(rng.choice(GROUND_CLASSES)), yy >= _horizon(rng, shape)[None, :])
    else:
        paint(str(rng.choice(GROUND_CLASSES)), np.ones(shape, bool))

    # Objects of varied kind and size, painted back to front.
    kinds = ('ellipse', 'rect', 'polygon', 'blob')
    span = min(height, width)
    for _ in range(int(rng.integers(1, max_objects + 1))):
        name = str(rng.choice(DEMO_CLASSES[1:]))  # no sky objects
        size = span * float(np.exp(rng.uniform(np.log(0.1), np.log(0.8))))
        paint(name, _shape_mask(rng, shape, str(rng.choice(kinds)), size))

    if rng.uniform() < unlabeled_prob:  # clutter of random colours, labelled 0
        mask = _shape_mask(rng, shape, 'ellipse', span * rng.uniform(0.08, 0.2))
        canvas[mask] = rng.uniform(0, 255, size=(int(mask.sum()), 3))
        label[mask] = 0

    # Mild optical blur at boundaries, global illumination change, sensor noise.
    canvas = cv2.GaussianBlur(canvas, (3, 3), 0.7)
    canvas = canvas * rng.uniform(0.9, 1.1) + rng.uniform(-8, 8)
    canvas += rng.normal(0.0, noise_std, size=canvas.shape).astype(np.float32)
    image = np.clip(canvas, 0, 255).round().astype(np.uint8)
    return image, label


def _split_rng(seed: int, split: str, index: int) -> np.random.Generator:
    split_id = sorted(SPLITS).index(split)
    return np.random.default_rng([int(seed), split_id, int(index)])


def generate_split(out_dir: str,
                   split: str,
                   num_images: int,
                   seed: int = 0,
                   height_range: Sequence[int] = DEFAULT_HEIGHT_RANGE,
                   width_range: Sequence[int] = DEFAULT_WIDTH_RANGE,
                   jpeg_quality: int = 95,
                   workers: int = 1) -> List[str]:
    """Write one split of the dataset.

    Args:
        out_dir (str): dataset root (``images/`` and ``annotations/`` go under it).
        split (str): ``'train'`` or ``'val'``.
        num_images (int): images to write.
        seed (int): dataset seed.
        height_range (Sequence[int]): inclusive ``(min, max)`` image height.
        width_range (Sequence[int]): inclusive ``(min, max)`` image width.
        jpeg_quality (int): JPEG quality of the images.
        workers (int): processes drawing images in parallel (same files for any
            number).

    Returns:
        list[str]: the base names written (without suffix).
    """
    if split not in SPLITS:
        raise ValueError(f'split must be one of {sorted(SPLITS)}, got {split!r}')
    if num_images < 0:
        raise ValueError(f'num_images must be >= 0, got {num_images}')
    for name, rg in (('height_range', height_range), ('width_range', width_range)):
        if len(rg) != 2 or rg[0] > rg[1] or rg[0] < 16:
            raise ValueError(f'{name} must be (min, max) with 16 <= min <= max, got {rg}')
    sub = SPLITS[split]
    img_dir = osp.join(out_dir, 'images', sub)
    ann_dir = osp.join(out_dir, 'annotations', sub)
    os.makedirs(img_dir, exist_ok=True)
    os.makedirs(ann_dir, exist_ok=True)
    jobs = [(img_dir, ann_dir, split, i, seed, tuple(height_range), tuple(width_range),
             int(jpeg_quality)) for i in range(num_images)]
    if workers > 1 and num_images > 1:
        # Every image has its own random stream: the files do not depend on workers.
        with multiprocessing.get_context('fork').Pool(workers) as pool:
            return pool.map(_write_image, jobs, chunksize=8)
    return [_write_image(job) for job in jobs]


def _write_image(job: tuple) -> str:
    """Draw and write image ``i`` of a split; returns its base name."""
    img_dir, ann_dir, split, i, seed, height_range, width_range, jpeg_quality = job
    rng = _split_rng(seed, split, i)
    h = int(rng.integers(height_range[0], height_range[1] + 1))
    w = int(rng.integers(width_range[0], width_range[1] + 1))
    image, label = generate_scene(rng, h, w)
    name = f'demo_{SPLITS[split]}_{i:05d}'
    cv2.imwrite(osp.join(img_dir, name + '.jpg'), image[..., ::-1],
                [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
    cv2.imwrite(osp.join(ann_dir, name + '.png'), label)
    return name


def generate_demo_dataset(out_dir: str,
                          num_train: int = 400,
                          num_val: int = 80,
                          seed: int = 0,
                          height_range: Sequence[int] = DEFAULT_HEIGHT_RANGE,
                          width_range: Sequence[int] = DEFAULT_WIDTH_RANGE,
                          verbose: bool = False,
                          workers: int = 1) -> Dict[str, List[str]]:
    """Write the whole demo dataset (train and val splits).

    Existing files with the same names are overwritten; others are left alone.

    Args:
        out_dir (str): dataset root, e.g. ``data/demo``.
        num_train (int): training images.
        num_val (int): validation images.
        seed (int): dataset seed; the same seed gives identical files.
        height_range (Sequence[int]): inclusive ``(min, max)`` image height.
        width_range (Sequence[int]): inclusive ``(min, max)`` image width.
        verbose (bool): print a one-line summary.
        workers (int): processes drawing images in parallel (same files for any
            number).

    Returns:
        dict: ``{'train': [...], 'val': [...]}`` base names per split.
    """
    t0 = time.time()
    out = {split: generate_split(out_dir, split, n, seed, height_range, width_range,
                                 workers=workers)
           for split, n in (('train', num_train), ('val', num_val))}
    if verbose:
        print(f'demo dataset: {num_train} train + {num_val} val images, '
              f'{len(DEMO_CLASSES)} classes, seed {seed} -> {out_dir} '
              f'({time.time() - t0:.1f} s)')
    return out


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Generate the synthetic DToP demo dataset (ADE20K layout).')
    parser.add_argument('--out', default='data/demo', help='dataset root')
    parser.add_argument('--num-train', type=int, default=400, help='training images')
    parser.add_argument('--num-val', type=int, default=80, help='validation images')
    parser.add_argument('--seed', type=int, default=0, help='dataset seed')
    parser.add_argument('--height-range', type=int, nargs=2,
                        default=list(DEFAULT_HEIGHT_RANGE), metavar=('MIN', 'MAX'))
    parser.add_argument('--width-range', type=int, nargs=2,
                        default=list(DEFAULT_WIDTH_RANGE), metavar=('MIN', 'MAX'))
    parser.add_argument('--workers', type=int, default=min(4, os.cpu_count() or 1),
                        help='processes drawing images in parallel (the files do not '
                        'depend on it; default: up to 4, one per CPU core)')
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    generate_demo_dataset(args.out, args.num_train, args.num_val, args.seed,
                          args.height_range, args.width_range, verbose=True,
                          workers=args.workers)


if __name__ == '__main__':
    main()
