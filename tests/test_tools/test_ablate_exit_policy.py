"""ablate_exit_policy.py end to end on a tiny model and dataset: confidence-based
exit against fixed-ratio and random exit at matched keep ratios. And no tool
patches the model it measures."""
import glob
import json
import os.path as osp
import subprocess
import sys

import pytest

from test_analysis_tools import ROOT, load_tool, tiny_checkpoint_setup


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    # sharpened (confident scores): p0 < 1 prunes on random weights
    return tiny_checkpoint_setup(tmp_path_factory.mktemp('ablate'))


def test_ablation_end_to_end(setup, tmp_path, capsys):
    tool = load_tool('ablate_exit_policy')
    out = tmp_path / 'ablate'
    # k = 1: few tokens are spared, so p0 = 0.5 prunes a lot (p0 = 0.9: nothing exits
    # on these weights, but the auxiliary heads run: so must they for the others)
    rows = tool.main([setup['config'], setup['ckpt'], '--thresholds', '0.5', '0.9',
                      '--out-dir', str(out), '--cfg-options', 'model.keep_topk_per_class=1'])
    printed = capsys.readouterr().out
    assert {(r['policy'], r['p0']) for r in rows} == {
        (p, t) for p in tool.POLICIES for t in (0.5, 0.9)}
    for name in tool.POLICIES:
        assert f'| {name} |' in printed
    conf = {r['p0']: r for r in rows if r['policy'] == 'confidence'}
    assert conf[0.5]['GFLOPs_img'] < conf[0.5]['GFLOPs_dense_img_allheads']
    assert conf[0.5]['ratios'][0] < 0.8  # the rule pruned
    assert conf[0.9]['GFLOPs_img'] == conf[0.9]['GFLOPs_dense_img_allheads']
    for r in rows:
        assert 'mIoU' in r and r['GFLOPs_img'] > 0 and len(r['ratios']) == 2
        ref = conf[r['p0']]
        if r['policy'].startswith('fixed'):
            # matched per-stage keep ratios: the same cost, up to whole tokens
            assert r['GFLOPs_img'] == pytest.approx(ref['GFLOPs_img'], rel=0.03)
            assert r['ratios'] == pytest.approx(ref['ratios'], abs=0.05)
        elif r['policy'] == 'random':
            assert r['GFLOPs_img'] == pytest.approx(ref['GFLOPs_img'], rel=0.1)
        if r['p0'] == 0.9:  # nothing exits; the same heads run
            assert r['GFLOPs_img'] == ref['GFLOPs_img'] and r['ratios'] == [1.0, 1.0]
    for ext in ('md', 'json', 'png'):
        assert (out / f'ablation.{ext}').stat().st_size > 0
    saved = json.loads((out / 'ablation.json').read_text())
    assert [r['policy'] for r in saved] == [r['policy'] for r in rows]
    assert 'FixedKeepRatio' in saved[1]['exit_policy']
    # a subset of the policies (confidence always runs: it sets the ratios)
    rows = tool.main([setup['config'], setup['ckpt'], '--thresholds', '0.9',
                      '--policies', 'random', '--out-dir', str(tmp_path / 'sub')])
    assert [r['policy'] for r in rows] == ['confidence', 'random']


def test_ablation_help_and_bad_arguments(setup, capsys):
    script = osp.join(ROOT, 'tools', 'analysis_tools', 'ablate_exit_policy.py')
    res = subprocess.run([sys.executable, script, '--help'], capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0 and '--policies' in res.stdout
    assert 'fixed-random' in res.stdout and '--thresholds' in res.stdout
    tool = load_tool('ablate_exit_policy')
    with pytest.raises(SystemExit):
        tool.parse_args([setup['config'], setup['ckpt'], '--thresholds', 'nan'])
    assert 'got nan' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        tool.parse_args([setup['config'], setup['ckpt'], '--policies', 'oracle'])


def test_matched_policy_keeps_the_heads_of_pruning_stages():
    tool = load_tool('ablate_exit_policy')
    fixed = tool.matched_policy('fixed-score', [1.0, 0.5], [True, False]).bind(3)
    assert fixed.prunes_at(0) and not fixed.prunes_at(1)
    rnd = tool.matched_policy('random', [0.25, 1.0], [True, True]).bind(3)
    assert rnd.probs[0] == pytest.approx(0.75) and rnd.prunes_at(1)
    with pytest.raises(ValueError, match='unknown policy'):
        tool.matched_policy('oracle', [0.5, 0.5], [True, True])


def test_no_tool_patches_the_model():
    """Tools use the model's public API: no monkeypatched methods, no private calls."""
    offenders = []
    for path in glob.glob(osp.join(ROOT, 'tools', '**', '*.py'), recursive=True):
        with open(path, encoding='utf-8') as f:
            text = f.read()
        for needle in ('types.MethodType', '_encode_decode_with_stats',
                       'select_stage_exits'):
            if needle in text:
                offenders.append(f'{osp.relpath(path, ROOT)}: {needle}')
    assert not offenders, offenders
