"""sweep_threshold.py notices a busy machine and disagreeing repeats, loads
its checkpoint strictly and validates the thresholds."""
import json

import pytest
import torch
from mmengine.registry import init_default_scope
from mmseg.registry import MODELS

from dtop.utils import timing
from dtop.utils.errors import CheckpointMismatchError
from test_analysis_tools import load_tool, tiny_checkpoint_setup


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    return tiny_checkpoint_setup(tmp_path_factory.mktemp('sweep_rob'), num_images=2,
                                 sharpened=False)


def fake_load(monkeypatch, loadavg_1m, others_cpu_frac, own_cpu_frac):
    """``timing.LoadMonitor`` reports this load (2 CPUs, 1 s) for every run."""

    class FakeMonitor:
        def stop(self):
            return dict(loadavg_1m=loadavg_1m, cpus=2.0, others_cpu_frac=others_cpu_frac,
                        own_cpu_frac=own_cpu_frac, wall_s=1.0)

    monkeypatch.setattr(timing, 'LoadMonitor', FakeMonitor)


def test_busy_machine_and_spread_are_reported(setup, tmp_path, monkeypatch):
    sweep = load_tool('sweep_threshold')
    fake_load(monkeypatch, loadavg_1m=3.2, others_cpu_frac=0.6, own_cpu_frac=0.4)
    work = tmp_path / 'sweep'
    rows = sweep.main([setup['config'], setup['ckpt'], '--thresholds', '1.0',
                       '--repeats', '2', '--max-spread', '0', '--work-dir', str(work)])
    (row,) = rows
    assert row['repeats'] == 2 and row['s_per_img_spread'] > 0
    assert row['loadavg_1m'] == 3.2 and row['others_cpu_pct'] == pytest.approx(60)
    assert any('other processes used 60%' in w for w in row['warnings'])
    assert any('the 2 repeats disagree by' in w for w in row['warnings'])
    md = (work / 'sweep.md').read_text()
    assert '**Unreliable timing** (s_per_img):' in md and 'other processes used 60%' in md
    assert json.loads((work / 'sweep.json').read_text())[0]['warnings'] == row['warnings']


def test_quiet_single_run_has_no_spread_warning(setup, tmp_path, monkeypatch):
    sweep = load_tool('sweep_threshold')
    fake_load(monkeypatch, loadavg_1m=0.1, others_cpu_frac=0.0, own_cpu_frac=0.5)
    rows = sweep.main([setup['config'], setup['ckpt'], '--thresholds', '0.9',
                       '--work-dir', str(tmp_path / 's')])
    assert rows[0]['warnings'] == [] and rows[0]['s_per_img_spread'] == 0.0
    assert 'Unreliable' not in (tmp_path / 's' / 'sweep.md').read_text()


def test_thresholds_and_checkpoint_are_validated(setup, tmp_path, capsys):
    sweep = load_tool('sweep_threshold')
    with pytest.raises(SystemExit):
        sweep.parse_args([setup['config'], setup['ckpt'], '--thresholds', 'nan'])
    assert 'got nan' in capsys.readouterr().err
    wide = dict(setup['model_cfg'])
    wide['backbone'] = dict(wide['backbone'], embed_dims=48)
    for key in ('decode_head',):
        wide[key] = dict(wide[key], in_channels=48)
    wide['auxiliary_head'] = [dict(h, in_channels=48) for h in wide['auxiliary_head']]
    init_default_scope('mmseg')
    path = tmp_path / 'wide.pth'
    torch.save(dict(state_dict=MODELS.build(wide).state_dict()), str(path))
    with pytest.raises(CheckpointMismatchError, match='does not fit the model'):
        sweep.main([setup['config'], str(path), '--thresholds', '1.0',
                    '--work-dir', str(tmp_path / 'w')])
