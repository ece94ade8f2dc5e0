"""Exit-map rendering and the DToP visualizer."""
import os.path as osp

import cv2
import numpy as np
import pytest
import torch
from mmengine.structures import PixelData
from mmseg.structures import SegDataSample

from dtop.visualization import (DEFAULT_STAGE_COLORS, DToPVisualizer, colorize_exit_map,
                                exit_fractions, exit_map_to_original, render_exit_map,
                                stage_colors, stage_legend)


@pytest.mark.parametrize('num_stages', [1, 2, 3, 4, 6])
def test_stage_colors_are_distinct(num_stages):
    colors = stage_colors(num_stages)
    assert len(colors) == num_stages
    assert len(set(colors)) == num_stages
    assert all(len(c) == 3 and all(0 <= v <= 255 for v in c) for c in colors)


def test_three_stages_use_the_default_palette():
    assert stage_colors(3) == [tuple(c) for c in DEFAULT_STAGE_COLORS]
    with pytest.raises(ValueError):
        stage_colors(0)


def test_colorize_gives_each_stage_its_colour():
    rng = np.random.default_rng(0)
    exit_map = rng.integers(0, 3, size=(40, 56))
    out = colorize_exit_map(exit_map, 3)
    assert out.shape == (40, 56, 3) and out.dtype == np.uint8
    for s, c in enumerate(stage_colors(3)):
        sel = out[exit_map == s]
        np.testing.assert_array_equal(sel, np.broadcast_to(c, sel.shape))
    with pytest.raises(ValueError, match='values'):
        colorize_exit_map(np.full((2, 2), 3), 3)
    with pytest.raises(ValueError, match='colours'):
        colorize_exit_map(exit_map, 3, colors=[(0, 0, 0)])


def test_render_blends_and_outlines():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, size=(32, 48, 3), dtype=np.uint8)
    exit_map = np.zeros((32, 48), np.uint8)
    exit_map[:, 24:] = 2
    # alpha 0 and no borders: the image unchanged; alpha 1: pure stage colours.
    np.testing.assert_array_equal(render_exit_map(image, exit_map, 3, 0.0, draw_borders=False),
                                  image)
    full = render_exit_map(image, exit_map, 3, 1.0, draw_borders=False)
    np.testing.assert_array_equal(full, colorize_exit_map(exit_map, 3))
    # Borders darken exactly the pixels where the stage changes.
    bordered = render_exit_map(image, exit_map, 3, 1.0, draw_borders=True)
    changed = np.any(bordered != full, axis=2)
    assert changed[:, 24].all() and changed.sum() == 32
    with pytest.raises(ValueError, match='sizes differ'):
        render_exit_map(image, exit_map[:10], 3)


def test_exit_map_to_original_removes_padding_flips_and_resizes():
    m = np.zeros((20, 30), np.uint8)
    m[:16, :24] = 1  # the real image; the rest is padding (right 6, bottom 4)
    m[:16, :4] = 2
    meta = dict(padding_size=[0, 6, 0, 4], ori_shape=(32, 48), flip=True,
                flip_direction='horizontal')
    out = exit_map_to_original(torch.from_numpy(m), meta)
    assert out.shape == (32, 48) and out.dtype == np.uint8
    assert set(np.unique(out)) == {1, 2}
    # Flipped: the stage-2 band is now on the right.
    assert (out[:, -8:] == 2).all() and (out[:, :8] == 1).all()
    np.testing.assert_array_equal(exit_map_to_original(m, None), m)
    with pytest.raises(ValueError):
        exit_map_to_original(np.zeros((2, 3, 4)), None)


def test_exit_fractions():
    counts = np.array([[64, 40, 30], [64, 64, 10]])
    fr = exit_fractions(counts, 64)
    np.testing.assert_allclose(fr, [(24 + 0) / 128, (10 + 54) / 128, 40 / 128])
    assert fr.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(exit_fractions(torch.tensor([64, 64, 64]), 64), [0, 0, 1])


def test_legend_strip():
    strip = stage_legend(300, 3, fractions=[0.5, 0.2, 0.3], height=22)
    assert strip.shape == (22, 300, 3)
    # Every stage colour is drawn in the legend.
    for c in stage_colors(3):
        assert np.all(strip == np.array(c, np.uint8), axis=2).any()


def _sample(h=48, w=64, num_classes=4, with_stats=True):
    rng = np.random.default_rng(2)
    ds = SegDataSample()
    ds.gt_sem_seg = PixelData(data=torch.from_numpy(rng.integers(0, num_classes, (1, h, w))))
    ds.pred_sem_seg = PixelData(data=torch.from_numpy(rng.integers(0, num_classes, (1, h, w))))
    meta = dict(ori_shape=(h, w), img_shape=(h, w), padding_size=[0, 16, 0, 16])
    if with_stats:
        exit_map = torch.full((h + 16, w + 16), 2, dtype=torch.uint8)
        exit_map[:16, :32] = 0
        exit_map[16:32, :] = 1
        meta['dtop_stats'] = dict(token_counts=torch.tensor([[20, 12, 8]]), grid_tokens=20,
                                  crop_shape=(h + 16, w + 16), exit_map=exit_map)
    ds.set_metainfo(meta)
    return ds


def test_visualizer_adds_the_exit_panel(tmp_path):
    classes = ['a', 'b', 'c', 'd']
    palette = [[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0]]
    vis = DToPVisualizer(name='test_vis_exit', classes=classes, palette=palette,
                         save_dir=str(tmp_path), with_titles=False)
    image = np.full((48, 64, 3), 128, np.uint8)
    out = str(tmp_path / 'out.png')
    vis.add_datasample('x', image, _sample(), out_file=out)
    drawn = cv2.imread(out)[..., ::-1]
    # GT | gap | prediction | gap | exit map.
    assert drawn.shape == (48, 64 * 3 + 2 * 4, 3)
    panel = drawn[:, -64:].astype(int)
    # Each stage shows up in its colour (blended over the grey image).
    for s, region in ((0, (slice(2, 14), slice(2, 30))), (1, (slice(18, 30), slice(2, 62))),
                      (2, (slice(34, 46), slice(2, 62)))):
        c = np.array(stage_colors(3)[s])
        blended = 0.45 * 128 + 0.55 * c
        assert np.abs(panel[region] - blended).max() <= 2, s


def test_visualizer_titles_and_legend(tmp_path):
    vis = DToPVisualizer(name='test_vis_titles', classes=['a', 'b', 'c', 'd'],
                         palette=[[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0]])
    drawn = vis.draw_panels(np.zeros((48, 64, 3), np.uint8), _sample())
    assert drawn.shape[1] == 64 * 3 + 8 and drawn.shape[0] > 48
    assert np.array_equal(vis.get_image(), drawn)


def test_visualizer_without_stats_is_the_mmseg_one(tmp_path):
    vis = DToPVisualizer(name='test_vis_plain', classes=['a', 'b', 'c', 'd'],
                         palette=[[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0]])
    out = str(tmp_path / 'plain.png')
    vis.add_datasample('x', np.zeros((48, 64, 3), np.uint8), _sample(with_stats=False),
                       out_file=out)
    assert cv2.imread(out).shape == (48, 128, 3)  # GT | prediction


def test_visualizer_saves_to_backend(tmp_path):
    vis = DToPVisualizer(name='test_vis_backend', classes=['a', 'b', 'c', 'd'],
                         palette=[[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0]],
                         vis_backends=[dict(type='LocalVisBackend')], save_dir=str(tmp_path))
    vis.add_datasample('img', np.zeros((48, 64, 3), np.uint8), _sample(), step=3)
    assert osp.isfile(tmp_path / 'vis_data' / 'vis_image' / 'img_3.png')
