"""PruneStatsHook: exit fractions, cost estimate, warnings and the summary file."""
import json
from types import SimpleNamespace

import pytest
import torch
from mmengine.logging import MessageHub

from dtop.engine.hooks import PruneStatsHook
from dtop.engine.hooks.prune_stats_hook import (backbone_cost_ratio,
                                                exit_fractions_from_keep,
                                                keep_ratios_from_outputs)


def test_keep_ratios_and_exits():
    out = {'loss': torch.tensor(1.0), 'prune.keep_ratio_s2': torch.tensor(0.25),
           'prune.keep_ratio_s1': 0.5, 'decode.acc_seg': 3.0}
    keep = keep_ratios_from_outputs(out)
    assert keep == [1.0, 0.5, 0.25]
    assert exit_fractions_from_keep(keep) == [0.5, 0.25]
    assert keep_ratios_from_outputs({'loss': 1.0}) == []
    assert keep_ratios_from_outputs(None) == []
    # Stages of 4 / 2 / 2 layers: (4 + 2 * 0.5 + 2 * 0.25) / 8.
    assert backbone_cost_ratio(keep, [4, 2, 2]) == pytest.approx(5.5 / 8)
    with pytest.raises(ValueError):
        backbone_cost_ratio(keep, [4, 4])


class _Backbone:
    stage_ranges = [(0, 4), (4, 6), (6, 8)]


def _runner(tmp_path, max_iters):
    hub = MessageHub.get_instance(f'prune_hook_test_{tmp_path.name}_{max_iters}')
    return SimpleNamespace(model=SimpleNamespace(backbone=_Backbone()), message_hub=hub,
                           work_dir=str(tmp_path), iter=0, max_iters=max_iters)


def _run(hook, runner, keeps):
    hook.before_train(runner)
    for i, k in enumerate(keeps):
        runner.iter = i
        hook.after_train_iter(runner, i, None, {'prune.keep_ratio_s1': torch.tensor(k[0]),
                                                'prune.keep_ratio_s2': torch.tensor(k[1])})
    hook.after_train(runner)


def test_hook_logs_scalars_windows_and_summary(tmp_path):
    runner = _runner(tmp_path, max_iters=6)
    hook = PruneStatsHook(interval=3)
    _run(hook, runner, [(0.5, 0.25)] * 3 + [(1.0, 1.0)] * 3)
    scalars = runner.message_hub.log_scalars
    assert scalars['train/prune.exit_s0'].current() == pytest.approx(0.0)
    assert 'train/prune.exit_s1' in scalars and 'train/prune.backbone_cost' in scalars
    with open(tmp_path / 'prune_stats.json') as f:
        summary = json.load(f)
    assert summary['stage_layers'] == [4, 2, 2]
    hist = summary['history']
    assert [h['iter'] for h in hist] == [3, 6]
    assert hist[0]['exit'] == pytest.approx([0.5, 0.25])
    assert hist[0]['backbone_cost'] == pytest.approx(5.5 / 8)
    assert hist[1]['keep'] == pytest.approx([1.0, 1.0, 1.0])


def test_hook_warns_when_nothing_exits(tmp_path, monkeypatch):
    import dtop.engine.hooks.prune_stats_hook as mod
    messages = []
    monkeypatch.setattr(mod, 'print_log',
                        lambda msg, logger=None, level=20: messages.append((msg, level)))
    runner = _runner(tmp_path, max_iters=5)
    hook = PruneStatsHook(interval=10, warn_after=4, summary_file=None)
    _run(hook, runner, [(1.0, 1.0)] * 5)
    assert [level for m, level in messages if 'no token exited' in m] == [30]
    assert not (tmp_path / 'prune_stats.json').exists()


def test_hook_is_silent_in_base_runs(tmp_path):
    runner = _runner(tmp_path, max_iters=3)
    hook = PruneStatsHook(interval=1)
    hook.before_train(runner)
    for i in range(3):
        runner.iter = i
        hook.after_train_iter(runner, i, None, {'loss': torch.tensor(1.0)})
    hook.after_train(runner)
    assert hook.history == []
    assert 'train/prune.exit_s0' not in runner.message_hub.log_scalars
    assert not (tmp_path / 'prune_stats.json').exists()


def test_hook_arguments_are_checked():
    with pytest.raises(ValueError):
        PruneStatsHook(interval=0)
    with pytest.raises(ValueError):
        PruneStatsHook(warn_after=-1)


def test_hook_is_registered():
    from mmseg.registry import HOOKS
    assert isinstance(HOOKS.build(dict(type='PruneStatsHook')), PruneStatsHook)
