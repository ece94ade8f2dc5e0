"""Plot logged scalars over iterations, several runs overlaid.

Reads mmengine's JSON scalar logs: ``WORK_DIR/<timestamp>/vis_data/scalars.json``
(one JSON record per line: training records every ``LoggerHook`` interval, with
``loss``, ``lr``, ``time``, ``prune.keep_ratio_s*`` ...; validation records with
``mIoU``, ``GFLOPs_*``, ``exit_frac_s*`` ...; the iteration is ``step``). A LOG
argument is such a file or a work dir; for a work dir every run in it is read in
time order (a resumed run continues its curve; a later record of the same
iteration wins). ``--keys`` takes names or shell patterns (``prune.keep_ratio_s*``,
``decode.*``); each key pattern gets one panel, every matching key of every run is
a line in it.

Examples::

    # loss and mIoU of two runs
    python tools/analysis_tools/analyze_logs.py work_dirs/dtop_b16_ade work_dirs/segvit_b16_ade \\
        --keys loss mIoU --legend DToP BASE --out curves.png
    # token keep ratios per stage and GFLOPs while pruning
    python tools/analysis_tools/analyze_logs.py work_dirs/demo/dtop \\
        --keys 'prune.keep_ratio_s*' GFLOPs_img mIoU --out prune.png
    # which keys were logged?
    python tools/analysis_tools/analyze_logs.py work_dirs/demo/dtop --list-keys
"""
import argparse
import fnmatch
import glob
import json
import math
import os
import os.path as osp
import re
import sys
from typing import Dict, List, Optional, Tuple

#: Keys that are bookkeeping, not curves.
NOT_SCALARS = ('step', 'iter', 'epoch')


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Plot logged keys (loss, lr, mIoU, GFLOPs, prune.keep_ratio_s*, ...) '
        'over iterations from mmengine JSON logs; several runs overlaid.',
        epilog=__doc__.split('Examples::', 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('logs', nargs='+', metavar='LOG',
                        help='a vis_data/scalars.json (or <timestamp>.json) file, or a '
                        'work dir holding runs')
    parser.add_argument('--keys', nargs='+', default=['loss'],
                        help='keys or shell patterns to plot, one panel each '
                        '(default: loss)')
    parser.add_argument('--legend', nargs='+', default=None,
                        help='one name per LOG (default: the work dir names)')
    parser.add_argument('--out', default=None,
                        help='output image (.png/.pdf/.svg); default: analyze_logs.png')
    parser.add_argument('--title', default=None, help='figure title')
    parser.add_argument('--list-keys', action='store_true',
                        help='print the keys each log holds (with counts) and exit')
    args = parser.parse_args(argv)
    if args.legend is not None and len(args.legend) != len(args.logs):
        parser.error(f'--legend needs one name per LOG: {len(args.logs)} logs, '
                     f'{len(args.legend)} names')
    return args


def find_scalar_files(path: str) -> List[str]:
    """The scalar logs of ``path`` (a file, or every run of a work dir in time order).

    Raises:
        FileNotFoundError: nothing readable at ``path``.
    """
    if osp.isfile(path):
        return [path]
    if not osp.isdir(path):
        raise FileNotFoundError(f'log not found: {path}')
    files = glob.glob(osp.join(path, '*', 'vis_data', 'scalars.json'))
    files += glob.glob(osp.join(path, 'vis_data', 'scalars.json'))
    if not files:
        raise FileNotFoundError(
            f'no mmengine scalar log under {path} (expected <timestamp>/vis_data/'
            'scalars.json, written by training with vis_backends=[LocalVisBackend])')
    # <timestamp> directory names sort chronologically (YYYYmmdd_HHMMSS)
    return sorted(files, key=lambda f: osp.basename(osp.dirname(osp.dirname(f))))


def load_run(path: str) -> Dict[str, List[Tuple[int, float]]]:
    """``{key: [(step, value), ...]}`` of one run (all its files merged).

    Non-numeric values and bookkeeping keys are skipped; when several records give
    the same key at the same step (a resumed run), the later one is kept.
    """
    series: Dict[str, Dict[int, float]] = {}
    for f in find_scalar_files(path):
        with open(f, encoding='utf-8') as fh:
            for lineno, line in enumerate(fh, 1):
                line = line.strip()
                if not line:
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    print(f'warning: {f}:{lineno} is not JSON; skipped', file=sys.stderr)
                    continue
                step = rec.get('step', rec.get('iter'))
                if not isinstance(step, (int, float)):
                    continue
                for key, value in rec.items():
                    if key in NOT_SCALARS or isinstance(value, bool) \
                            or not isinstance(value, (int, float)):
                        continue
                    series.setdefault(key, {})[int(step)] = float(value)
    return {k: sorted(v.items()) for k, v in series.items()}


def match_keys(pattern: str, available) -> List[str]:
    """Keys of ``available`` matching a name or shell pattern, natural order."""
    if pattern in available:
        return [pattern]
    found = [k for k in available if fnmatch.fnmatchcase(k, pattern)]

    def natural(k):
        return [int(t) if t.isdigit() else t for t in re.split(r'(\d+)', k)]
    return sorted(found, key=natural)


def plot(runs: Dict[str, Dict[str, List[Tuple[int, float]]]], patterns: List[str],
         out: str, title: Optional[str] = None) -> Dict[str, List[str]]:
    """One panel per key pattern; a line per (run, matching key). Returns what was drawn.

    Raises:
        KeyError: a pattern matches no key of any run (lists the keys there are).
    """
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator
    drawn: Dict[str, List[str]] = {}
    all_keys = sorted({k for s in runs.values() for k in s})
    for p in patterns:
        if not any(match_keys(p, s) for s in runs.values()):
            raise KeyError(f'no logged key matches "{p}"; keys in these logs: '
                           f'{", ".join(all_keys)}')
    cols = min(2, len(patterns))
    rows = math.ceil(len(patterns) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.5 * cols, 3.6 * rows), squeeze=False)
    styles = ['-', '--', '-.', ':']
    for ax, pattern in zip(axes.flat, patterns):
        lines = []
        for r, (name, series) in enumerate(runs.items()):
            for key in match_keys(pattern, series):
                xs, ys = zip(*series[key])
                label = name if key == pattern else f'{name}: {key}'
                marker = 'o' if len(xs) <= 20 else None
                ax.plot(xs, ys, styles[r % len(styles)], marker=marker, markersize=3,
                        label=label)
                lines.append(label)
        drawn[pattern] = lines
        ax.set_title(pattern)
        ax.set_xlabel('iteration')
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if lines:
            ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(patterns):]:
        ax.axis('off')
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    if osp.dirname(out):
        os.makedirs(osp.dirname(out), exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return drawn


def main(argv: Optional[List[str]] = None) -> dict:
    args = parse_args(argv)
    names = args.legend or []
    runs: Dict[str, Dict[str, List[Tuple[int, float]]]] = {}
    for i, log in enumerate(args.logs):
        try:
            series = load_run(log)
        except FileNotFoundError as e:
            sys.exit(f'error: {e}')
        if not series:
            sys.exit(f'error: {log} holds no numeric records')
        name = names[i] if names else (osp.basename(osp.normpath(log)) if osp.isdir(log)
                                       else log)
        while name in runs:
            name += "'"
        runs[name] = series
    if args.list_keys:
        for name, series in runs.items():
            print(f'{name}:')
            for key in sorted(series):
                pts = series[key]
                print(f'  {key}: {len(pts)} values, steps {pts[0][0]}..{pts[-1][0]}, '
                      f'last {pts[-1][1]:.6g}')
        return dict(runs=runs)
    out = args.out or 'analyze_logs.png'
    try:
        drawn = plot(runs, args.keys, out, args.title)
    except KeyError as e:
        sys.exit(f'error: {e.args[0]}')
    for name, series in runs.items():
        parts = []
        for pattern in args.keys:
            for key in match_keys(pattern, series):
                step, value = series[key][-1]
                parts.append(f'{key} {value:.4g} @ {step}')
        if 'time' in series:
            times = [v for _, v in series['time']]
            parts.append(f'{sum(times) / len(times):.3f} s/iter (mean of logged windows)')
        print(f'{name}: ' + '; '.join(parts))
    print(f'plot written to {out}')
    return dict(runs=runs, drawn=drawn, out=out)


if __name__ == '__main__':
    main()
