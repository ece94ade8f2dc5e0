"""Does confidence-based exit beat a fixed keep ratio at the same cost? Measure it.

The paper's argument for DToP's exit rule (``ConfidenceThreshold``: a token leaves
when its auxiliary head is confident, ``max_c P_c > p0``) is that *which* tokens
exit matters, not only how many: easy tokens leave early and hard ones get the
full network. This tool tests that on any checkpoint, inference only:

1. for each ``p0`` of ``--thresholds``, the config's test split runs with
   ``ConfidenceThreshold(p0, k)`` (``k``: the model's ``keep_topk_per_class``);
   IoUFlopsMetric (from the per-image ``dtop_stats`` the model attaches) gives the
   mIoU, the mean GFLOPs per image and the mean fraction of tokens exiting after
   each auxiliary stage, hence the mean keep ratio ``r_s`` of each stage;
2. the same split runs again under the other policies at those per-stage ratios,
   i.e. with the same mean number of tokens per stage (matched GFLOPs):

   * ``fixed-score``: ``FixedKeepRatio(r, by='score')`` — every image keeps exactly
     ``round(r_s n)`` of its ``n`` active tokens; the most confident exit (the same
     ranking as DToP, but the same count for every image);
   * ``fixed-random``: ``FixedKeepRatio(r, by='random')`` — the same count, random
     tokens;
   * ``random``: ``RandomExit(1 - r)`` — every token exits with probability
     ``1 - r_s`` (counts vary around the mean).

   Where the confidence rule prunes at a stage but no token happened to exit, the
   other policies get a ratio just below 1, so that they run (and pay for) the same
   auxiliary heads.

Outputs (``--out-dir``): a table (policy, p0, per-stage ratios, GFLOPs/image,
mIoU) printed and written to ``ablation.md``, ``ablation.json`` (every row with all
metrics) and ``ablation.png`` (mIoU vs GFLOPs per image, one line per policy).
Every row reports the GFLOPs it measured: matching the mean token counts matches
the cost up to rounding to whole tokens and the attention's quadratic term.
The confidence rows are always run (they define the ratios).

Example::

    python tools/analysis_tools/ablate_exit_policy.py CONFIG CKPT \\
        --thresholds 0.8 0.9 0.95 --out-dir work_dirs/ablate
"""
import argparse
import json
import os
import os.path as osp
import sys
from typing import Dict, List, Optional

ROOT = osp.abspath(osp.join(osp.dirname(__file__), '..', '..'))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

POLICIES = ('confidence', 'fixed-score', 'fixed-random', 'random')
#: where the confidence rule prunes but nothing exited, the others keep this ratio
#: (nothing exits either, but their stage counts as pruning: its head runs)
NEAR_ONE = 1.0 - 1e-6


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    from dtop.utils.benchmarking import p0_type
    from dtop.utils.cli import add_cfg_options_arg, add_partial_load_arg, add_trust_checkpoint_arg
    p = argparse.ArgumentParser(
        description='mIoU vs GFLOPs of confidence-based exit (DToP) against fixed-ratio '
        'and random exit at matched per-stage keep ratios')
    p.add_argument('config', help='config file')
    p.add_argument('checkpoint', help='checkpoint to evaluate')
    p.add_argument('--thresholds', type=p0_type, nargs='+', default=[0.8, 0.9, 0.95],
                   help='p0 values of the confidence rule (default: 0.8 0.9 0.95)')
    p.add_argument('--policies', nargs='+', choices=POLICIES, default=list(POLICIES),
                   help='policies to compare (confidence always runs: it sets the '
                   'ratios)')
    p.add_argument('--out-dir', default=None,
                   help='output folder (default: work_dirs/ablate_<config name>)')
    p.add_argument('--num-images', type=int, default=None,
                   help='evaluate only the first N test images (quick looks)')
    p.add_argument('--seed', type=int, default=0, help='seed of the random policies')
    add_partial_load_arg(p)
    add_trust_checkpoint_arg(p)
    add_cfg_options_arg(p, checked=False)
    return p.parse_args(argv)


def matched_policy(name: str, ratios: List[float], prunes: List[bool], seed: int = 0):
    """The policy ``name`` keeping ``ratios`` per auxiliary stage.

    Args:
        name (str): ``'fixed-score'``, ``'fixed-random'`` or ``'random'``.
        ratios (list[float]): measured mean keep ratio per auxiliary stage.
        prunes (list[bool]): per stage, whether the confidence rule pruned there
            (such a stage keeps at most :data:`NEAR_ONE`, so its head runs).
        seed (int): seed of the random draws.

    Returns:
        ExitPolicy: unbound.
    """
    from dtop.models.pruning import FixedKeepRatio, RandomExit
    r = [min(v, NEAR_ONE) if p else 1.0 for v, p in zip(ratios, prunes)]
    if name == 'fixed-score':
        return FixedKeepRatio(r, by='score', seed=seed)
    if name == 'fixed-random':
        return FixedKeepRatio(r, by='random', seed=seed)
    if name == 'random':
        return RandomExit([1.0 - v for v in r], seed=seed)
    raise ValueError(f'unknown policy {name!r}; use one of {POLICIES[1:]}')


def run_ablation(cfg, thresholds: List[float], policies=POLICIES, seed: int = 0
                 ) -> List[Dict[str, object]]:
    """Run every ``p0`` with the confidence rule, then the other policies matched.

    Args:
        cfg: from :func:`dtop.utils.benchmarking.prepare_test_cfg`.
        thresholds (list[float]): p0 values.
        policies (Sequence[str]): among :data:`POLICIES`.
        seed (int): seed of the random policies.

    Returns:
        list[dict]: one row per (p0, policy): ``policy``, ``p0``, ``ratios`` (per
        auxiliary stage), ``exit_policy`` (its repr) and the numeric metrics.
    """
    from dtop.models.pruning import ConfidenceThreshold
    from dtop.utils.benchmarking import PolicyEvaluator, stage_keep_ratios
    evaluator = PolicyEvaluator(cfg)
    S = evaluator.num_stages
    topk = evaluator.model.keep_topk_per_class
    rows = []
    for p0 in thresholds:
        conf = evaluator.model.set_exit_policy(ConfidenceThreshold(float(p0), topk))
        prunes = [conf.prunes_at(s) for s in range(S - 1)]
        metrics = evaluator.evaluate()
        ratios = stage_keep_ratios(metrics, S)
        rows.append(dict(policy='confidence', p0=float(p0), ratios=ratios,
                         exit_policy=repr(conf), **metrics))
        for name in policies:
            if name == 'confidence':
                continue
            policy = matched_policy(name, ratios, prunes, seed)
            metrics = evaluator.evaluate(policy)
            rows.append(dict(policy=name, p0=float(p0),
                             ratios=stage_keep_ratios(metrics, S),
                             exit_policy=repr(evaluator.model.exit_policy), **metrics))
    return rows


def format_table(rows: List[dict]) -> str:
    """Markdown table: policy, p0, per-stage keep ratios, GFLOPs/image, mIoU."""
    lines = ['| policy | p0 | keep ratio per stage | GFLOPs/img | GFLOPs/img (no aux) '
             '| mIoU |', '|---|---|---|---|---|---|']
    for r in rows:
        ratios = ', '.join(f'{v:.3f}' for v in r['ratios'])
        lines.append(f"| {r['policy']} | {r['p0']:g} | {ratios} | "
                     f"{r.get('GFLOPs_img', float('nan')):.4g} | "
                     f"{r.get('GFLOPs_img_noaux', float('nan')):.4g} | "
                     f"{r.get('mIoU', float('nan')):.2f} |")
    return '\n'.join(lines)


def write_outputs(rows: List[dict], out_dir: str, title: str = '') -> Dict[str, str]:
    """Write ``ablation.md``, ``ablation.json`` and ``ablation.png``."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {k: osp.join(out_dir, f'ablation.{k}') for k in ('md', 'json', 'png')}
    with open(paths['json'], 'w') as f:
        json.dump(rows, f, indent=2)
    with open(paths['md'], 'w') as f:
        f.write((f'{title}\n\n' if title else '') + format_table(rows) + '\n')

    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for name, marker in zip(POLICIES, 'os^v'):
        mine = sorted((r for r in rows if r['policy'] == name),
                      key=lambda r: r.get('GFLOPs_img', 0.0))
        if not mine:
            continue
        xs = [r.get('GFLOPs_img', float('nan')) for r in mine]
        ys = [r.get('mIoU', float('nan')) for r in mine]
        ax.plot(xs, ys, marker=marker, label=name)
        if name == 'confidence':
            for x, y, r in zip(xs, ys, mine):
                ax.annotate(f"p0={r['p0']:g}", (x, y), textcoords='offset points',
                            xytext=(4, 4), fontsize=8)
    if rows and 'GFLOPs_dense_img' in rows[0]:
        ax.axvline(rows[0]['GFLOPs_dense_img'], color='gray', ls='--',
                   label='dense (backbone + final head)')
    ax.set_xlabel('GFLOPs per image (with auxiliary heads)')
    ax.set_ylabel('mIoU')
    ax.grid(alpha=.3)
    ax.legend(fontsize=8)
    ax.set_title(title or 'exit policies at matched keep ratios', fontsize=9)
    fig.tight_layout()
    fig.savefig(paths['png'], dpi=120)
    plt.close(fig)
    return paths


def main(argv: Optional[List[str]] = None) -> List[dict]:
    args = parse_args(argv)
    from dtop.apis import default_work_dir, load_config
    from dtop.utils.benchmarking import prepare_test_cfg
    cfg = load_config(args.config, args.cfg_options, checkpoint=args.checkpoint)
    out_dir = args.out_dir or default_work_dir(args.config, 'ablate_')
    cfg = prepare_test_cfg(cfg, args.checkpoint, out_dir, args.num_images,
                           tool='ablate_exit_policy')
    if args.allow_partial_load:
        cfg.load_strict = False
    if args.trust_checkpoint:
        cfg.trust_checkpoint = True
    rows = run_ablation(cfg, args.thresholds, args.policies, args.seed)
    title = f'{osp.basename(args.config)} ({osp.basename(args.checkpoint)})'
    paths = write_outputs(rows, out_dir, title)
    print(title)
    print(format_table(rows))
    print('wrote ' + ', '.join(paths.values()))
    return rows


if __name__ == '__main__':
    from dtop.utils.errors import run_cli
    run_cli(main)
