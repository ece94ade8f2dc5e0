"""tools/analysis_tools/demo_report.py on metric files shaped like tools/test.py's."""
import importlib.util
import json
import os
import os.path as osp

import pytest

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def _module():
    spec = importlib.util.spec_from_file_location(
        'demo_report', osp.join(ROOT, 'tools/analysis_tools/demo_report.py'))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _metrics(miou, exit0, exit1, gflops, gflops_noaux):
    return dict(aAcc=90.0, mIoU=miou, mAcc=80.0, GFLOPs_crop=gflops,
                GFLOPs_crop_noaux=gflops_noaux, GFLOPs_img=6 * gflops,
                GFLOPs_dense_crop=0.257, GFLOPs_dense_crop_allheads=0.27,
                exit_frac_s0=exit0, exit_frac_s1=exit1,
                active_frac_final=1 - exit0 - exit1, crops_per_img=6.0)


def _write(test_dir, stamp, metrics):
    d = osp.join(test_dir, stamp)
    os.makedirs(d)
    with open(osp.join(d, stamp + '.json'), 'w') as f:
        json.dump(metrics, f)


def test_report_with_control_and_benchmark(tmp_path, capsys):
    mod = _module()
    _write(tmp_path / 'base', '20260101_000000', _metrics(70.0, 0, 0, 0.27, 0.257))
    # An older run of the same dir must be ignored: the latest timestamp wins.
    _write(tmp_path / 'dtop', '20250101_000000', _metrics(10.0, 0.9, 0, 0.1, 0.1))
    _write(tmp_path / 'dtop', '20260101_000000', _metrics(72.5, 0.47, 0.05, 0.19, 0.18))
    _write(tmp_path / 'ctrl', '20260101_000000', _metrics(72.0, 0, 0, 0.27, 0.257))
    bench = dict(device='CPU, 2 threads', rows=[
        dict(batch_size=1, variant='dense', speedup=1.0),
        dict(batch_size=1, variant='pruned', speedup=1.31),
        dict(batch_size=16, variant='pruned', speedup=1.22)])
    with open(tmp_path / 'bench.json', 'w') as f:
        json.dump(bench, f)
    out = tmp_path / 'r' / 'report.md'
    rep = mod.main(['--base', str(tmp_path / 'base'), '--dtop', str(tmp_path / 'dtop'),
                    '--control', str(tmp_path / 'ctrl'), '--benchmark',
                    str(tmp_path / 'bench.json'), '--out', str(out)])
    text = capsys.readouterr().out
    assert [r['role'] for r in rep['rows']] == ['base', 'control', 'dtop']
    dtop = rep['rows'][-1]
    assert dtop['mIoU'] == 72.5
    assert dtop['exit_pct'] == pytest.approx([47.0, 5.0])
    assert dtop['final_pct'] == pytest.approx(48.0)
    s = rep['summary']
    assert s['delta_mIoU'] == pytest.approx(2.5)
    assert s['delta_mIoU_vs_control'] == pytest.approx(0.5)
    assert s['gflops_cut_pct'] == pytest.approx(100 * (1 - 0.19 / 0.257))
    assert s['gflops_cut_noaux_pct'] == pytest.approx(100 * (1 - 0.18 / 0.257))
    assert s['speedup'] == {1: 1.31, 16: 1.22}
    assert '| DToP | 72.50 | 0.190 | 0.180 | 47.0 % | 5.0 % | 48.0 % |' in text
    assert '1.31× (batch 1)' in text and 'fair control' in text
    assert out.read_text().startswith('| model |')
    with open(tmp_path / 'r' / 'report.json') as f:
        assert json.load(f)['control_metrics']['mIoU'] == 72.0


def test_report_without_optional_inputs(tmp_path):
    mod = _module()
    _write(tmp_path / 'base', '20260101_000000', _metrics(70.0, 0, 0, 0.27, 0.257))
    _write(tmp_path / 'dtop', '20260101_000000', _metrics(69.5, 0.4, 0.05, 0.2, 0.19))
    rep = mod.main(['--base', str(tmp_path / 'base'), '--dtop', str(tmp_path / 'dtop')])
    assert len(rep['rows']) == 2
    assert 'speedup' not in rep['summary']
    assert rep['summary']['delta_mIoU'] == pytest.approx(-0.5)


def test_report_missing_metrics(tmp_path):
    mod = _module()
    os.makedirs(tmp_path / 'empty')
    with pytest.raises(FileNotFoundError, match='no test metrics'):
        mod.latest_metrics(str(tmp_path / 'empty'))
