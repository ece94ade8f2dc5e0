"""tools/device_check.sh: the GPU check's dry run on the CPU, and its argument checks.

``--dry-run --no-bundle`` with ``DEVICE_CHECK_QUICK=1`` runs every step of the GPU
check with its CPU stand-in and tiny settings (the CUDA tests on the CPU, a 1-crop
benchmark of the demo config, 1 fp32 training iteration, dist_test.sh on that
checkpoint), so the commands the GPU run will issue are exercised here. With a
prepared ``device_bundle/`` the dry run also checks its MANIFEST and imports
mmengine/mmseg from the bundle's install.
"""
import os
import subprocess
import sys

import pytest
import torch

from _tiny_runs import ROOT

SCRIPT = ROOT / 'tools' / 'device_check.sh'
BUNDLE = ROOT / 'device_bundle'
STEP_ROWS = ('0. environment', '0. bundle', '0. imports', '0. demo data',
             '1. packed attention + tiny model', '2. benchmark demo',
             '3a. train demo', '3b. dist_test.sh')


def run(*args, timeout=600, **env):
    """``bash tools/device_check.sh ARGS`` with ENV; PYTHON defaults to the script's
    own choice (the checkout's .venv for --dry-run)."""
    full_env = {k: v for k, v in os.environ.items()
                if not k.startswith(('DEVICE_CHECK_', 'DEVICE_BUNDLE_'))
                and k not in ('GPUS', 'PORT', 'PYTHON')}
    full_env.update(env)
    return subprocess.run(['bash', str(SCRIPT), *map(str, args)], cwd=ROOT, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def table_rows(text):
    """``{step: (result, key numbers, seconds)}`` of the report's markdown table."""
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip('|').split('|')]
        if line.startswith('| ') and len(cells) == 4 and cells[0] not in ('step', '---'):
            rows[cells[0]] = tuple(cells[1:])
    return rows


def check_report(proc, work):
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    report = (work / 'report.md').read_text()
    assert report.startswith('### DRY RUN of tools/device_check.sh')
    assert '| step | result | key numbers | seconds |' in report
    rows = table_rows(report)
    for prefix in STEP_ROWS:
        match = [step for step in rows if step.startswith(prefix)]
        assert match, f'no row {prefix!r} in\n{report}'
        assert rows[match[0]][0] == 'PASS', rows[match[0]]
    assert report in proc.stdout  # the same table on stdout
    tests = next(v for k, v in rows.items() if k.startswith('1. '))
    assert 'passed' in tests[1] and 'failed' not in tests[1]
    test_row = next(v for k, v in rows.items() if k.startswith('3b. '))
    assert 'mIoU' in test_row[1]
    assert 'Benchmark `segvit_vit-t16-8l_1xb8-1200_demo-128x128.py`' in report
    for variant in ('dense', 'pruned', 'dense@bf16', 'pruned@bf16'):
        assert f'| 1 | {variant} |' in report
    return rows


@pytest.mark.slow  # 35-70 s on 2 cores: 7 Python processes that import mmseg
def test_dry_run_without_bundle_runs_every_step(tmp_path):
    work = tmp_path / 'work'
    proc = run('--dry-run', '--no-bundle', '--work', work, DEVICE_CHECK_QUICK='1')
    rows = check_report(proc, work)
    assert rows['0. bundle'][1].startswith('--no-bundle')
    assert (work / 'train' / 'last_checkpoint').is_file()
    assert (work / 'bench_demo.json').is_file()


@pytest.mark.slow
@pytest.mark.skipif(not (BUNDLE / 'MANIFEST.txt').is_file(),
                    reason='device_bundle/ was never prepared '
                           '(bash tools/device_check.sh --prepare)')
def test_dry_run_with_the_bundle_imports_from_it(tmp_path):
    work = tmp_path / 'work'
    proc = run('--dry-run', '--work', work, DEVICE_CHECK_QUICK='1')
    rows = check_report(proc, work)
    assert 'sha256 ok' in rows['0. bundle'][1]
    assert f'mmengine 0.10.7 ({work}/site)' in rows['0. imports'][1]
    assert 'C++20 patch ok' in rows['0. mmcv ops'][1]


def test_usage_and_argument_errors(tmp_path):
    proc = run('--help', timeout=30)
    assert proc.returncode == 0 and '--prepare' in proc.stdout and '--dry-run' in proc.stdout
    proc = run('--bogus', timeout=30)
    assert proc.returncode == 2 and "unknown argument '--bogus'" in proc.stderr
    proc = run('--no-bundle', timeout=30)
    assert proc.returncode == 2 and '--no-bundle goes with --dry-run only' in proc.stderr


def test_missing_bundle_and_missing_gpu_are_explained(tmp_path):
    """Without a bundle the dry run names the fix; without CUDA the GPU run stops
    with a message instead of failing later."""
    proc = run('--dry-run', '--bundle', tmp_path / 'nothing', '--work', tmp_path / 'w',
               timeout=120)
    assert proc.returncode == 2
    assert 'MANIFEST.txt is missing' in proc.stderr and '--prepare' in proc.stderr
    if torch.cuda.is_available():
        return
    proc = run('--work', tmp_path / 'w2', timeout=120, PYTHON=sys.executable)
    assert proc.returncode == 2
    assert 'no CUDA device' in proc.stderr and '--dry-run' in proc.stderr
    proc = run('--work', tmp_path / 'w3', timeout=120, PYTHON='/nonexistent/python3.12')
    assert proc.returncode == 2 and 'no Python found' in proc.stderr


def test_corrupt_bundle_is_refused(tmp_path):
    bundle = tmp_path / 'bundle'
    (bundle / 'wheels').mkdir(parents=True)
    whl = bundle / 'wheels' / 'x-1.0-py3-none-any.whl'
    whl.write_bytes(b'not the file the manifest names')
    (bundle / 'MANIFEST.txt').write_text(
        '# sha256 bytes path policy module\n'
        f'{"0" * 64} 31 wheels/x-1.0-py3-none-any.whl always x\n')
    proc = run('--dry-run', '--bundle', bundle, '--work', tmp_path / 'w', timeout=120)
    assert proc.returncode == 2
    assert 'does not match its MANIFEST.txt' in proc.stderr
