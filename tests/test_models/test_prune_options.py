"""validate_prune_threshold: what enters as p0 is a finite number, named otherwise."""
import argparse
import math

import numpy as np
import pytest
from mmengine.config import DictAction

from dtop.models.pruning.options import validate_prune_threshold


def _dictaction(text):
    """What ``--cfg-options model.prune_threshold=TEXT`` puts into the config."""
    p = argparse.ArgumentParser()
    p.add_argument('--o', nargs='+', action=DictAction)
    return p.parse_args(['--o', f'model.prune_threshold={text}']).o['model.prune_threshold']


@pytest.mark.parametrize('value,stages,expected', [
    (0.9, 3, [0.9, 0.9]),
    (1, 3, [None, None]),
    (None, 3, [None, None]),
    ([0.8, 1.0], 3, [0.8, None]),
    ((0.8, 0.95, 0.5), 3, [0.8, 0.95]),  # the final stage's value is ignored
    (np.float32(0.5), 2, [0.5]),
    (np.array([0.25, 2.0]), 3, [0.25, None]),
    (0, 2, [0.0]),
    (0.7, 1, []),
])
def test_valid_values(value, stages, expected):
    out = validate_prune_threshold(value, stages)
    assert out == pytest.approx(expected) if None not in expected else out == expected
    assert all(v is None or isinstance(v, float) for v in out)


def test_dictaction_turns_abc_into_a_string_which_is_named():
    raw = _dictaction('abc')
    assert raw == 'abc'  # not split into characters: the whole string is named
    with pytest.raises(ValueError, match=r"got the string 'abc'; expected a number"):
        validate_prune_threshold(raw, 3)
    with pytest.raises(ValueError, match=r"prune_threshold\[1\]: got the string 'x'"):
        validate_prune_threshold(_dictaction('[0.5,x]'), 3)


def test_nan_and_infinity_are_named():
    raw = _dictaction('nan')
    assert isinstance(raw, float) and math.isnan(raw)
    with pytest.raises(ValueError, match='got nan; a NaN threshold would silently disable'):
        validate_prune_threshold(raw, 3)
    with pytest.raises(ValueError, match=r'prune_threshold\[0\]: got nan'):
        validate_prune_threshold([float('nan'), 0.9], 3)
    with pytest.raises(ValueError, match='got inf; expected a finite number'):
        validate_prune_threshold(_dictaction('inf'), 3)


@pytest.mark.parametrize('value,message', [
    ([0.9, 0.9, 0.9, 0.9], r'got 4 values \[0.9, 0.9, 0.9, 0.9\] for a model with 3 stages'),
    ([], 'got 0 values'),
    (-0.1, 'a negative threshold'),
    (True, r'got True \(bool\)'),
    ('0.9', 'it looks like a number: write it without quotes'),
    ({'a': 1}, r"got \{'a': 1\} \(dict\)"),
])
def test_invalid_values(value, message):
    with pytest.raises(ValueError, match=message):
        validate_prune_threshold(value, 3)


def test_bad_num_stages():
    with pytest.raises(ValueError, match='num_stages must be an int >= 1'):
        validate_prune_threshold(0.9, 0)
