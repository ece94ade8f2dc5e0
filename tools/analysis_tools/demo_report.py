"""Summarise the demo: BASE vs DToP mIoU, GFLOPs, exited tokens and speed.

Reads the metrics JSON that ``tools/test.py --work-dir DIR`` leaves in
``DIR/<timestamp>/<timestamp>.json`` (the latest one is used) for BASE, DToP and,
optionally, the fair control (the BASE fine-tuned as long as DToP, pruning off) and,
optionally, the JSON of ``tools/analysis_tools/benchmark.py --out`` for the
measured speedup, then prints a Markdown table and writes it (plus the numbers as
JSON) next to ``--out``.

Example::

    python tools/analysis_tools/demo_report.py --base work_dirs/demo/test_base \\
        --dtop work_dirs/demo/test_dtop --benchmark work_dirs/demo/benchmark.json \\
        --out work_dirs/demo/report.md
"""
import argparse
import glob
import json
import os
import os.path as osp
import re
from typing import Dict, List, Optional


def latest_metrics(test_dir: str) -> Dict[str, float]:
    """The metrics of the latest test run logged under ``test_dir``.

    Args:
        test_dir (str): the ``--work-dir`` given to ``tools/test.py``.

    Returns:
        dict: metric name → value (e.g. ``mIoU``, ``GFLOPs_crop``).

    Raises:
        FileNotFoundError: no metrics JSON under ``test_dir``.
    """
    candidates = [p for p in glob.glob(osp.join(test_dir, '*', '*.json'))
                  if re.fullmatch(r'\d{8}_\d{6}', osp.splitext(osp.basename(p))[0])]
    metrics = None
    for path in sorted(candidates, key=lambda p: osp.basename(p), reverse=True):
        with open(path, encoding='utf-8') as f:
            text = f.read().strip()
        # mmengine writes one JSON object for a test run (one per line in training logs).
        for line in reversed(text.splitlines()):
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if 'mIoU' in rec:
                metrics = rec
                break
        if metrics is not None:
            break
    if metrics is None:
        raise FileNotFoundError(f'no test metrics (a <timestamp>/<timestamp>.json with '
                                f'"mIoU") under {test_dir}; run tools/test.py with '
                                f'--work-dir {test_dir} first')
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float))}


def speedup_of(benchmark: dict) -> Dict[int, float]:
    """Speedup of the pruned model over the dense one per batch size."""
    out = {}
    for row in benchmark.get('rows', []):
        if row.get('variant') == 'pruned' and 'speedup' in row:
            out[int(row['batch_size'])] = float(row['speedup'])
    return out


def _fmt(v: Optional[float], spec: str = '.2f', suffix: str = '') -> str:
    return '–' if v is None else f'{v:{spec}}{suffix}'


def build_report(base: Dict[str, float], dtop: Dict[str, float],
                 benchmark: Optional[dict] = None,
                 control: Optional[Dict[str, float]] = None,
                 names: Optional[Dict[str, str]] = None) -> dict:
    """Numbers of the demo table.

    Args:
        base (dict): BASE test metrics (``IoUFlopsMetric`` keys).
        dtop (dict): DToP test metrics.
        benchmark (dict, optional): ``benchmark.py --out`` JSON.
        control (dict, optional): test metrics of the fair control: the BASE
            fine-tuned for as many iterations as DToP, with pruning off.
        names (dict, optional): row labels for ``base``, ``control``, ``dtop``.

    Returns:
        dict: ``rows`` (one per model) and ``summary`` (deltas and speedups).
    """
    names = dict(dict(base='BASE', control='BASE + fine-tune (p0 = 1)', dtop='DToP'),
                 **(names or {}))
    num_exit = len([k for k in dtop if re.fullmatch(r'exit_frac_s\d+', k)])
    rows = []
    models = [('base', base)] + ([('control', control)] if control else []) + [('dtop', dtop)]
    for key, m in models:
        name = names[key]
        row = dict(model=name, role=key, mIoU=m.get('mIoU'),
                   gflops_aux=m.get('GFLOPs_crop'), gflops_noaux=m.get('GFLOPs_crop_noaux'),
                   gflops_img=m.get('GFLOPs_img'),
                   exit_pct=[100 * m[f'exit_frac_s{s}'] if f'exit_frac_s{s}' in m else None
                             for s in range(num_exit)],
                   final_pct=100 * m['active_frac_final'] if 'active_frac_final' in m else None)
        rows.append(row)
    summary = dict(delta_mIoU=(dtop['mIoU'] - base['mIoU'])
                   if 'mIoU' in dtop and 'mIoU' in base else None)
    if control and 'mIoU' in control and 'mIoU' in dtop:
        summary['delta_mIoU_vs_control'] = dtop['mIoU'] - control['mIoU']
    dense = base.get('GFLOPs_dense_crop')
    dense_all = base.get('GFLOPs_dense_crop_allheads')
    if dense and dtop.get('GFLOPs_crop') is not None:
        summary['gflops_cut_pct'] = 100 * (1 - dtop['GFLOPs_crop'] / dense)
        summary['gflops_cut_noaux_pct'] = 100 * (1 - dtop['GFLOPs_crop_noaux'] / dense)
    if dense_all and dtop.get('GFLOPs_crop') is not None:
        summary['gflops_cut_vs_allheads_pct'] = 100 * (1 - dtop['GFLOPs_crop'] / dense_all)
    summary['gflops_dense'] = dense
    # Whole-image inference runs one "crop" per image: say "image" in the table.
    summary['unit'] = 'image' if abs(base.get('crops_per_img', 0.0) - 1.0) < 1e-9 else 'crop'
    summary['gflops_dense_allheads'] = dense_all
    if benchmark:
        summary['speedup'] = speedup_of(benchmark)
        summary['benchmark_device'] = benchmark.get('device')
    return dict(rows=rows, summary=summary)


def format_report(report: dict) -> str:
    """Markdown table + a few summary lines."""
    rows, summary = report['rows'], report['summary']
    num_exit = len(rows[-1]['exit_pct'])
    speed = summary.get('speedup') or {}
    unit = summary.get('unit', 'crop')
    head = ['model', 'mIoU', f'GFLOPs/{unit} (with aux heads)', f'GFLOPs/{unit} (without aux)']
    head += [f'tokens exited after stage {s + 1}' for s in range(num_exit)]
    head += ['tokens reaching the last stage', 'measured speedup']
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for r in rows:
        if r['role'] != 'dtop':
            sp = '1.00×'
        else:
            sp = ', '.join(f'{v:.2f}× (batch {b})' for b, v in sorted(speed.items())) or '–'
        cells = [r['model'], _fmt(r['mIoU']), _fmt(r['gflops_aux'], '.3f'),
                 _fmt(r['gflops_noaux'], '.3f')]
        cells += [_fmt(v, '.1f', ' %') for v in r['exit_pct']]
        cells += [_fmt(r['final_pct'], '.1f', ' %'), sp]
        lines.append('| ' + ' | '.join(cells) + ' |')
    out = '\n'.join(lines)
    notes = []
    if summary.get('delta_mIoU_vs_control') is not None:
        notes.append(f"DToP - fair control (same fine-tune, pruning off): "
                     f"{summary['delta_mIoU_vs_control']:+.2f} mIoU")
    if summary.get('delta_mIoU') is not None:
        notes.append(f"DToP - BASE: {summary['delta_mIoU']:+.2f} mIoU")
    if summary.get('gflops_cut_pct') is not None:
        notes.append(f"GFLOPs {summary['gflops_cut_pct']:.1f} % lower with the auxiliary "
                     f"heads counted ({summary['gflops_cut_noaux_pct']:.1f} % without), vs "
                     f"the dense backbone + final head ({summary['gflops_dense']:.3f} GFLOPs "
                     f'per {unit})')
    if summary.get('gflops_cut_vs_allheads_pct') is not None:
        notes.append(f"{summary['gflops_cut_vs_allheads_pct']:.1f} % lower than the dense "
                     f"model with all three heads ({summary['gflops_dense_allheads']:.3f})")
    if summary.get('benchmark_device'):
        notes.append(f"speedup measured on {summary['benchmark_device']} "
                     f'(tools/analysis_tools/benchmark.py: pruned vs dense, same {unit}s)')
    return out + '\n\n' + '\n'.join(f'- {n}' for n in notes)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description='Demo table: BASE vs DToP')
    p.add_argument('--base', required=True, help='tools/test.py --work-dir of the BASE test')
    p.add_argument('--dtop', required=True, help='tools/test.py --work-dir of the DToP test')
    p.add_argument('--control', help='tools/test.py --work-dir of the fair control (the '
                   'BASE fine-tuned like DToP with pruning off)')
    p.add_argument('--base-name', default='BASE', help='label of the BASE row')
    p.add_argument('--control-name', default='BASE + fine-tune (p0 = 1)',
                   help='label of the control row')
    p.add_argument('--dtop-name', default='DToP', help='label of the DToP row')
    p.add_argument('--benchmark', help='JSON from tools/analysis_tools/benchmark.py --out')
    p.add_argument('--out', help='write the Markdown table here (and the numbers as '
                   '<out>.json)')
    return p.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> dict:
    args = parse_args(argv)
    base, dtop = latest_metrics(args.base), latest_metrics(args.dtop)
    control = latest_metrics(args.control) if args.control else None
    bench = None
    if args.benchmark:
        if not osp.isfile(args.benchmark):
            raise FileNotFoundError(f'benchmark JSON not found: {args.benchmark}')
        with open(args.benchmark, encoding='utf-8') as f:
            bench = json.load(f)
    report = build_report(base, dtop, bench, control,
                          dict(base=args.base_name, control=args.control_name,
                               dtop=args.dtop_name))
    text = format_report(report)
    print(text)
    if args.out:
        if osp.dirname(args.out):
            os.makedirs(osp.dirname(args.out), exist_ok=True)
        with open(args.out, 'w', encoding='utf-8') as f:
            f.write(text + '\n')
        with open(osp.splitext(args.out)[0] + '.json', 'w', encoding='utf-8') as f:
            json.dump(dict(report, base_metrics=base, control_metrics=control,
                           dtop_metrics=dtop), f, indent=1)
    return report


if __name__ == '__main__':
    main()
