"""The embedded demo dataset as an mmseg dataset type."""
from mmseg.datasets import BaseSegDataset
from mmseg.registry import DATASETS

from .demo_meta import DEMO_CLASSES, DEMO_PALETTE


@DATASETS.register_module()
class DToPDemoDataset(BaseSegDataset):
    """Synthetic scenes written by :mod:`dtop.datasets.demo_generator`.

    The layout and label convention are ADE20K's: ``images/<split>/*.jpg``,
    ``annotations/<split>/*.png`` where annotation ``0`` is "unlabeled" and
    class ``i`` of :attr:`METAINFO` is stored as ``i + 1``. Hence
    ``reduce_zero_label=True`` by default (``0`` → 255 ignore, ``i + 1`` → ``i``).

    Args:
        img_suffix (str): image suffix. Default ``'.jpg'``.
        seg_map_suffix (str): annotation suffix. Default ``'.png'``.
        reduce_zero_label (bool): see above. Default True.
        **kwargs: other :class:`mmseg.datasets.BaseSegDataset` arguments
            (``data_root``, ``data_prefix``, ``pipeline``, ...).
    """
    METAINFO = dict(classes=DEMO_CLASSES, palette=[list(c) for c in DEMO_PALETTE])

    def __init__(self,
                 img_suffix: str = '.jpg',
                 seg_map_suffix: str = '.png',
                 reduce_zero_label: bool = True,
                 **kwargs) -> None:
        super().__init__(img_suffix=img_suffix, seg_map_suffix=seg_map_suffix,
                         reduce_zero_label=reduce_zero_label, **kwargs)
