"""The model-zoo refactor of configs/segvit and configs/dtop changed no resolved value.

``pre_refactor/`` holds the eight leaf configs as they were before the refactor
(prune configs re-declaring their schedule, PC-59/COCO BASE configs re-declaring the
whole head dict). Both versions are resolved against the *current*
``configs/_base_`` (a symlink in a temporary tree), so the comparison stays valid
when the shared model/dataset/runtime bases change, and must be identical key by
key: model, data, optimizer, schedule, hooks, everything.
"""
import os
import shutil
from pathlib import Path

import pytest
from mmengine.config import Config

ROOT = Path(__file__).resolve().parents[2]
OLD = Path(__file__).resolve().parent / 'pre_refactor'
LEAVES = sorted(f'{d}/{p.name}' for d in ('segvit', 'dtop') for p in (OLD / d).glob('*.py'))


def _resolve(path: Path) -> dict:
    return Config.fromfile(str(path), import_custom_modules=False).to_dict()


@pytest.fixture(scope='module')
def old_tree(tmp_path_factory):
    tree = tmp_path_factory.mktemp('old') / 'configs'
    tree.mkdir()
    os.symlink(ROOT / 'configs' / '_base_', tree / '_base_')
    for d in ('segvit', 'dtop'):
        shutil.copytree(OLD / d, tree / d)
    return tree


def test_every_shipped_leaf_has_a_pre_refactor_twin():
    shipped = sorted(f'{d}/{p.name}' for d, pattern in (('segvit', 'segvit_*.py'),
                                                         ('dtop', 'dtop_segvit_*.py'))
                     for p in (ROOT / 'configs' / d).glob(pattern))
    assert len(LEAVES) == 8
    assert shipped == LEAVES


@pytest.mark.parametrize('leaf', LEAVES)
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
    and loss settings come from _base_/models/dtop_vit-l16.py."""
    texts = [(ROOT / 'configs' / leaf).read_text()]
    texts += [p.read_text() for p in (ROOT / 'configs/segvit').glob('_base_*.py')]
    for text in texts:
        for key in ('eos_coef', 'mask_weight', 'dice_weight', "type='ATMPruneHead'"):
            assert key not in text, (leaf, key)
