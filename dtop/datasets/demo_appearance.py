"""Appearance of the demo dataset's classes: mean colours and textures.

Part of the demo generator (:mod:`dtop.datasets.demo_generator`), which draws the
scenes; this module says what each class looks like.
"""
from typing import Callable, Dict, Tuple

import cv2
import numpy as np

from .demo_meta import CONFUSABLE_PAIRS, DEMO_CLASSES

#: Mean RGB colour of each class in the images. The second class of each
#: :data:`CONFUSABLE_PAIRS` pair has its twin's hue, 35 % darker (:data:`TWIN_SHADE`):
#: close enough that illumination and per-region jitter make colour alone unreliable
#: near boundaries and in small regions, far enough that a small model trained for
#: minutes learns the pairs from a token's own patch, not only from the rest of the
#: image (docs/benchmarks.md, "The demo": at 25 % the tokens left after pruning lost
#: the pairs).
TWIN_SHADE = 0.65
_BASE_COLORS: Dict[str, Tuple[int, int, int]] = {
    'sky': (120, 165, 220), 'grass': (80, 145, 60), 'sand': (205, 185, 135),
    'road': (115, 115, 118), 'building': (170, 95, 75), 'snow': (236, 238, 244)}
CLASS_COLORS: Dict[str, Tuple[int, int, int]] = dict(
    _BASE_COLORS,
    **{b: tuple(int(round(TWIN_SHADE * c)) for c in _BASE_COLORS[a])
       for a, b in CONFUSABLE_PAIRS})


# --------------------------------------------------------------------- textures
def _smooth_noise(rng: np.random.Generator, shape: Tuple[int, int],
                  scale: float) -> np.ndarray:
    """Zero-mean, unit-std noise with structures of about ``scale`` pixels."""
    h, w = shape
    gh, gw = max(2, int(round(h / scale)) + 2), max(2, int(round(w / scale)) + 2)
    grid = rng.standard_normal((gh, gw)).astype(np.float32)
    big = cv2.resize(grid, (int(gw * scale), int(gh * scale)),
                     interpolation=cv2.INTER_CUBIC)
    oy = int(rng.integers(0, max(1, big.shape[0] - h + 1)))
    ox = int(rng.integers(0, max(1, big.shape[1] - w + 1)))
    out = big[oy:oy + h, ox:ox + w]
    if out.shape != (h, w):  # rounding guard
        out = cv2.resize(out, (w, h), interpolation=cv2.INTER_LINEAR)
    return (out - out.mean()) / (out.std() + 1e-6)


def _coords(shape: Tuple[int, int]) -> Tuple[np.ndarray, np.ndarray]:
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    return yy, xx


def _luma(v: np.ndarray) -> np.ndarray:
    return np.repeat(v[..., None], 3, axis=2)


def _tex_sky(rng, shape):
    yy, _ = _coords(shape)
    grad = (yy / max(shape[0] - 1, 1) - 0.5) * 30.0  # lighter towards the horizon
    return _luma(grad + 3.0 * _smooth_noise(rng, shape, 40))


def _tex_water(rng, shape):
    yy, xx = _coords(shape)
    period = rng.uniform(5.0, 8.0)
    phase = rng.uniform(0, 2 * np.pi)
    wobble = 2.0 * np.sin(xx / rng.uniform(12, 24) + rng.uniform(0, 6.3))
    waves = np.sin(2 * np.pi * (yy + wobble) / period + phase)
    return _luma(28.0 * waves)


def _tex_grass(rng, shape):
    return _luma(22.0 * rng.standard_normal(shape).astype(np.float32))


def _tex_tree(rng, shape):
    blobs = _smooth_noise(rng, shape, rng.uniform(5.0, 8.0))
    return _luma(45.0 * np.tanh(1.5 * blobs))


def _tex_sand(rng, shape):
    return _luma(10.0 * rng.standard_normal(shape).astype(np.float32)
                 + 4.0 * _smooth_noise(rng, shape, 20))


def _tex_field(rng, shape):
    yy, xx = _coords(shape)
    period = rng.uniform(7.0, 10.0)
    angle = rng.choice([1.0, -1.0]) * rng.uniform(0.5, 1.1)
    stripes = np.sign(np.sin(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / period))
    return _luma(26.0 * stripes)


def _tex_road(rng, shape):
    return _luma(5.0 * rng.standard_normal(shape).astype(np.float32)
                 + 4.0 * _smooth_noise(rng, shape, 30))


def _tex_wall(rng, shape):
    yy, xx = _coords(shape)
    bh, bw = int(rng.integers(7, 10)), int(rng.integers(14, 20))
    row = np.floor(yy / bh)
    xs = xx + (row % 2) * (bw / 2)
    mortar = ((yy % bh) < 2) | ((xs % bw) < 2)
    return _luma(np.where(mortar, -45.0, 12.0).astype(np.float32)
                 + 4.0 * rng.standard_normal(shape).astype(np.float32))


def _tex_building(rng, shape):
    yy, xx = _coords(shape)
    ph, pw = int(rng.integers(10, 15)), int(rng.integers(9, 14))
    window = ((yy % ph) > ph * 0.45) & ((xx % pw) > pw * 0.45)
    out = np.zeros(shape + (3,), np.float32)
    out[window] = (-110.0, -60.0, -20.0)  # dark blue-ish glass
    return out + _luma(6.0 * rng.standard_normal(shape).astype(np.float32))


def _tex_snow(rng, shape):
    return _luma(4.0 * rng.standard_normal(shape).astype(np.float32)
                 + 5.0 * _smooth_noise(rng, shape, 25))


TEXTURES: Dict[str, Callable[[np.random.Generator, Tuple[int, int]], np.ndarray]] = {
    'sky': _tex_sky, 'water': _tex_water, 'grass': _tex_grass, 'tree': _tex_tree,
    'sand': _tex_sand, 'field': _tex_field, 'road': _tex_road, 'wall': _tex_wall,
    'building': _tex_building, 'snow': _tex_snow}


def class_appearance(rng: np.random.Generator, name: str,
                     shape: Tuple[int, int]) -> np.ndarray:
    """Colour + texture of class ``name`` over a full ``(H, W)`` canvas.

    Args:
        rng (np.random.Generator): random stream.
        name (str): a class of :data:`DEMO_CLASSES`.
        shape (tuple): ``(H, W)``.

    Returns:
        np.ndarray: ``(H, W, 3)`` float32 RGB, not clipped.
    """
    if name not in TEXTURES:
        raise KeyError(f'unknown demo class {name!r}; expected one of {DEMO_CLASSES}')
    base = np.asarray(CLASS_COLORS[name], np.float32)
    jitter = rng.normal(0.0, 8.0, size=3).astype(np.float32)  # same law for every class
    return base + jitter + TEXTURES[name](rng, shape)
