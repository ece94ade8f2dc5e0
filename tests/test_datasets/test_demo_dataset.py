"""The embedded demo dataset: generator determinism, labels, sizes, dataset type."""
import hashlib
import os
import os.path as osp

import cv2
import numpy as np
import pytest

from dtop.datasets import CONFUSABLE_PAIRS, DEMO_CLASSES, DEMO_PALETTE, DToPDemoDataset
from dtop.datasets import demo_generator as gen


def _digest(root):
    h = hashlib.sha256()
    for dirpath, _, files in sorted(os.walk(root)):
        for f in sorted(files):
            h.update(f.encode())
            with open(osp.join(dirpath, f), 'rb') as fh:
                h.update(fh.read())
    return h.hexdigest()


def test_generation_is_deterministic_and_seeded(tmp_path):
    a, b, c = tmp_path / 'a', tmp_path / 'b', tmp_path / 'c'
    gen.generate_demo_dataset(str(a), num_train=4, num_val=2, seed=3)
    gen.generate_demo_dataset(str(b), num_train=4, num_val=2, seed=3)
    gen.generate_demo_dataset(str(c), num_train=4, num_val=2, seed=4)
    assert _digest(a) == _digest(b)
    assert _digest(a) != _digest(c)


def test_parallel_generation_writes_the_same_files(tmp_path):
    kw = dict(num_train=5, num_val=2, seed=1, height_range=(48, 80), width_range=(64, 96))
    gen.generate_demo_dataset(str(tmp_path / 'one'), workers=1, **kw)
    gen.generate_demo_dataset(str(tmp_path / 'two'), workers=2, **kw)
    assert _digest(tmp_path / 'one') == _digest(tmp_path / 'two')
    assert len(os.listdir(tmp_path / 'two' / 'images' / 'training')) == 5


def test_an_image_does_not_depend_on_the_split_size(tmp_path):
    gen.generate_demo_dataset(str(tmp_path / 'small'), num_train=2, num_val=1, seed=0)
    gen.generate_demo_dataset(str(tmp_path / 'large'), num_train=5, num_val=3, seed=0)
    for sub, name in (('training', 'demo_training_00001'), ('validation', 'demo_validation_00000')):
        for kind, ext in (('images', '.jpg'), ('annotations', '.png')):
            p1 = tmp_path / 'small' / kind / sub / (name + ext)
            p2 = tmp_path / 'large' / kind / sub / (name + ext)
            assert p1.read_bytes() == p2.read_bytes()


def test_layout_labels_and_sizes(tmp_path):
    names = gen.generate_demo_dataset(str(tmp_path), num_train=24, num_val=6, seed=0,
                                      height_range=(100, 140), width_range=(120, 180))
    assert len(names['train']) == 24 and len(names['val']) == 6
    shapes, seen = set(), set()
    for split, sub in (('train', 'training'), ('val', 'validation')):
        for name in names[split]:
            img = cv2.imread(str(tmp_path / 'images' / sub / (name + '.jpg')))
            ann = cv2.imread(str(tmp_path / 'annotations' / sub / (name + '.png')),
                             cv2.IMREAD_UNCHANGED)
            assert img is not None and ann is not None
            assert ann.dtype == np.uint8 and ann.ndim == 2
            assert img.shape[:2] == ann.shape
            assert 100 <= img.shape[0] <= 140 and 120 <= img.shape[1] <= 180
            assert ann.max() <= len(DEMO_CLASSES)  # 0 = unlabeled, 1..K classes
            shapes.add(img.shape[:2])
            seen.update(np.unique(ann).tolist())
    assert any(h != w for h, w in shapes), 'sizes should not all be square'
    assert len(shapes) > 10, 'sizes should vary'
    assert len(seen - {0}) >= 8, f'only classes {sorted(seen)} appear in 30 scenes'


def test_scene_has_large_regions_and_several_classes():
    rng = np.random.default_rng(0)
    fracs, ncls = [], []
    for _ in range(20):
        img, lab = gen.generate_scene(rng, 160, 224)
        assert img.shape == (160, 224, 3) and img.dtype == np.uint8
        counts = np.bincount(lab.ravel(), minlength=len(DEMO_CLASSES) + 1)
        fracs.append(counts.max() / lab.size)
        ncls.append((counts[1:] > 0).sum())
    # Large uniform regions exist (easy tokens) and scenes are not single-class.
    assert np.mean(fracs) > 0.35
    assert np.mean(ncls) >= 2.5


def _radial_bands(texture):
    """Share of the texture's spectral energy in 4 radial frequency bands."""
    t = texture.mean(axis=2)
    p = np.abs(np.fft.fft2(t - t.mean())) ** 2
    r = np.hypot(np.fft.fftfreq(t.shape[0])[:, None], np.fft.fftfreq(t.shape[1])[None])
    edges = [1e-4, 0.04, 0.1, 0.2, 0.8]
    e = np.array([p[(r >= lo) & (r < hi)].sum() for lo, hi in zip(edges[:-1], edges[1:])])
    return e / e.sum()


def test_confusable_pairs_share_colour_but_not_texture():
    rng = np.random.default_rng(1)
    for a, b in CONFUSABLE_PAIRS:
        # the same hue, the second TWIN_SHADE darker
        ca, cb = np.asarray(gen.CLASS_COLORS[a]), np.asarray(gen.CLASS_COLORS[b])
        np.testing.assert_allclose(cb, gen.TWIN_SHADE * ca, atol=0.5)
        # Same colour law up to the shade: the mean colours differ by the shade offset,
        # give or take the per-region jitter ...
        ma = gen.class_appearance(rng, a, (64, 64)).mean(axis=(0, 1))
        mb = gen.class_appearance(rng, b, (64, 64)).mean(axis=(0, 1))
        assert np.abs((ma - mb) - (ca - cb)).max() < 45
        # ... but a nearest-centroid classifier on the radial spectrum separates them.
        fa = [_radial_bands(gen.TEXTURES[a](rng, (64, 64))) for _ in range(12)]
        fb = [_radial_bands(gen.TEXTURES[b](rng, (64, 64))) for _ in range(12)]
        ca, cb = np.mean(fa[:6], 0), np.mean(fb[:6], 0)
        correct = sum(np.abs(f - ca).sum() < np.abs(f - cb).sum() for f in fa[6:]) + \
            sum(np.abs(f - cb).sum() < np.abs(f - ca).sum() for f in fb[6:])
        assert correct >= 11, (a, b, correct)


def test_invalid_arguments_raise(tmp_path):
    with pytest.raises(ValueError, match='split'):
        gen.generate_split(str(tmp_path), 'test', 1)
    with pytest.raises(ValueError, match='height_range'):
        gen.generate_split(str(tmp_path), 'train', 1, height_range=(200, 100))
    with pytest.raises(ValueError, match='16'):
        gen.generate_scene(np.random.default_rng(0), 8, 64)
    with pytest.raises(KeyError, match='unknown demo class'):
        gen.class_appearance(np.random.default_rng(0), 'cat', (8, 8))


def test_cli(tmp_path, capsys):
    gen.main(['--out', str(tmp_path), '--num-train', '2', '--num-val', '1', '--seed', '5'])
    assert 'demo dataset: 2 train + 1 val images' in capsys.readouterr().out
    assert len(os.listdir(tmp_path / 'images' / 'training')) == 2
    assert len(os.listdir(tmp_path / 'annotations' / 'validation')) == 1


def test_registered_dataset_reads_the_ade20k_convention(tmp_path):
    from mmseg.registry import DATASETS
    gen.generate_demo_dataset(str(tmp_path), num_train=3, num_val=2, seed=0)
    ds = DATASETS.build(dict(
        type='DToPDemoDataset', data_root=str(tmp_path),
        data_prefix=dict(img_path='images/validation', seg_map_path='annotations/validation'),
        pipeline=[dict(type='LoadImageFromFile'), dict(type='LoadAnnotations'),
                  dict(type='PackSegInputs')]))
    assert isinstance(ds, DToPDemoDataset)
    assert len(ds) == 2
    assert tuple(ds.metainfo['classes']) == DEMO_CLASSES
    assert [tuple(c) for c in ds.metainfo['palette']] == list(DEMO_PALETTE)
    assert ds.reduce_zero_label
    sample = ds[0]['data_samples']
    label = sample.gt_sem_seg.data.numpy()[0]
    raw = cv2.imread(str(tmp_path / 'annotations' / 'validation' / 'demo_validation_00000.png'),
                     cv2.IMREAD_UNCHANGED)
    # reduce_zero_label: 0 -> 255 (ignore), i + 1 -> i.
    np.testing.assert_array_equal(label[raw == 0], 255)
    np.testing.assert_array_equal(label[raw > 0], raw[raw > 0].astype(np.int64) - 1)
