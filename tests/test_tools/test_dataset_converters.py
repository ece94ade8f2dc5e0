"""Dataset converters on tiny fake raw downloads (Pascal-Context, COCO-Stuff-10K)."""
import json
import os.path as osp
import sys

import numpy as np
import pytest
from PIL import Image

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, osp.join(ROOT, 'tools', 'dataset_converters'))
import coco_stuff10k  # noqa: E402
import pascal_context  # noqa: E402


# ----------------------------------------------------------------------------- RLE helpers
def rle_counts(mask):
    """Column-major run lengths of a bool mask, 0-run first (COCO RLE)."""
    flat = np.asarray(mask, dtype=np.uint8).T.reshape(-1)
    counts, cur, run = [], 0, 0
    for v in flat:
        if v == cur:
            run += 1
        else:
            counts.append(run)
            cur, run = v, 1
    counts.append(run)
    return counts


def rle_string(counts):
    """COCO compressed-RLE string (the encoder of the COCO mask API, rleToString)."""
    out = []
    for i, x in enumerate(counts):
        if i > 2:
            x -= counts[i - 2]
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = (x != -1) if (c & 0x10) else (x != 0)
            if more:
                c |= 0x20
            out.append(chr(c + 48))
    return ''.join(out)


def test_rle_decoder_roundtrip():
    rng = np.random.default_rng(0)
    for h, w in [(5, 7), (33, 20), (1, 1)]:
        mask = rng.random((h, w)) > 0.6
        mask[0, 0] = True  # first run of zeros is empty
        seg = dict(size=[h, w], counts=rle_string(rle_counts(mask)))
        np.testing.assert_array_equal(pascal_context.decode_rle(seg), mask)
        seg = dict(size=[h, w], counts=rle_counts(mask))
        np.testing.assert_array_equal(pascal_context.decode_rle(seg), mask)
    # a long run exercises multi-group values and negative deltas
    mask = np.zeros((40, 40), bool)
    mask[:, 3] = True
    mask[5:30, 20:] = True
    seg = dict(size=[40, 40], counts=rle_string(rle_counts(mask)))
    np.testing.assert_array_equal(pascal_context.decode_rle(seg), mask)
    with pytest.raises(ValueError, match='sum'):
        pascal_context.decode_rle(dict(size=[2, 2], counts=[1, 2]))
    with pytest.raises(ValueError, match='polygon'):
        pascal_context.decode_rle([[0, 0, 1, 1, 2, 0]])


# ----------------------------------------------------------------------------- Pascal-Context
def test_pascal_context_json_to_label_pngs(tmp_path, capsys):
    devkit = tmp_path / 'VOCdevkit'
    jpeg = devkit / 'VOC2010' / 'JPEGImages'
    jpeg.mkdir(parents=True)
    h, w = 6, 8
    images, anns = [], []
    for image_id, name, phase in [(2008000002, '2008_000002', 'train'),
                                  (2008000003, '2008_000003', 'val'),
                                  (2008000007, '2008_000007', 'train'),
                                  (2008000009, '2008_000009', 'test')]:
        Image.new('RGB', (w, h)).save(jpeg / f'{name}.jpg')
        images.append(dict(image_id=image_id, file_name=f'{name}.jpg', height=h, width=w,
                           phase=phase))

    def add(image_id, cat, mask, compressed=True):
        counts = rle_counts(mask)
        anns.append(dict(id=len(anns) + 1, image_id=image_id, category_id=cat,
                         segmentation=dict(size=[h, w], counts=rle_string(counts)
                                           if compressed else counts)))

    sky, person, table = np.zeros((h, w), bool), np.zeros((h, w), bool), np.zeros((h, w), bool)
    sky[:3] = True                   # 'sky' (Detail id 360) -> label 47
    person[1:5, 2:4] = True          # 'person' (284) -> 37, painted over the sky
    table[4:, 5:] = True             # 'table' (397) -> 50
    add(2008000002, 360, sky)
    add(2008000002, 284, person, compressed=False)
    add(2008000002, 397, table)
    other = np.zeros((h, w), bool)
    other[:, :2] = True
    add(2008000003, 1, other)        # a category outside the 59 -> 0
    add(2008000003, 2, ~other)       # 'aeroplane' -> 1
    add(2008000007, 458, np.ones((h, w), bool))   # 'wood' -> 59
    js = tmp_path / 'trainval_merged.json'
    js.write_text(json.dumps(dict(images=images, annos_segmentation=anns,
                                  categories=[dict(category_id=c, name=str(c))
                                              for c in (1, 2, 284, 360, 397, 458)])))

    pascal_context.main([str(devkit), str(js)])
    assert 'outside the 59' in capsys.readouterr().out
    voc = devkit / 'VOC2010'
    lbl = voc / 'SegmentationClassContext'
    assert sorted(p.name for p in lbl.iterdir()) == [
        '2008_000002.png', '2008_000003.png', '2008_000007.png']  # test phase skipped
    splits = voc / 'ImageSets' / 'SegmentationContext'
    assert (splits / 'train.txt').read_text().split() == ['2008_000002', '2008_000007']
    assert (splits / 'val.txt').read_text().split() == ['2008_000003']

    def read(name):
        im = Image.open(lbl / f'{name}.png')
        assert im.mode == 'L' and im.size == (w, h)
        return np.array(im)

    expected = np.zeros((h, w), np.uint8)
    expected[:3] = 47
    expected[1:5, 2:4] = 37
    expected[4:, 5:] = 50
    np.testing.assert_array_equal(read('2008_000002'), expected)
    expected = np.where(other, 0, 1).astype(np.uint8)
    np.testing.assert_array_equal(read('2008_000003'), expected)
    assert (read('2008_000007') == 59).all()


def test_pascal_context_label_order_matches_mmseg_classes():
    from mmseg.datasets import PascalContextDataset59
    names = [n for _, n in pascal_context.CONTEXT59]
    assert tuple(names) == tuple(PascalContextDataset59.METAINFO['classes'])
    ids = [i for i, _ in pascal_context.CONTEXT59]
    assert ids == sorted(ids) and len(set(ids)) == 59


def test_pascal_context_bad_inputs_name_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match='VOC2010/JPEGImages'):
        pascal_context.convert(str(tmp_path), str(tmp_path / 'x.json'))
    (tmp_path / 'VOC2010' / 'JPEGImages').mkdir(parents=True)
    bad = tmp_path / 'x.json'
    bad.write_text(json.dumps(dict(images=[])))
    with pytest.raises(ValueError, match='annos_segmentation'):
        pascal_context.convert(str(tmp_path), str(bad))


# ----------------------------------------------------------------------------- COCO-Stuff-10K
def test_coco_stuff10k_mat_to_label_trainids(tmp_path, capsys):
    savemat = pytest.importorskip('scipy.io').savemat
    src = tmp_path / 'cocostuff-10k-v1.1'
    for d in ('images', 'annotations', 'imageLists'):
        (src / d).mkdir(parents=True)
    raw = np.array([[0, 1, 11, 13],
                    [12, 91, 92, 182],
                    [80, 90, 83, 150]], dtype=np.uint16)
    names = {'train': ['COCO_train2014_000000000077', 'COCO_train2014_000000000078'],
             'test': ['COCO_train2014_000000000080']}
    for split, ns in names.items():
        (src / 'imageLists' / f'{split}.txt').write_text('\n'.join(ns) + '\n')
        for i, n in enumerate(ns):
            Image.new('RGB', (4, 3), (i, 0, 0)).save(src / 'images' / f'{n}.jpg')
            savemat(str(src / 'annotations' / f'{n}.mat'),
                    dict(S=raw + i if i else raw, names=np.array(['x'], dtype=object)))
    out = tmp_path / 'coco_stuff10k'
    coco_stuff10k.main([str(src), '-o', str(out)])
    assert 'unused/unknown' in capsys.readouterr().out

    for split, sub in (('train', 'train2014'), ('test', 'test2014')):
        for n in names[split]:
            assert (out / 'images' / sub / f'{n}.jpg').read_bytes() == \
                (src / 'images' / f'{n}.jpg').read_bytes()
            assert (out / 'annotations' / sub / f'{n}_labelTrainIds.png').is_file()
    lbl = np.array(Image.open(out / 'annotations' / 'train2014' /
                              f'{names["train"][0]}_labelTrainIds.png'))
    # 0 unlabeled stays 0; 1..11 keep their id; 13 -> 12; unused 12/91/83 -> 0;
    # stuff 92..182 -> 81..171 (150 -> 139); 80 -> 80 - 9 unused ids below it = 71;
    # 90 -> 80 (the last thing).
    expected = np.array([[0, 1, 11, 12],
                         [0, 0, 81, 171],
                         [71, 80, 0, 139]], dtype=np.uint8)
    np.testing.assert_array_equal(lbl, expected)


def test_coco_stuff10k_lut_covers_mmseg_classes():
    from mmseg.datasets import COCOStuffDataset
    lut = coco_stuff10k.raw_to_train_id_lut()
    assert len(COCOStuffDataset.METAINFO['classes']) == coco_stuff10k.NUM_CLASSES
    assert sorted(set(lut[1:183].tolist()) - {0}) == list(range(1, 172))
    assert lut[0] == 0 and lut[1] == 1 and lut[92] == 81 and lut[182] == 171


def test_coco_stuff10k_missing_files_name_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match='cocostuff-10k-v1.1'):
        coco_stuff10k.convert(str(tmp_path))
    for d in ('images', 'annotations', 'imageLists'):
        (tmp_path / d).mkdir()
    (tmp_path / 'imageLists' / 'train.txt').write_text('COCO_x\n')
    with pytest.raises(FileNotFoundError, match='images/COCO_x.jpg'):
        coco_stuff10k.convert(str(tmp_path))
