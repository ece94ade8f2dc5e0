"""A shortened `bash tools/run_demo.sh` end to end (few iterations, tiny dataset), run
once for the module: its outputs, and that it leaves the tracked README picture alone."""
import hashlib
import json
import os
import os.path as osp
import re
import shutil
import subprocess
import sys
from types import SimpleNamespace

import pytest

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
README_IMAGE = osp.join(ROOT, 'resources', 'demo_exit_map.png')


def _tracked_changes(path):
    """``git status`` of the tracked files under ``path`` (None without git)."""
    if shutil.which('git') is None or not osp.isdir(osp.join(ROOT, '.git')):
        return None
    return subprocess.run(['git', 'status', '--porcelain', '--untracked-files=no', '--', path],
                          cwd=ROOT, capture_output=True, text=True, check=True).stdout


def _file_state(path):
    """(sha256, mtime_ns) of ``path``, or None when it does not exist."""
    if not osp.isfile(path):
        return None
    with open(path, 'rb') as f:
        return hashlib.sha256(f.read()).hexdigest(), os.stat(path).st_mtime_ns


@pytest.fixture(scope='module')
def demo(tmp_path_factory):
    """One shortened demo run (default options: no --update-readme-image)."""
    tmp_path = tmp_path_factory.mktemp('demo')
    work = tmp_path / 'work'
    env = dict(os.environ,
               DEMO_SKIP_SETUP='1', DEMO_DATA=str(tmp_path / 'data'),
               DEMO_NUM_TRAIN='16', DEMO_NUM_VAL='3',
               DEMO_BASE_ITERS='4', DEMO_PRUNE_ITERS='4',
               # After 4 iterations the heads are not confident: a low p0 makes tokens
               # exit so that the whole pruned path (test, exit maps, report) runs.
               DEMO_P0='0.2', DEMO_BENCH_CROPS='16', DEMO_CONTROL='0',
               PYTHON=sys.executable)
    before = SimpleNamespace(image=_file_state(README_IMAGE),
                             git=_tracked_changes('resources'))
    proc = subprocess.run(['bash', osp.join(ROOT, 'tools/run_demo.sh'), str(work)], env=env,
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    after = SimpleNamespace(image=_file_state(README_IMAGE),
                            git=_tracked_changes('resources'))
    return SimpleNamespace(proc=proc, tmp_path=tmp_path, work=work, before=before,
                           after=after)


@pytest.mark.slow
def test_run_demo_shortened(demo):
    proc, tmp_path, work = demo.proc, demo.tmp_path, demo.work
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-6000:]
    assert (tmp_path / 'data' / '.demo-stamp').is_file()
    for sub in ('base', 'dtop'):
        ckpt = (work / sub / 'last_checkpoint').read_text().strip()
        assert osp.isfile(ckpt) and ckpt.endswith('iter_4.pth')
    assert (work / 'dtop' / 'prune_stats.json').is_file()
    maps = sorted(os.listdir(work / 'exit_maps'))
    assert maps and all(m.startswith('demo_validation_') and m.endswith('.png') for m in maps)
    report = (work / 'report.md').read_text()
    assert '| BASE |' in report and '| DToP |' in report
    assert 'tokens exited after stage 1' in report
    with open(work / 'report.json') as f:
        numbers = json.load(f)
    base, dtop = numbers['rows']
    assert 0 <= base['mIoU'] <= 100 and 0 <= dtop['mIoU'] <= 100
    assert base['exit_pct'] == [0.0, 0.0]
    assert dtop['exit_pct'][0] > 0
    assert dtop['gflops_aux'] < base['gflops_aux']
    assert set(numbers['summary']['speedup']) == {'1', '16'} or \
        set(numbers['summary']['speedup']) == {1, 16}
    assert 'done in' in proc.stdout

    # Quiet by default: one line per step and the table, full logs in WORK_DIR/logs/.
    out = proc.stdout.splitlines()
    assert len(out) <= 60, proc.stdout
    assert not [line for line in out if 'mmengine - INFO' in line], proc.stdout
    # Per step: at most 3 progress lines (25/50/75 %, the output is not a terminal) and
    # one summary line ("N/N in 12s, x it/s" or "done in 12s"); -v and the progress
    # display are tested fast in test_run_demo_guards.py.
    for step in ('[2/7] demo dataset -> ', '[3/7] BASE training: ',
                 '[4/7] DToP prune fine-tune: ', '[5/7] test BASE: ',
                 '[5/7] test DToP (+ exit maps): ', '[6/7] speed: dense vs pruned on 16 crops: '):
        mine = [line for line in out if line.startswith(step)]
        final = [line for line in mine
                 if re.search(r': (\d+/\d+ in \S+(, [\d.e+-]+ it/s)?|done in \S+)$', line)]
        assert len(final) == 1 and mine[-1] == final[0] and len(mine) <= 4, (step, proc.stdout)
    assert any(line.startswith('| DToP |') for line in out)
    assert 'Saving checkpoint at 4 iterations' in (work / 'logs' / 'base.log').read_text()
    assert (work / '.dtop-demo').is_file() and (tmp_path / 'data' / '.dtop-demo').is_file()


@pytest.mark.slow
def test_run_demo_leaves_tracked_files_alone(demo):
    """Without --update-readme-image the exit map goes to WORK_DIR only: the tracked
    resources/demo_exit_map.png keeps its bytes and mtime, git sees no change under
    resources/."""
    assert demo.proc.returncode == 0, (demo.proc.stdout + demo.proc.stderr)[-6000:]
    picture = demo.work / 'demo_exit_map.png'
    assert picture.is_file()
    first = sorted((demo.work / 'exit_maps').iterdir())[0]
    assert picture.read_bytes() == first.read_bytes()
    assert f'exit map: {picture} (--update-readme-image copies it to resources/)' \
        in demo.proc.stdout
    assert 'resources/demo_exit_map.png (from' not in demo.proc.stdout
    assert demo.after.image == demo.before.image
    assert demo.after.git == demo.before.git
