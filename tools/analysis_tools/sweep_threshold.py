"""Sweep DToP's pruning threshold p0 at inference: mIoU vs GFLOPs vs time.

One checkpoint, several ``p0`` values (inference only, no fine-tune): each value is
installed as the model's exit policy, ``model.set_exit_policy(ConfidenceThreshold(p0,
k))`` (the paper's rule, with the model's ``k``), and evaluated on the config's test
set with :class:`IoUFlopsMetric`, timing every test
iteration (forward + metric update; data loading excluded) -> ``s_per_img``.
Writes ``sweep.csv``, ``sweep.md`` and ``sweep.png`` (mIoU vs GFLOPs per
image, with and without the auxiliary heads, and mIoU vs measured seconds per
image) to ``--work-dir``.

Timing notices a busy machine (:mod:`dtop.utils.timing`): every row records the
load average and the CPU share of other processes during its runs, and, with
``--repeats N``, the median and spread of N timed runs; a row whose repeats
disagree by more than ``--max-spread`` or that ran while other processes used
the CPU gets a warning (printed, and listed under the table in ``sweep.md``).

The test-split runs are :class:`dtop.utils.benchmarking.PolicyEvaluator` (one
runner, the checkpoint loaded once), shared with ``ablate_exit_policy.py``, which
compares this rule with fixed-ratio and random exit at the same cost.

Example::

    python tools/analysis_tools/sweep_threshold.py CONFIG CKPT \\
        --thresholds 0.8 0.85 0.9 0.95 1.0 --work-dir work_dirs/sweep
"""
import argparse
import csv
import json
import os
import os.path as osp
import sys
from typing import Dict, List, Optional

ROOT = osp.abspath(osp.join(osp.dirname(__file__), '..', '..'))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

COLUMNS = ['p0', 'mIoU', 'aAcc', 'GFLOPs_img', 'GFLOPs_img_std', 'GFLOPs_img_noaux',
           'GFLOPs_crop', 'GFLOPs_crop_noaux', 'GFLOPs_dense_img', 'GFLOPs_dense_crop',
           'GFLOPs_reduction_pct', 'GFLOPs_reduction_noaux_pct', 'exit_frac_s0',
           'exit_frac_s1', 'active_frac_final', 's_per_img', 's_per_img_spread',
           'repeats', 'loadavg_1m', 'others_cpu_pct', 'num_images']


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    from dtop.utils.benchmarking import p0_type
    from dtop.utils.cli import add_cfg_options_arg, add_partial_load_arg, add_trust_checkpoint_arg
    p = argparse.ArgumentParser(description='mIoU / GFLOPs / time vs p0')
    p.add_argument('config', help='config file')
    p.add_argument('checkpoint', help='checkpoint to evaluate')
    p.add_argument('--thresholds', type=p0_type, nargs='+', required=True,
                   help='p0 values (>= 1 disables pruning)')
    p.add_argument('--repeats', type=int, default=1,
                   help='timed runs per p0 (the median is reported, and their spread '
                   'is checked); metrics come from the first run')
    p.add_argument('--max-spread', type=float, default=None,
                   help='warn when the repeats of a p0 disagree by more than this '
                   'fraction (default: dtop.utils.timing.DEFAULT_MAX_SPREAD)')
    add_partial_load_arg(p)
    add_trust_checkpoint_arg(p)
    p.add_argument('--work-dir', default=None,
                   help='output folder (default: work_dirs/sweep_<config name>)')
    p.add_argument('--num-images', type=int, default=None,
                   help='evaluate only the first N test images (quick looks)')
    p.add_argument('--precision', choices=['fp32', 'bf16', 'fp16'], default=None,
                   help='inference precision (autocast; default: the config\'s, fp32)')
    add_cfg_options_arg(p, checked=False)
    return p.parse_args(argv)


# The test-split machinery is shared with ablate_exit_policy.py.
def prepare_cfg(cfg, checkpoint: str, work_dir: str, num_images: Optional[int]):
    """Test-only config: IoUFlopsMetric + dims hook, checkpoint, work dir, subset
    (:func:`dtop.utils.benchmarking.prepare_test_cfg`)."""
    from dtop.utils.benchmarking import prepare_test_cfg
    return prepare_test_cfg(cfg, checkpoint, work_dir, num_images, tool='sweep_threshold')


def run_sweep(cfg, thresholds: List[float], repeats: int = 1,
              max_spread: Optional[float] = None) -> List[Dict[str, float]]:
    """Evaluate every ``p0`` with one runner (the checkpoint is loaded once, strictly).

    Each ``p0`` is installed as the model's exit policy,
    ``ConfidenceThreshold(p0, k)`` with the model's ``k``.

    Args:
        cfg: from :func:`prepare_cfg`.
        thresholds (list[float]): p0 values.
        repeats (int): timed runs per p0 (median reported, spread checked).
        max_spread (float, optional): allowed relative spread of the repeats.

    Returns:
        list[dict]: one row per p0; ``warnings`` (list of str) where the timing may
        be unreliable (busy machine, disagreeing repeats).
    """
    from dtop.models.pruning import ConfidenceThreshold
    from dtop.utils import timing
    from dtop.utils.benchmarking import IterTimer, PolicyEvaluator
    if repeats < 1:
        raise ValueError(f'--repeats must be >= 1, got {repeats}')
    evaluator = PolicyEvaluator(cfg)
    timer = IterTimer()
    evaluator.register_hook(timer)
    topk = evaluator.model.keep_topk_per_class
    rows = []
    for p0 in thresholds:
        policy = ConfidenceThreshold(float(p0), topk)
        times, metrics, n = [], None, 0
        monitor = timing.LoadMonitor()
        for _ in range(repeats):
            timer.reset()
            result = evaluator.evaluate(policy)
            metrics = metrics or result
            n = timer.images
            times.append(timer.total / max(n, 1))
        load = monitor.stop()
        s = timing.spread(times)
        row = dict(p0=float(p0), s_per_img=s['median'], s_per_img_spread=s['rel_spread'],
                   repeats=repeats, num_images=n,
                   loadavg_1m=load['loadavg_1m'] if load['loadavg_1m'] is not None
                   else float('nan'),
                   others_cpu_pct=100 * load['others_cpu_frac']
                   if load['others_cpu_frac'] is not None else float('nan'))
        row.update(metrics)
        row['warnings'] = timing.warn_timing(
            times, load, what=f'p0 {p0:g}',
            max_spread=timing.DEFAULT_MAX_SPREAD if max_spread is None else max_spread)
        rows.append(row)
    return rows


def write_outputs(rows: List[Dict[str, float]], work_dir: str, title: str = '') -> Dict[str, str]:
    """Write ``sweep.csv``, ``sweep.md``, ``sweep.json`` and ``sweep.png``."""
    os.makedirs(work_dir, exist_ok=True)
    cols = [c for c in COLUMNS if any(c in r for r in rows)]
    paths = {k: osp.join(work_dir, f'sweep.{k}') for k in ('csv', 'md', 'json', 'png')}
    with open(paths['csv'], 'w', newline='') as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction='ignore')
        w.writeheader()
        w.writerows(rows)
    with open(paths['json'], 'w') as f:
        json.dump(rows, f, indent=2)

    def fmt(v):
        return f'{v:.4g}' if isinstance(v, float) else str(v)

    lines = ['| ' + ' | '.join(cols) + ' |', '|' + '---|' * len(cols)]
    lines += ['| ' + ' | '.join(fmt(r.get(c, '')) for c in cols) + ' |' for r in rows]
    notes = [w for r in rows for w in r.get('warnings', [])]
    if notes:
        lines += ['', '**Unreliable timing** (s_per_img):'] + [f'- {w}' for w in notes]
    with open(paths['md'], 'w') as f:
        f.write((f'{title}\n\n' if title else '') + '\n'.join(lines) + '\n')

    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    p0 = [r['p0'] for r in rows]
    miou = [r.get('mIoU', float('nan')) for r in rows]
    for key, label, marker in (('GFLOPs_img', 'with aux heads', 'o'),
                               ('GFLOPs_img_noaux', 'without aux heads', 's')):
        if all(key in r for r in rows):
            xs = [r[key] for r in rows]
            ax1.plot(xs, miou, marker=marker, label=label)
            for x, y, t in zip(xs, miou, p0):
                ax1.annotate(f'{t:g}', (x, y), textcoords='offset points', xytext=(4, 4),
                             fontsize=8)
    if rows and 'GFLOPs_dense_img' in rows[0]:
        ax1.axvline(rows[0]['GFLOPs_dense_img'], color='gray', ls='--',
                    label='dense (backbone + final head)')
    ax1.set_xlabel('GFLOPs per image')
    ax1.set_ylabel('mIoU')
    ax1.legend(fontsize=8)
    ax1.grid(alpha=.3)
    xs = [r['s_per_img'] for r in rows]
    ax2.plot(xs, miou, marker='o')
    for x, y, t in zip(xs, miou, p0):
        ax2.annotate(f'{t:g}', (x, y), textcoords='offset points', xytext=(4, 4), fontsize=8)
    ax2.set_xlabel('measured seconds per image (forward + metric update)')
    ax2.set_ylabel('mIoU')
    ax2.grid(alpha=.3)
    fig.suptitle(title or 'DToP threshold sweep (labels: p0)', fontsize=10)
    fig.tight_layout()
    fig.savefig(paths['png'], dpi=120)
    plt.close(fig)
    return paths


def main(argv: Optional[List[str]] = None) -> List[Dict[str, float]]:
    args = parse_args(argv)
    from dtop.apis import default_work_dir, load_config
    cfg = load_config(args.config, args.cfg_options, checkpoint=args.checkpoint,
                      precision=args.precision)
    work_dir = args.work_dir or default_work_dir(args.config, 'sweep_')
    cfg = prepare_cfg(cfg, args.checkpoint, work_dir, args.num_images)
    if args.allow_partial_load:
        cfg.load_strict = False
    if args.trust_checkpoint:
        cfg.trust_checkpoint = True
    rows = run_sweep(cfg, args.thresholds, args.repeats, args.max_spread)
    paths = write_outputs(rows, work_dir, title=f'{osp.basename(args.config)} '
                          f'({osp.basename(args.checkpoint)})')
    with open(paths['md']) as f:
        print(f.read())
    print('wrote ' + ', '.join(paths.values()))
    return rows


if __name__ == '__main__':
    from dtop.utils.errors import run_cli
    run_cli(main)
