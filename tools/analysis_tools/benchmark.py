"""Speed of dense vs pruned DToP inference, and how much of the FLOP saving becomes time.

Inputs are real: images from the config's test dataloader, run through the model's
data preprocessor and cut into slide-inference crops of the test crop size, or
whole images for whole-image inference (the unit the model runs on;
:func:`dtop.utils.benchmarking.real_crops`). Each variant runs the same crops,
batch 1 and batch N, after a warm-up; every repeat times one pass over all crops
(the variants are interleaved repeat by repeat, in a rotating order, so that
machine drift and order effects hit all alike) and the median repeat is reported.
Process CPU time is recorded too: on a shared machine it is far less noisy than
wall time. On GPU the timing is synchronised.

Every variant is the model's own stage loop (``model.encode_decode_with_stats``)
under an exit policy installed with ``model.set_exit_policy``
(:mod:`dtop.models.pruning.policies`); the tool never re-implements the loop or
patches the model. Variants:

* ``dense``: ``ConfidenceThreshold(None)``: nothing can exit, so the loop skips the
  idle auxiliary heads: backbone + final head on every token — what the BASE model
  costs at inference (the README GFLOPs convention).
* ``dense+aux``: the same with ``test_cfg.skip_idle_aux_heads=False``: the
  auxiliary heads run too (on every token).
* ``p0=1``: an alias of ``dense`` (kept for old command lines). It used to be the
  stage loop with pruning off next to a hand-written dense forward; both are now
  the same code path, so it is no longer in the default variants.
* ``pruned``: the model pruning — with its own exit policy; or with
  ``--threshold p0``: ``ConfidenceThreshold(p0)``; or with ``--keep-ratio r``:
  ``FixedKeepRatio(r, jitter=--keep-jitter, by=--exit-by)``: at every auxiliary
  stage exactly ``round(r * n)`` of an image's ``n`` active tokens stay and the
  rest exit, the most confident ones (``--exit-by score``) or random ones. This
  makes the benchmark meaningful on untrained weights. Seeded policies restart
  their random stream before every repeat (the same choices each time).

Any variant may carry a precision suffix, ``@fp32``/``@bf16``/``@fp16`` (autocast;
default ``--precision``).

Reported per variant and batch size: median latency per forward and per crop,
crops/s, GFLOPs per crop (ideal, i.e. per-image active counts and the heads that
ran; and executed, i.e. with the padding of a batch to its largest image),
speedup vs ``dense``, GFLOP reduction vs ``dense`` and the **realization ratio**
= speedup / GFLOP reduction (1.0: time falls exactly as FLOPs do).

Example::

    python tools/analysis_tools/benchmark.py CONFIG [CKPT] --batch-size 8 \\
        --keep-ratio 0.6 --repeats 3 --num-crops 8
"""
import argparse
import json
import os.path as osp
import statistics
import sys
import time
from typing import Dict, List, Optional, Sequence

ROOT = osp.abspath(osp.join(osp.dirname(__file__), '..', '..'))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import torch  # noqa: E402

from dtop.utils.benchmarking import (attention_padding_flops, cpu_name,  # noqa: E402
                                     real_crops, sync)
from dtop.utils.cli import (add_cfg_options_arg, add_partial_load_arg,  # noqa: E402
                            add_trust_checkpoint_arg)

VARIANTS = ('dense', 'dense+aux', 'p0=1', 'pruned')
DEFAULT_VARIANTS = ('dense', 'dense+aux', 'pruned')


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description='Dense vs pruned DToP inference speed')
    p.add_argument('config', help='config file')
    p.add_argument('checkpoint', nargs='?', default=None,
                   help='checkpoint (default: random weights from init_weights)')
    p.add_argument('--batch-size', type=int, default=8,
                   help='the larger batch size timed besides batch 1')
    p.add_argument('--keep-ratio', type=float, nargs='+', default=None,
                   help='pruned variant: FixedKeepRatio, this fraction of the active '
                   'tokens stays at each auxiliary stage (one value, or one per stage)')
    p.add_argument('--exit-by', choices=['score', 'random'], default='score',
                   help='with --keep-ratio: which tokens exit (the most confident, '
                   'or random ones)')
    p.add_argument('--keep-jitter', type=float, default=0.0,
                   help='with --keep-ratio: draw each crop\'s ratio uniformly in '
                   '[r - j, r + j] (unequal counts, so batches carry padding)')
    p.add_argument('--threshold', type=float, nargs='+', default=None,
                   help='pruned variant: ConfidenceThreshold with this p0 (one value, '
                   'or one per auxiliary stage)')
    p.add_argument('--num-crops', type=int, default=None,
                   help='crops timed per repeat (default: the batch size)')
    p.add_argument('--repeats', type=int, default=3, help='timed repeats (median)')
    p.add_argument('--warmup', type=int, default=1, help='untimed forwards per variant')
    p.add_argument('--variants', nargs='+', default=list(DEFAULT_VARIANTS),
                   help=f'among {VARIANTS} (p0=1 is an alias of dense), each optionally '
                   'suffixed @fp32/@bf16/@fp16 (e.g. "dense pruned pruned@bf16"); '
                   'speedups are vs the first dense')
    p.add_argument('--precision', choices=['fp32', 'bf16', 'fp16'], default='fp32',
                   help='autocast precision of variants without a suffix')
    p.add_argument('--attention-backend', default=None,
                   choices=['auto', 'dense', 'varlen', 'nested', 'loop', 'padded'],
                   help='force the backbone attention backend (default: the config\'s)')
    p.add_argument('--batch-sizes', type=int, nargs='+', default=None,
                   help='explicit batch sizes (default: 1 and --batch-size)')
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--threads', type=int, default=None, help='torch CPU threads')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--out', help='write the results as JSON here')
    add_partial_load_arg(p, 'time a checkpoint whose keys or shapes do not all match the '
                         'model (default: stop with the first mismatches)')
    add_trust_checkpoint_arg(p)
    add_cfg_options_arg(p, checked=False)
    return p.parse_args(argv)


def keep_ratio_policy(keep_ratio: Sequence[float], exit_by: str = 'score',
                      jitter: float = 0.0, seed: int = 0):
    """The ``--keep-ratio`` policy: ``FixedKeepRatio`` (validated when installed).

    Args:
        keep_ratio (Sequence[float]): one ratio, or one per auxiliary stage.
        exit_by (str): ``'score'`` (the most confident tokens exit) or ``'random'``.
        jitter (float): per image, the ratio is drawn uniformly in ``[r - j, r + j]``.
        seed (int): seed of the random choices.
    """
    from dtop.models.pruning import FixedKeepRatio
    ratios = list(keep_ratio)
    return FixedKeepRatio(ratios[0] if len(ratios) == 1 else ratios, jitter=jitter,
                          by=exit_by, seed=seed)


def variant_setup(name: str, default_policy, keep_ratio=None, exit_by: str = 'score',
                  keep_jitter: float = 0.0, threshold=None, seed: int = 0,
                  topk: int = 5):
    """``(exit policy, skip_idle_aux_heads)`` of a variant (without precision suffix).

    Args:
        name (str): ``dense``, ``dense+aux``, ``p0=1`` or ``pruned``.
        default_policy (ExitPolicy): the model's own policy (``pruned`` without
            ``keep_ratio``/``threshold``).
        keep_ratio, exit_by, keep_jitter, seed: see :func:`keep_ratio_policy`.
        threshold (Sequence[float], optional): p0 of ``pruned``.
        topk (int): ``k`` of the confidence policies.
    """
    from dtop.models.pruning import ConfidenceThreshold
    if name in ('dense', 'p0=1'):
        return ConfidenceThreshold(None, topk), True
    if name == 'dense+aux':
        return ConfidenceThreshold(None, topk), False
    if keep_ratio is not None:
        return keep_ratio_policy(keep_ratio, exit_by, keep_jitter, seed), True
    if threshold is not None:
        values = list(threshold)
        return ConfidenceThreshold(values[0] if len(values) == 1 else values, topk), True
    return default_policy, True


def run_benchmark(model, crops: torch.Tensor, batch_sizes: Sequence[int],
                  variants: Sequence[str], repeats: int = 3, warmup: int = 1,
                  keep_ratio: Optional[Sequence[float]] = None, exit_by: str = 'score',
                  keep_jitter: float = 0.0, threshold: Optional[Sequence[float]] = None,
                  seed: int = 0, progress: bool = True,
                  precision: str = 'fp32') -> List[dict]:
    """Time the variants on ``crops`` at each batch size.

    Args:
        model (DToPEncoderDecoder): the model, in eval mode, on the crops' device
            (its exit policy and ``test_cfg`` are restored on return).
        crops (Tensor): ``(num_crops, 3, h, w)`` preprocessed crops (one repeat
            runs all of them, ``batch_size`` at a time).
        batch_sizes (Sequence[int]): batch sizes to time.
        variants (Sequence[str]): among :data:`VARIANTS`, each optionally suffixed
            ``@fp32``/``@bf16``/``@fp16`` (autocast precision; default
            ``precision``). Speedups are relative to the first ``dense`` variant.
        repeats (int): timed repeats (the median is reported).
        warmup (int): untimed forwards per variant and batch size.
        keep_ratio, exit_by, keep_jitter, threshold, seed: the ``pruned``
            variant's policy (see :func:`variant_setup`).
        progress (bool): show an mmengine progress bar.
        precision (str): default precision of variants without a suffix.

    Returns:
        list[dict]: one row per (batch size, variant) with ``latency_s`` (median
        per forward), ``crop_latency_s``, ``crops_per_s``, ``gflops`` (ideal, per
        crop), ``gflops_executed`` (what the kernels execute: the packed
        token-wise work is the ideal; a padded attention kernel adds its
        padding), ``speedup``, ``gflops_reduction`` and ``realization`` (vs
        ``dense``), the mean ``keep_frac`` per stage, ``heads_run`` and all
        repeat times.
    """
    from contextlib import nullcontext

    import numpy as np
    from mmengine.utils import ProgressBar

    from dtop.evaluation.flops import DToPCostDims, model_flops
    from dtop.models.packing import Segments, select_attention_backend
    from dtop.models.segmentors.dtop_encoder_decoder import PRECISIONS
    from dtop.utils.timing import LoadMonitor, spread, warn_timing
    variants = list(variants)
    for v in variants:
        name, _, prec = v.partition('@')
        if name not in VARIANTS or (prec and prec not in PRECISIONS):
            raise ValueError(f'unknown variant {v!r}: use one of {VARIANTS}, optionally '
                             f'with @{"/@".join(PRECISIONS)}')
    if precision not in PRECISIONS:
        raise ValueError(f'precision must be one of {sorted(PRECISIONS)}, got {precision!r}')
    dims = DToPCostDims.from_model(model)
    device = str(crops.device)
    crop_shape = tuple(crops.shape[-2:])
    N = dims.grid_tokens(crop_shape)
    saved_policy = model.exit_policy
    saved_skip = model.test_cfg.get('skip_idle_aux_heads', None)
    topk = model.keep_topk_per_class
    setups = {}
    for v in variants:  # build (and check) every policy before timing anything
        policy, skip = variant_setup(v.partition('@')[0], saved_policy, keep_ratio,
                                     exit_by, keep_jitter, threshold, seed, topk)
        setups[v] = (model.set_exit_policy(policy), skip)
    model.set_exit_policy(saved_policy)

    def split(variant):
        name, _, prec = variant.partition('@')
        return name, prec or precision

    bb = model.backbone
    prefix = getattr(bb, 'num_prefix_tokens', 0)

    def backend_for(dtype):
        def pick(lengths):
            return select_attention_backend(crops.device.type, dtype,
                                            Segments.from_lengths(lengths, 'cpu'),
                                            getattr(bb, 'attention_backend', 'auto'))
        return pick

    def configure(variant):
        policy, skip = setups[variant]
        model.set_exit_policy(policy)
        if hasattr(policy, 'reset'):
            policy.reset()  # the same random choices every repeat
        model.test_cfg['skip_idle_aux_heads'] = skip

    def forward(variant, x):
        dtype = PRECISIONS[split(variant)[1]]
        with torch.autocast(x.device.type, dtype=dtype) if dtype else nullcontext():
            _, out = model.encode_decode_with_stats(x)
        heads_run[variant] = out.heads_run
        return out.active_counts

    heads_run = {}
    rows = []
    total = sum(len(variants) * (warmup * bs + repeats * len(crops)) for bs in batch_sizes)
    bar = ProgressBar(total) if progress else None
    try:
        for bs in batch_sizes:
            batches = [crops[i:i + bs] for i in range(0, len(crops), bs)]
            times = {v: [] for v in variants}
            cpu_times = {v: [] for v in variants}
            monitor = LoadMonitor()
            counts = {v: [] for v in variants}
            with torch.inference_mode():
                for v in variants:  # warm-up
                    configure(v)
                    for _ in range(warmup):
                        forward(v, batches[0])
                        sync(device)
                        if bar:
                            bar.update(len(batches[0]))
                for r in range(repeats):
                    for v in variants[r % len(variants):] + variants[:r % len(variants)]:
                        configure(v)
                        sync(device)
                        t0, c0 = time.perf_counter(), time.process_time()
                        batch_counts = [forward(v, b) for b in batches]
                        sync(device)
                        times[v].append(time.perf_counter() - t0)
                        cpu_times[v].append(time.process_time() - c0)
                        if r == 0:
                            counts[v] = batch_counts
                        if bar:  # outside the timed region
                            bar.update(len(crops))
            load = monitor.stop()
            for v in variants:
                med = statistics.median(times[v])
                warnings = warn_timing(times[v], load, what=f'batch {bs}, {v}')
                c = torch.cat(counts[v]).cpu().numpy().astype(np.float64)
                ideal = model_flops(dims, c, crop_shape, N,
                                    heads_run=heads_run[v])['backbone_all_heads']
                pick = backend_for(PRECISIONS[split(v)[1]] or torch.float32)
                pad_extra = sum(attention_padding_flops(dims, cb.cpu().numpy(), pick, prefix)
                                for cb in counts[v])
                executed = ideal + pad_extra / len(c)
                rows.append(dict(batch_size=bs, variant=v, precision=split(v)[1],
                                 latency_s=med / len(batches),
                                 crop_latency_s=med / len(crops),
                                 crops_per_s=len(crops) / med,
                                 gflops=float(ideal.mean() / 1e9),
                                 gflops_executed=float(executed.mean() / 1e9),
                                 cpu_crop_s=statistics.median(cpu_times[v]) / len(crops),
                                 keep_frac=(c / N).mean(0).tolist(),
                                 heads_run=list(heads_run[v]),
                                 exit_policy=repr(setups[v][0]),
                                 times_s=times[v], cpu_times_s=cpu_times[v],
                                 spread=spread(times[v])['rel_spread'], load=load,
                                 timing_warnings=warnings,
                                 num_crops=len(crops), crop_shape=list(crop_shape)))
            ref = next((r for r in rows if r['batch_size'] == bs
                        and split(r['variant'])[0] == 'dense'), None)
            for row in rows:
                if row['batch_size'] == bs and ref is not None:
                    row['speedup'] = ref['crop_latency_s'] / row['crop_latency_s']
                    row['gflops_reduction'] = ref['gflops'] / row['gflops']
                    row['realization'] = row['speedup'] / row['gflops_reduction']
                    row['realization_cpu'] = (ref['cpu_crop_s'] / row['cpu_crop_s']
                                              / row['gflops_reduction'])
    finally:
        model.set_exit_policy(saved_policy)
        if saved_skip is None:
            model.test_cfg.pop('skip_idle_aux_heads', None)
        else:
            model.test_cfg['skip_idle_aux_heads'] = saved_skip
        if bar:
            bar.file.write('\n')
    return rows


def format_rows(rows: List[dict]) -> str:
    head = (f"{'batch':>5} {'variant':<14} {'ms/forward':>11} {'ms/crop':>9} {'crops/s':>8} "
            f"{'GFLOPs':>8} {'exec GF':>8} {'keep s1,s2..':>13} {'speedup':>8} "
            f"{'FLOP red.':>9} {'realiz.':>8} {'(cpu t)':>8}")
    lines = [head, '-' * len(head)]
    for r in rows:
        keep = ','.join(f'{k:.2f}' for k in r['keep_frac'][1:])
        lines.append(
            f"{r['batch_size']:>5} {r['variant']:<14} {1e3 * r['latency_s']:>11.1f} "
            f"{1e3 * r['crop_latency_s']:>9.1f} {r['crops_per_s']:>8.3f} {r['gflops']:>8.4g} "
            f"{r['gflops_executed']:>8.4g} {keep:>13} {r.get('speedup', float('nan')):>8.3f} "
            f"{r.get('gflops_reduction', float('nan')):>9.3f} "
            f"{r.get('realization', float('nan')):>8.3f} "
            f"{r.get('realization_cpu', float('nan')):>8.3f}")
    return '\n'.join(lines)


def check_counts(args: argparse.Namespace) -> List[int]:
    """Check the count options before anything is built.

    Returns:
        list[int]: the batch sizes to time.

    Raises:
        OptionError: a batch size, ``--num-crops``, ``--repeats``, ``--threads``
            below 1, a negative ``--warmup``, or ``--num-crops`` that is not a
            multiple of the largest batch size (named, with the fix).
    """
    from dtop.utils.errors import OptionError
    for name, values, least, example in (
            ('--batch-sizes', args.batch_sizes or [], 1, '--batch-sizes 1 8'),
            ('--batch-size', [args.batch_size], 1, '--batch-size 8'),
            ('--num-crops', [1 if args.num_crops is None else args.num_crops], 1,
             '--num-crops 8'),
            ('--repeats', [args.repeats], 1, '--repeats 3'),
            ('--threads', [1 if args.threads is None else args.threads], 1, '--threads 4'),
            ('--warmup', [args.warmup], 0, '--warmup 1')):
        bad = [v for v in values if v < least]
        if bad:
            raise OptionError(f'{name} must be >= {least}, got {bad[0]}; e.g. {example}.')
    batch_sizes = args.batch_sizes or sorted({1, args.batch_size})
    if args.num_crops and args.num_crops % max(batch_sizes):
        raise OptionError(f'--num-crops {args.num_crops} must be a multiple of the largest '
                          f'batch size {max(batch_sizes)} (every repeat times whole '
                          f'batches); e.g. --num-crops {max(batch_sizes)}.')
    return batch_sizes


def main(argv: Optional[List[str]] = None) -> Dict[str, object]:
    args = parse_args(argv)
    batch_sizes = check_counts(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    from dtop.apis import init_model, load_config
    cfg = load_config(args.config, cfg_options=args.cfg_options)
    model = init_model(cfg, args.checkpoint, device=args.device,
                       allow_partial_load=args.allow_partial_load,
                       trust_checkpoint=args.trust_checkpoint or None)
    num_crops = args.num_crops or max(batch_sizes)
    if args.attention_backend:
        model.backbone.attention_backend = args.attention_backend
    crops = real_crops(cfg, model, num_crops, args.device)
    rows = run_benchmark(model, crops, batch_sizes, args.variants, args.repeats,
                         args.warmup, args.keep_ratio, args.exit_by, args.keep_jitter,
                         args.threshold, args.seed, precision=args.precision)
    threads = torch.get_num_threads()
    device = (torch.cuda.get_device_name(args.device) if args.device.startswith('cuda')
              else f'{cpu_name()}, {threads} thread' + ('s' if threads != 1 else ''))
    print(f'config: {args.config}  checkpoint: {args.checkpoint or "random init"}')
    pruned = next((r['exit_policy'] for r in rows if r['variant'].startswith('pruned')),
                  'not run')
    print(f'device: {device}; torch {torch.__version__}; {num_crops} real crops '
          f'{tuple(crops.shape[-2:])}; median of {args.repeats} repeats; pruned: {pruned}')
    print(format_rows(rows))
    notes = [w for r in rows for w in r['timing_warnings']]
    if notes:
        print('UNRELIABLE TIMING (the machine was busy or the repeats disagree):')
        for w in notes:
            print('  - ' + w)
    result = dict(config=args.config, checkpoint=args.checkpoint, device=device,
                  torch=torch.__version__, args=vars(args), rows=rows)
    if args.out:
        with open(args.out, 'w') as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == '__main__':
    from dtop.utils.errors import run_cli
    run_cli(main)
