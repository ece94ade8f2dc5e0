"""The refactors of configs/segvit, configs/dtop and configs/demo changed no resolved value.

``pre_refactor/`` holds the leaf configs as they were before the refactors: the eight
SegViT rows (prune configs re-declaring their schedule, PC-59/COCO BASE configs
re-declaring the whole head dict) and the six demo configs (one 150-line SegViT demo
BASE config; SETR/Segmenter demos inheriting the SegViT ones and pasting their heads
into both their BASE and prune configs). They are stored as ``*.py.txt`` (data, not
code) and copied to ``*.py`` in a temporary tree whose ``_base_`` is a symlink to the
*current* ``configs/_base_``, so the comparison stays valid when the shared
model/dataset/runtime bases change. Old and new must resolve identically key by key:
model, data, optimizer, schedule, hooks, everything.
"""
import os
import shutil
from pathlib import Path

import pytest
from mmengine.config import Config

ROOT = Path(__file__).resolve().parents[2]
OLD = Path(__file__).resolve().parent / 'pre_refactor'
SUFFIX = '.txt'  # pre_refactor/**/X.py.txt is the frozen copy of configs/**/X.py


def _frozen(folders):
    return sorted(f'{d}/{p.name[:-len(SUFFIX)]}' for d in folders
                  for p in (OLD / d).glob('*.py' + SUFFIX))


LEAVES = _frozen(('segvit', 'dtop'))
DEMO_LEAVES = _frozen(('demo',))
DEMO_MODEL_PIECES = {'segvit': 'demo_vit-t16-8l.py',
                     'setr-naive': 'demo_setr-naive_vit-t16-8l.py',
                     'segmenter-mask': 'demo_segmenter-mask_vit-t16-8l.py'}


def _resolve(path: Path) -> dict:
    return Config.fromfile(str(path), import_custom_modules=False).to_dict()


@pytest.fixture(scope='module')
def old_tree(tmp_path_factory):
    tree = tmp_path_factory.mktemp('old') / 'configs'
    tree.mkdir()
    os.symlink(ROOT / 'configs' / '_base_', tree / '_base_')
    for d in ('segvit', 'dtop', 'demo'):
        (tree / d).mkdir()
        for p in (OLD / d).glob('*.py' + SUFFIX):
            shutil.copyfile(p, tree / d / p.name[:-len(SUFFIX)])
    return tree


def test_every_shipped_leaf_has_a_pre_refactor_twin():
    shipped = sorted(f'{d}/{p.name}' for d, pattern in (('segvit', 'segvit_*.py'),
                                                         ('dtop', 'dtop_segvit_*.py'))
                     for p in (ROOT / 'configs' / d).glob(pattern))
    assert len(LEAVES) == 8
    assert shipped == LEAVES


@pytest.mark.parametrize('leaf', LEAVES + DEMO_LEAVES)
def test_resolved_config_is_unchanged(leaf, old_tree):
    old, new = _resolve(old_tree / leaf), _resolve(ROOT / 'configs' / leaf)
    differing = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    assert not differing, f'{leaf}: keys changed by the refactor: {differing}'
    # the facts the refactor touched, spelled out
    for key in ('model', 'optim_wrapper', 'param_scheduler', 'train_cfg', 'default_hooks'):
        assert new[key] == old[key], key


@pytest.mark.parametrize('leaf', [x for x in LEAVES if x.startswith('dtop/')])
def test_prune_configs_take_their_schedule_from_schedules_base(leaf):
    text = (ROOT / 'configs' / leaf).read_text()
    iters = '20k' if '-20k_' in leaf else '40k'
    assert f"'../_base_/schedules/schedule_{iters}.py'" in text
    assert 'param_scheduler' not in text and 'max_iters' not in text


@pytest.mark.parametrize('leaf', [x for x in LEAVES if 'pascal' in x or 'coco' in x])
def test_head_settings_are_declared_once(leaf):
    """The PC-59/COCO rows override classes and attention heads only: the ATM head
    and loss settings come from _base_/models/dtop_vit-l16.py, which takes them from
    dtop_vit-b16.py."""
    texts = [(ROOT / 'configs' / leaf).read_text()]
    texts += [p.read_text() for p in (ROOT / 'configs/segvit').glob('_base_*.py')]
    for text in texts:
        for key in ('eos_coef', 'mask_weight', 'dice_weight', "type='ATMPruneHead'"):
            assert key not in text, (leaf, key)


def test_every_demo_config_has_a_pre_refactor_twin():
    # the EoMT demo came after the refactor (tests/test_demo/test_demo_eomt_configs.py)
    shipped = sorted(f'demo/{p.name}' for p in (ROOT / 'configs/demo').glob('*.py')
                     if 'eomt' not in p.name)
    assert len(DEMO_LEAVES) == 6
    assert shipped == DEMO_LEAVES


@pytest.mark.parametrize('leaf', [x for x in DEMO_LEAVES if x.startswith('demo/dtop_')])
def test_demo_prune_configs_share_the_bases_of_their_base_config(leaf):
    """A demo prune config = the model and data bases of its BASE demo config + the
    prune schedule + p0: no head or schedule setting is declared in the leaf."""
    prune = (ROOT / 'configs' / leaf).read_text()
    model = leaf.split('_')[1]  # segvit / setr-naive / segmenter-mask
    base_leaf = ROOT / 'configs/demo' / f'{model}_vit-t16-8l_1xb8-1200_demo-128x128.py'
    base = base_leaf.read_text()
    model_piece = DEMO_MODEL_PIECES[model]
    for piece in (f"'../_base_/models/{model_piece}'", "'../_base_/datasets/demo.py'"):
        assert piece in prune and piece in base, piece
    assert "'../_base_/schedules/demo_prune.py'" in prune
    assert "'../_base_/schedules/demo_1200.py'" in base
    for key in ('_head', 'param_scheduler', 'max_iters', 'optim_wrapper', 'lr='):
        assert key not in prune, (leaf, key)
    new_prune = _resolve(ROOT / 'configs' / leaf)
    new_base = _resolve(base_leaf)
    for key in ('model', 'train_dataloader', 'val_dataloader', 'test_dataloader',
                'val_evaluator'):
        if key == 'model':
            new_prune[key].pop('prune_threshold'), new_base[key].pop('prune_threshold')
        assert new_prune[key] == new_base[key], (leaf, key)
