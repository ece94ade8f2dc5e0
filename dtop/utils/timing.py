"""Notice a busy machine when timing: load, CPU used by other processes, spread of repeats.

Timing tools (``tools/analysis_tools/benchmark.py``, ``sweep_threshold.py``) call
this module so that a number measured while another process used the CPU is never
reported without a warning (a busy machine can turn a real speedup into a reported
"speedup 0.019" at batch 1).

Usage::

    from dtop.utils.timing import LoadMonitor, timing_warnings, warn_timing

    mon = LoadMonitor()                 # snapshot before the measurement
    times = [run_once() for _ in range(3)]
    load = mon.stop()                   # dict: loadavg_1m, cpus, others_cpu_frac, ...
    for line in warn_timing(times, load, what='batch 1, p0 0.9'):
        ...                             # also logged as WARNING; put it in reports

Only the standard library is used; on systems without ``/proc`` the CPU share of
other processes is unknown (``None``) and only the load average is used.
"""
import os
import statistics
import time
from typing import Dict, List, Optional, Sequence

#: repeats whose (max - min) / median exceeds this disagree (default 10 %).
DEFAULT_MAX_SPREAD = 0.10
#: other processes using more than this fraction of all CPUs make the machine busy.
DEFAULT_MAX_OTHERS = 0.15
#: 1-minute load average per CPU above which the machine counts as loaded when the
#: CPU share of other processes is unknown.
DEFAULT_MAX_LOAD_PER_CPU = 0.75


def cpu_count() -> int:
    """CPUs this process may run on (affinity-aware)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def load_average() -> Optional[float]:
    """The 1-minute load average, or None where the OS has none."""
    try:
        return float(os.getloadavg()[0])
    except (AttributeError, OSError):
        return None


def _proc_stat_jiffies() -> Optional[tuple]:
    """``(busy, total)`` jiffies of all CPUs from ``/proc/stat``."""
    try:
        with open('/proc/stat', encoding='ascii') as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != 'cpu':
        return None
    values = [int(v) for v in fields[1:9]]  # user nice system idle iowait irq softirq steal
    idle = values[3] + values[4]
    total = sum(values)
    return total - idle, total


def _own_jiffies() -> Optional[int]:
    """CPU jiffies used by this process and its reaped children (``/proc/self/stat``)."""
    try:
        with open('/proc/self/stat', encoding='ascii') as f:
            text = f.read()
    except OSError:
        return None
    fields = text[text.rindex(')') + 2:].split()
    # after the command name: state(3) ... utime(14) stime(15) cutime(16) cstime(17)
    return sum(int(v) for v in fields[11:15])


def _children_jiffies() -> int:
    """CPU jiffies of this process's live children (e.g. dataloader workers)."""
    total = 0
    own = str(os.getpid())
    try:
        pids = [p for p in os.listdir('/proc') if p.isdigit()]
    except OSError:
        return 0
    for pid in pids:
        try:
            with open(f'/proc/{pid}/stat', encoding='ascii') as f:
                text = f.read()
        except OSError:
            continue
        fields = text[text.rindex(')') + 2:].split()
        if fields[1] == own:  # ppid
            total += int(fields[11]) + int(fields[12])
    return total


class LoadMonitor:
    """Measures how busy the machine was between construction and :meth:`stop`.

    Attributes recorded by :meth:`stop` (also returned as a dict):

    * ``loadavg_1m``: 1-minute load average at the end (None if unknown);
    * ``cpus``: CPUs available to this process;
    * ``others_cpu_frac``: fraction of all CPUs' time used by *other* processes
      during the interval (None where ``/proc`` is missing);
    * ``own_cpu_frac``: the same for this process and its children;
    * ``wall_s``: the interval.
    """

    def __init__(self) -> None:
        self._t0 = time.perf_counter()
        self._stat0 = _proc_stat_jiffies()
        self._own0 = self._own()

    @staticmethod
    def _own() -> Optional[int]:
        own = _own_jiffies()
        return None if own is None else own + _children_jiffies()

    def stop(self) -> Dict[str, Optional[float]]:
        """End the interval and return the measurements (see class docstring)."""
        wall = time.perf_counter() - self._t0
        stat1, own1 = _proc_stat_jiffies(), self._own()
        others = own_frac = None
        if None not in (self._stat0, stat1, self._own0, own1):
            busy = stat1[0] - self._stat0[0]
            total = stat1[1] - self._stat0[1]
            own = own1 - self._own0
            if total > 0:
                own_frac = min(1.0, max(0.0, own / total))
                others = min(1.0, max(0.0, (busy - own) / total))
        return dict(loadavg_1m=load_average(), cpus=float(cpu_count()),
                    others_cpu_frac=others, own_cpu_frac=own_frac, wall_s=wall)


def spread(values: Sequence[float]) -> Dict[str, float]:
    """Summary of repeated timings.

    Args:
        values (Sequence[float]): the repeats (seconds, or any positive unit).

    Returns:
        dict: ``n``, ``median``, ``min``, ``max`` and ``rel_spread`` =
        ``(max - min) / median`` (0 for fewer than two repeats).
    """
    vals = [float(v) for v in values]
    if not vals:
        raise ValueError('spread() needs at least one value')
    med = statistics.median(vals)
    rel = (max(vals) - min(vals)) / med if len(vals) > 1 and med > 0 else 0.0
    return dict(n=float(len(vals)), median=med, min=min(vals), max=max(vals),
                rel_spread=rel)


def timing_warnings(repeats: Sequence[float],
                    load: Optional[Dict[str, Optional[float]]] = None,
                    what: str = 'timing',
                    max_spread: float = DEFAULT_MAX_SPREAD,
                    max_others: float = DEFAULT_MAX_OTHERS,
                    max_load_per_cpu: float = DEFAULT_MAX_LOAD_PER_CPU) -> List[str]:
    """Why a timing may be unreliable, as sentences (empty list: no reason found).

    Args:
        repeats (Sequence[float]): repeated measurements of the same thing.
        load (dict, optional): :meth:`LoadMonitor.stop` of the measurement.
        what (str): names the measurement in the messages.
        max_spread (float): allowed ``(max - min) / median`` of the repeats.
        max_others (float): allowed CPU share of other processes.
        max_load_per_cpu (float): allowed load average per CPU, used only when the
            CPU share of other processes is unknown.

    Returns:
        list[str]: one sentence per problem, each naming the numbers and the fix.
    """
    out = []
    s = spread(repeats) if len(repeats) else None
    if s and s['n'] > 1 and s['rel_spread'] > max_spread:
        out.append(f'{what}: the {int(s["n"])} repeats disagree by '
                   f'{100 * s["rel_spread"]:.0f}% (min {s["min"]:.4g}, median '
                   f'{s["median"]:.4g}, max {s["max"]:.4g}; allowed {100 * max_spread:.0f}%)'
                   '; re-run on an idle machine or with more repeats.')
    if load:
        others, cpus = load.get('others_cpu_frac'), load.get('cpus') or 1
        la = load.get('loadavg_1m')
        la_text = f', load average {la:.2f} on {int(cpus)} CPUs' if la is not None else ''
        if others is not None:
            if others > max_others:
                out.append(f'{what}: other processes used {100 * others:.0f}% of the '
                           f'machine\'s CPU time during the measurement{la_text}; the '
                           'times are not comparable. Re-run on an idle machine.')
        elif la is not None and la / cpus > max_load_per_cpu:
            out.append(f'{what}: the machine is loaded (load average {la:.2f} on '
                       f'{int(cpus)} CPUs); the times are not comparable. Re-run on an '
                       'idle machine.')
    return out


def warn_timing(repeats: Sequence[float],
                load: Optional[Dict[str, Optional[float]]] = None,
                what: str = 'timing', logger='current', **limits) -> List[str]:
    """:func:`timing_warnings`, each also logged as a WARNING.

    Args:
        repeats, load, what: as :func:`timing_warnings`.
        logger: mmengine logger (name) for the warnings.
        **limits: ``max_spread``, ``max_others``, ``max_load_per_cpu``.

    Returns:
        list[str]: the warnings.
    """
    from mmengine.logging import print_log
    lines = timing_warnings(repeats, load, what, **limits)
    for line in lines:
        print_log(f'UNRELIABLE TIMING: {line}', logger=logger, level=30)
    return lines
