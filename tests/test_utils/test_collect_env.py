"""dtop.utils.collect_env: the check a user runs after installing into their own env."""
import json
import os
import subprocess
import sys
from pathlib import Path

from dtop.utils import collect_env as ce

ROOT = Path(__file__).resolve().parents[2]


def test_module_cli_reports_a_working_environment():
    proc = subprocess.run([sys.executable, '-m', 'dtop.utils.collect_env', '--json'],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    info = report['info']
    assert report['problems'] == []
    import mmcv
    import mmseg
    import torch
    assert info['PyTorch'] == torch.__version__
    assert info['MMCV'] == mmcv.__version__ and info['MMSegmentation'] == mmseg.__version__
    assert info['MMCV ops'].startswith('compiled')
    assert info['DToP modules registered'].startswith('all 9 ')


def test_tool_wrapper_reports_a_broken_stack_instead_of_crashing(tmp_path):
    """tools/misc/collect_env.py runs even when `import dtop` cannot (here: an mmseg
    that fails to import, shadowing the real one) and names what is broken."""
    fake = tmp_path / 'mmseg'
    fake.mkdir()
    (fake / '__init__.py').write_text('raise ImportError("simulated broken mmseg")\n')
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    proc = subprocess.run([sys.executable, 'tools/misc/collect_env.py'], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    out = proc.stdout
    assert 'MMSegmentation' in out and 'simulated broken mmseg' in out
    assert 'PROBLEMS:' in out and '- mmseg does not import' in out
    assert '- import dtop failed: ImportError: simulated broken mmseg' in out
    assert any(line.startswith('MMCV ops') and 'compiled' in line for line in out.splitlines())


def test_out_of_range_versions_and_missing_registrations_are_problems(monkeypatch):
    import torch
    monkeypatch.setitem(ce.REQUIRED_RANGES, 'torch', ('99.0', None))
    monkeypatch.setitem(ce.DTOP_REGISTRATIONS, 'MODELS',
                        ce.DTOP_REGISTRATIONS['MODELS'] + ['NoSuchHead'])
    info, problems = ce.collect_env()
    assert any(p.startswith(f'torch {torch.__version__} is outside the range DToP supports '
                            '(>=99.0)') for p in problems), problems
    assert any('MODELS.NoSuchHead' in p for p in problems), problems
    assert 'MISSING: MODELS.NoSuchHead' in info['DToP modules registered']
    assert ce.main([]) == 1


def test_version_ranges():
    assert ce._version_in_range('2.14.1+cu128', '2.0.0', None)
    assert ce._version_in_range('2.1.0', '2.0.0rc4', '2.2.0')
    assert not ce._version_in_range('2.2.0', '2.0.0rc4', '2.2.0')
    assert ce._version_in_range('2.0.0rc4', '2.0.0rc4', '2.2.0')
    assert not ce._version_in_range('2.0.0rc3', '2.0.0rc4', '2.2.0')
