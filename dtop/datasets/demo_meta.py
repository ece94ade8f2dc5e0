"""Class names, palette and confusable pairs of the embedded demo dataset.

Kept free of heavy imports so that both the generator (numpy/OpenCV only) and the
mmseg dataset type can use them.
"""
from typing import Tuple

#: Class names, in training-label order (annotation value = index + 1).
DEMO_CLASSES: Tuple[str, ...] = ('sky', 'water', 'grass', 'tree', 'sand', 'field',
                                 'road', 'wall', 'building', 'snow')

#: Display colour (RGB) per class for visualisation; not the image colours.
DEMO_PALETTE: Tuple[Tuple[int, int, int], ...] = (
    (70, 130, 180), (0, 60, 160), (120, 200, 80), (20, 100, 20), (240, 220, 130),
    (200, 140, 40), (128, 64, 128), (160, 160, 160), (200, 60, 60), (245, 245, 255))

#: Pairs of the same hue (the second 35 % darker) that differ in texture.
CONFUSABLE_PAIRS: Tuple[Tuple[str, str], ...] = (
    ('sky', 'water'), ('grass', 'tree'), ('sand', 'field'), ('road', 'wall'))
