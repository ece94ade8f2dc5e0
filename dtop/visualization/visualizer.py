"""A segmentation visualizer that adds the DToP token exit-map panel."""
from typing import List, Optional, Sequence

import cv2
import mmcv
import numpy as np
from mmseg.registry import VISUALIZERS
from mmseg.structures import SegDataSample
from mmseg.visualization import SegLocalVisualizer

from .exit_map import (exit_fractions, exit_map_to_original, render_exit_map,
                       stage_colors, stage_legend)


def _title(panel: np.ndarray, text: str, height: int) -> np.ndarray:
    strip = np.full((height, panel.shape[1], 3), 255, np.uint8)
    scale = 0.42 * height / 20
    cv2.putText(strip, text, (4, int(height * 0.72)), cv2.FONT_HERSHEY_SIMPLEX, scale,
                (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([strip, panel], axis=0)


@VISUALIZERS.register_module()
class DToPVisualizer(SegLocalVisualizer):
    """:class:`SegLocalVisualizer` plus a per-token exit-stage panel.

    When a data sample's metainfo has ``dtop_stats`` (set by
    ``DToPEncoderDecoder.predict``), :meth:`add_datasample` draws, side by side,
    the ground truth, the prediction and the exit map (the stage at which each
    token was finalised, one colour per stage, over the image), with a title
    above each panel and a legend giving the share of tokens per exit stage.
    Without ``dtop_stats`` it behaves like :class:`SegLocalVisualizer`.

    Args:
        name (str): instance name (mmengine visualizers are named singletons).
        classes (Sequence[str], optional): class names (the runner sets them from
            the dataset's metainfo otherwise).
        palette (Sequence[Sequence[int]], optional): RGB colour per class.
        dataset_name (str, optional): mmseg dataset name for default classes and
            palette.
        exit_alpha (float): opacity of the stage colours in the exit panel.
        stage_colors (Sequence[tuple], optional): RGB per stage (default green →
            amber → red, see :func:`~dtop.visualization.stage_colors`).
        draw_exit_map (bool): add the exit panel when statistics are present.
        with_titles (bool): title strip above each panel and the legend below.
        **kwargs: other :class:`SegLocalVisualizer` arguments (``vis_backends``,
            ``save_dir``, ``alpha``, ...).
    """

    def __init__(self,
                 name: str = 'visualizer',
                 classes: Optional[Sequence[str]] = None,
                 palette: Optional[Sequence[Sequence[int]]] = None,
                 dataset_name: Optional[str] = None,
                 exit_alpha: float = 0.55,
                 stage_colors: Optional[Sequence[Sequence[int]]] = None,
                 draw_exit_map: bool = True,
                 with_titles: bool = True,
                 **kwargs) -> None:
        super().__init__(name=name, dataset_name=dataset_name, **kwargs)
        # mmseg 1.2.2's SegLocalVisualizer.__init__ passes (palette, classes) to
        # set_dataset_meta(classes, palette) positionally, i.e. swapped; set them here.
        self.set_dataset_meta(classes=list(classes) if classes else None,
                              palette=[list(c) for c in palette] if palette else None,
                              dataset_name=dataset_name)
        self.exit_alpha = exit_alpha
        self.stage_colors = [tuple(c) for c in stage_colors] if stage_colors else None
        self.draw_exit_map = draw_exit_map
        self.with_titles = with_titles

    def draw_exit_panel(self, image: np.ndarray, data_sample: SegDataSample):
        """Exit-map overlay for ``data_sample`` on ``image`` (original size).

        Args:
            image (np.ndarray): ``(H, W, 3)`` RGB image at the original size.
            data_sample (SegDataSample): with ``dtop_stats`` in its metainfo.

        Returns:
            tuple: ``(panel (H, W, 3) uint8 RGB, fractions (S,), num_stages)``.
        """
        stats = data_sample.metainfo['dtop_stats']
        counts = stats['token_counts']
        num_stages = int(np.asarray(counts.shape)[-1])
        exit_map = exit_map_to_original(stats['exit_map'], data_sample.metainfo)
        if exit_map.shape != image.shape[:2]:
            exit_map = cv2.resize(exit_map, (image.shape[1], image.shape[0]),
                                  interpolation=cv2.INTER_NEAREST)
        colors = self.stage_colors or stage_colors(num_stages)
        panel = render_exit_map(image, exit_map, num_stages, self.exit_alpha, colors)
        fractions = exit_fractions(counts, int(stats['grid_tokens']))
        return panel, fractions, num_stages

    def add_datasample(self,
                       name: str,
                       image: np.ndarray,
                       data_sample: Optional[SegDataSample] = None,
                       draw_gt: bool = True,
                       draw_pred: bool = True,
                       show: bool = False,
                       wait_time: float = 0,
                       out_file: Optional[str] = None,
                       step: int = 0,
                       with_labels: Optional[bool] = True) -> None:
        """Draw GT | prediction | exit map and save to the backends or ``out_file``.

        Args are those of :meth:`SegLocalVisualizer.add_datasample`.
        """
        has_stats = (data_sample is not None and self.draw_exit_map
                     and 'dtop_stats' in data_sample.metainfo)
        if not has_stats:
            return super().add_datasample(name, image, data_sample, draw_gt, draw_pred,
                                          show, wait_time, out_file, step, with_labels)
        drawn = self.draw_panels(image, data_sample, draw_gt, draw_pred, with_labels)
        if show:
            self.show(drawn, win_name=name, wait_time=wait_time)
        if out_file is not None:
            mmcv.imwrite(mmcv.rgb2bgr(drawn), out_file)
        else:
            self.add_image(name, drawn, step)

    def draw_panels(self,
                    image: np.ndarray,
                    data_sample: SegDataSample,
                    draw_gt: bool = True,
                    draw_pred: bool = True,
                    with_labels: Optional[bool] = True) -> np.ndarray:
        """Compose the panels (see :meth:`add_datasample`) into one RGB image."""
        classes = self.dataset_meta.get('classes', None)
        palette = self.dataset_meta.get('palette', None)
        panels: List[np.ndarray] = []
        titles: List[str] = []
        for flag, key, title in ((draw_gt, 'gt_sem_seg', 'ground truth'),
                                 (draw_pred, 'pred_sem_seg', 'prediction')):
            if flag and key in data_sample:
                if classes is None:
                    raise ValueError('DToPVisualizer needs class names (dataset_meta) to '
                                     'draw segmentation maps.')
                panels.append(self._draw_sem_seg(image, getattr(data_sample, key),
                                                 classes, palette, with_labels))
                titles.append(title)
        exit_panel, fractions, num_stages = self.draw_exit_panel(image, data_sample)
        panels.append(exit_panel)
        titles.append('token exit stage')
        gap = np.full((image.shape[0], 4, 3), 255, np.uint8)
        if self.with_titles:
            th = max(16, min(28, image.shape[0] // 12))
            panels = [_title(p, t, th) for p, t in zip(panels, titles)]
            gap = np.full((panels[0].shape[0], 4, 3), 255, np.uint8)
        row = [panels[0]]
        for p in panels[1:]:
            row += [gap, p]
        drawn = np.concatenate(row, axis=1)
        if self.with_titles:
            legend = stage_legend(drawn.shape[1], num_stages, fractions,
                                  self.stage_colors or stage_colors(num_stages),
                                  height=max(18, min(28, image.shape[0] // 10)))
            drawn = np.concatenate([drawn, legend], axis=0)
        self.set_image(drawn)
        return drawn
