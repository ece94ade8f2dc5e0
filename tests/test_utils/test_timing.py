"""dtop.utils.timing: a busy machine and disagreeing repeats are noticed."""
import os
import subprocess
import sys
import time

import pytest

from dtop.utils.timing import LoadMonitor, spread, timing_warnings, warn_timing


def test_spread():
    s = spread([1.0, 1.2, 0.9])
    assert s['median'] == 1.0 and s['min'] == 0.9 and s['max'] == 1.2
    assert s['rel_spread'] == pytest.approx(0.3)
    assert spread([2.0])['rel_spread'] == 0.0
    with pytest.raises(ValueError):
        spread([])


def test_disagreeing_repeats_warn():
    assert timing_warnings([0.100, 0.104, 0.102]) == []
    (line,) = timing_warnings([0.012, 0.61, 0.013], what='batch 1')
    assert line.startswith('batch 1: the 3 repeats disagree by ')
    assert 'allowed 10%' in line and 'idle machine' in line


def test_loaded_machine_warns():
    busy = dict(loadavg_1m=3.5, cpus=2.0, others_cpu_frac=0.55)
    (line,) = timing_warnings([1.0], busy, what='p0 0.9')
    assert 'other processes used 55% of the machine' in line
    assert 'load average 3.50 on 2 CPUs' in line
    assert timing_warnings([1.0], dict(loadavg_1m=0.1, cpus=2.0, others_cpu_frac=0.01)) == []
    # without /proc: the load average decides
    (line,) = timing_warnings([1.0], dict(loadavg_1m=4.0, cpus=2.0, others_cpu_frac=None))
    assert 'the machine is loaded (load average 4.00 on 2 CPUs)' in line


def test_load_monitor_sees_another_process(capsys):
    if not os.path.exists('/proc/stat'):
        pytest.skip('needs /proc')
    # A busy loop that is *not* our child (its parent shell exits at once), as another
    # user's job would be.
    out = subprocess.run(
        ['sh', '-c', f'{sys.executable} -c "import time; t = time.time(); '
                     '[0 for _ in iter(lambda: time.time() - t < 4, False)]" '
                     '>/dev/null 2>&1 & echo $!'],
        stdout=subprocess.PIPE, text=True, check=True)
    pid = int(out.stdout.strip())
    try:
        time.sleep(0.3)
        mon = LoadMonitor()
        time.sleep(1.5)
        load = mon.stop()
    finally:
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
    share = 1.0 / load['cpus']  # one busy process on N CPUs
    assert load['others_cpu_frac'] >= 0.6 * share, load
    assert load['own_cpu_frac'] < 0.2
    lines = warn_timing([1.0, 1.01], load, what='bench', max_others=0.5 * share)
    assert len(lines) == 1 and 'other processes used' in lines[0]
