"""Speed of dense vs pruned DToP inference, and how much of the FLOP saving becomes time.

Inputs are real: images from the config's test dataloader, run through the model's
data preprocessor and cut into slide-inference crops of the test crop size, or
whole images for whole-image inference (the unit the model runs on). Each variant
runs the same crops, batch 1 and batch N, after a warm-up; every repeat times one
pass over all crops (the variants are interleaved repeat by repeat, in a rotating
order, so that machine drift and order effects hit all alike) and the median repeat
is reported. Process CPU time is recorded too: on a shared machine it is far less
noisy than wall time. On GPU the timing is synchronised.

Variants:

* ``dense``: backbone + final head on every token — what the BASE model costs at
  inference (the README GFLOPs convention). Built from the model's own modules.
* ``dense+aux``: the same plus the two auxiliary heads on every token.
* ``p0=1``: the DToP model's stage loop with pruning disabled (all of its
  machinery: canvas, statistics; idle auxiliary heads are skipped, as in any
  inference with pruning off).
* ``pruned``: the DToP model pruning — with its own ``prune_threshold`` (or
  ``--threshold``), or with ``--keep-ratio r``: at every auxiliary stage exactly
  ``round(r * n)`` of an image's ``n`` active tokens stay and the rest exit,
  chosen by score (the most confident exit, as DToP) or at random. This makes the
  benchmark meaningful on untrained weights. It is done by overriding the model's
  ``select_stage_exits`` hook on the instance; nothing else changes.

Reported per variant and batch size: median latency per forward and per crop,
crops/s, GFLOPs per crop (ideal, i.e. per-image active counts; and executed, i.e.
with the padding of a batch to its largest image), speedup vs ``dense``, GFLOP
reduction vs ``dense`` and the **realization ratio** = speedup / GFLOP reduction
(1.0: time falls exactly as FLOPs do).

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
import types
from typing import Dict, List, Optional, Sequence

ROOT = osp.abspath(osp.join(osp.dirname(__file__), '..', '..'))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import torch  # noqa: E402
from torch import Tensor  # noqa: E402

VARIANTS = ('dense', 'dense+aux', 'p0=1', 'pruned')


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description='Dense vs pruned DToP inference speed')
    p.add_argument('config', help='config file')
    p.add_argument('checkpoint', nargs='?', default=None,
                   help='checkpoint (default: random weights from init_weights)')
    p.add_argument('--batch-size', type=int, default=8,
                   help='the larger batch size timed besides batch 1')
    p.add_argument('--keep-ratio', type=float, nargs='+', default=None,
                   help='force this fraction of active tokens to stay at each '
                   'auxiliary stage (one value, or one per auxiliary stage)')
    p.add_argument('--exit-by', choices=['score', 'random'], default='score',
                   help='with --keep-ratio: which tokens exit (the most confident, '
                   'or random ones)')
    p.add_argument('--keep-jitter', type=float, default=0.0,
                   help='with --keep-ratio: draw each crop\'s ratio uniformly in '
                   '[r - j, r + j] (unequal counts, so batches carry padding)')
    p.add_argument('--threshold', type=float, nargs='+', default=None,
                   help='override prune_threshold (p0) of the pruned variant')
    p.add_argument('--num-crops', type=int, default=None,
                   help='crops timed per repeat (default: the batch size)')
    p.add_argument('--repeats', type=int, default=3, help='timed repeats (median)')
    p.add_argument('--warmup', type=int, default=1, help='untimed forwards per variant')
    p.add_argument('--variants', nargs='+', default=['dense', 'dense+aux', 'p0=1', 'pruned'],
                   help=f'among {VARIANTS}, each optionally suffixed @fp32/@bf16/@fp16 '
                   '(e.g. "dense pruned pruned@bf16"); speedups are vs the first dense')
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
    p.add_argument('--allow-partial-load', action='store_true',
                   help='time a checkpoint whose keys or shapes do not all match the '
                   'model (default: stop with the first mismatches)')
    p.add_argument('--cfg-options', nargs='+', default=[], metavar='KEY=VALUE',
                   help='override config settings (mmengine syntax)')
    return p.parse_args(argv)


# ---------------------------------------------------------------- forced exits


def force_keep_ratio(model, keep_ratio: Sequence[float], exit_by: str = 'score',
                     jitter: float = 0.0, seed: int = 0) -> None:
    """Make ``model`` keep exactly ``round(r * n)`` active tokens per image and stage.

    Replaces the instance's ``select_stage_exits`` (the segmentor's hook for the
    pruning decision) and enables every auxiliary stage; the stage loop, heads and
    bookkeeping are the model's own.

    Args:
        model (DToPEncoderDecoder): the model (modified in place).
        keep_ratio (Sequence[float]): one ratio, or one per auxiliary stage.
        exit_by (str): ``'score'`` (the most confident tokens exit, as DToP's rule)
            or ``'random'``.
        jitter (float): per image, the ratio is drawn uniformly in ``[r - j, r + j]``.
        seed (int): seed of the random choices.
    """
    num_aux = len(model.prune_threshold)
    ratios = list(keep_ratio)
    if len(ratios) == 1:
        ratios = ratios * num_aux
    if len(ratios) != num_aux:
        raise ValueError(f'--keep-ratio needs 1 or {num_aux} values, got {keep_ratio}')
    if any(not 0.0 <= r <= 1.0 for r in ratios):
        raise ValueError(f'keep ratios must lie in [0, 1], got {ratios}')
    if exit_by not in ('score', 'random'):
        raise ValueError(f'exit_by must be "score" or "random", got {exit_by!r}')
    gen = torch.Generator().manual_seed(seed)
    from dtop.models.pruning.rule import token_scores

    def select_stage_exits(self, stage, scores, segments, threshold):
        B = segments.batch_size
        dev = scores.device
        if exit_by == 'score':
            conf = scores.amax(dim=1)
        else:
            conf = torch.rand(scores.shape[0], generator=gen).to(dev)
        n_active = segments.counts
        r = torch.full((B, ), ratios[stage])
        if jitter > 0:
            r = (r + (torch.rand(B, generator=gen) * 2 - 1) * jitter).clamp(0, 1)
        n_exit = n_active - torch.round(r.to(dev) * n_active).long()
        # rank of each token within its image, most confident first
        padded = segments.pad(conf, value=float('-inf'))
        rank = segments.unpad(padded.argsort(dim=1, descending=True).argsort(dim=1))
        return rank < n_exit[segments.batch_index]

    model.select_stage_exits = types.MethodType(select_stage_exits, model)
    model.prune_threshold = [0.5] * num_aux  # any non-None value: the hook decides


# ---------------------------------------------------------------- dense references


@torch.no_grad()
def dense_forward(model, inputs: Tensor, all_heads: bool = False) -> Tensor:
    """Backbone + final head on every token (optionally also the auxiliary heads).

    Same modules, kernels and output as ``model.encode_decode`` with pruning off,
    without the stage loop's bookkeeping (no canvas, no re-packing).

    Args:
        model (DToPEncoderDecoder): the model.
        inputs (Tensor): ``(B, 3, H, W)``.
        all_heads (bool): also run the auxiliary heads (outputs discarded).

    Returns:
        Tensor: ``(B, Q, H, W)`` final map.
    """
    bb = model.backbone
    x, pos, segs, (h, w) = bb.embed_packed(inputs)
    heads = model.stage_heads
    ranges = bb.stage_ranges
    if not all_heads:
        x = bb.forward_layers_packed(x, segs, ranges[0][0], ranges[-1][1])
    else:
        for s, (start, end) in enumerate(ranges[:-1]):
            x = bb.forward_layers_packed(x, segs, start, end)
            heads[s].forward_tokens(*bb.head_tokens(x, pos, segs, False)[::2])
        x = bb.forward_layers_packed(x, segs, ranges[-1][0], ranges[-1][1])
    tokens, _, tsegs = bb.head_tokens(x, pos, segs, True)
    head = heads[-1]
    out = head.forward_tokens(tokens, tsegs)
    B = inputs.shape[0]
    canvas = head.canvas_values(out, tsegs, head.canvas_space).float()
    canvas = canvas.view(B, h, w, -1).permute(0, 3, 1, 2)
    return head.to_pixels(head.final_map(out, canvas), inputs.shape[-2:], bb.patch_size)


def attention_padding_flops(dims, counts, backend_for, num_prefix_tokens: int = 0) -> float:
    """Extra FLOPs of the backbone's attention products in one batch when a padded
    kernel runs them: ``2 D (max n^2 - n^2)`` per layer and image. The per-image
    loop and the variable-length kernels compute exactly the ideal products.

    Args:
        dims (DToPCostDims): model dims.
        counts: ``(B, S)`` active patch tokens of the batch's images per stage.
        backend_for (callable): ``lengths -> backend name`` (the model's choice).
        num_prefix_tokens (int): cls tokens per image (never pruned).

    Returns:
        float: extra FLOPs of the whole batch.
    """
    import numpy as np
    counts = np.asarray(counts, dtype=np.float64)
    extra = 0.0
    for s, layers in enumerate(dims.stage_layers):
        n = counts[:, s] + num_prefix_tokens
        if backend_for([int(v) for v in n]) == 'padded':
            extra += layers * 2 * dims.embed_dims * float((n.max() ** 2 - n ** 2).sum())
    return extra


# ---------------------------------------------------------------- inputs


def load_cfg(config: str, cfg_options: Optional[List[str]] = None):
    """Load a config (with ``--cfg-options``), register modules, set the scope."""
    from mmengine.config import Config, DictAction
    from mmengine.registry import init_default_scope

    import dtop  # noqa: F401
    cfg = Config.fromfile(config)
    if cfg_options:
        parser = argparse.ArgumentParser()
        parser.add_argument('--o', nargs='+', action=DictAction)
        cfg.merge_from_dict(parser.parse_args(['--o', *cfg_options]).o)
    init_default_scope(cfg.get('default_scope', 'mmseg'))
    return cfg


def build_model(cfg, checkpoint: Optional[str], device: str,
                allow_partial_load: bool = False):
    """Build ``cfg.model`` in eval mode: checkpoint weights, or ``init_weights`` (random;
    pretrained-weight downloads are switched off either way)."""
    import copy

    from mmseg.registry import MODELS
    model_cfg = copy.deepcopy(cfg.model)
    model_cfg.pop('pretrained', None)
    if model_cfg.get('backbone', {}).get('init_cfg') is not None:
        model_cfg.backbone.init_cfg = None
    model = MODELS.build(model_cfg)
    if checkpoint:
        from dtop.utils import allow_full_checkpoint_unpickling
        from dtop.utils.checkpoint import load_checkpoint_strict

        # mmengine checkpoints need full unpickling under torch >= 2.6 (trusted files
        # only; see dtop/utils/checkpoint.py).
        allow_full_checkpoint_unpickling()
        load_checkpoint_strict(model, checkpoint, strict=not allow_partial_load)
    else:
        model.init_weights()
    return model.to(device).eval()


def crop_size_of(model) -> Optional[tuple]:
    """``(crop, stride)`` of slide inference; ``None`` for whole-image inference."""
    test_cfg = model.test_cfg or {}
    if test_cfg.get('mode', 'whole') == 'slide':
        return tuple(test_cfg['crop_size']), tuple(test_cfg['stride'])
    return None


@torch.no_grad()
def real_crops(cfg, model, num_crops: int, device: str) -> Tensor:
    """``(num_crops, 3, h, w)`` inference units of the first test images.

    Images come from ``cfg.test_dataloader`` (batch 1), through the model's data
    preprocessor. Slide inference (``test_cfg.mode='slide'``): the windows, placed
    as in slide inference (sides shorter than the crop are zero-padded). Whole-image
    inference: the images themselves; a batch needs one size, so when their sizes
    differ every image is centre-cropped to the largest size all of them have (and
    a note says so).
    """
    from mmengine.runner import Runner
    dl_cfg = cfg.test_dataloader.copy()
    dl_cfg['batch_size'] = 1
    dl_cfg['num_workers'] = 0
    dl_cfg.pop('persistent_workers', None)
    loader = Runner.build_dataloader(dl_cfg)
    slide = crop_size_of(model)
    crops = []
    for data in loader:
        data = model.data_preprocessor(data, False)
        img = data['inputs'].to(device)
        if slide is None:
            crops.append(img[0])
            if len(crops) == num_crops:
                break
            continue
        (hc, wc), (hs, ws) = slide
        _, _, H, W = img.shape
        if H < hc or W < wc:
            img = torch.nn.functional.pad(img, (0, max(wc - W, 0), 0, max(hc - H, 0)))
            H, W = img.shape[-2:]
        for y in range(0, max(H - hc + hs - 1, 0) // hs + 1):
            for x in range(0, max(W - wc + ws - 1, 0) // ws + 1):
                y2, x2 = min(y * hs + hc, H), min(x * ws + wc, W)
                crops.append(img[0, :, y2 - hc:y2, x2 - wc:x2])
                if len(crops) == num_crops:
                    return torch.stack(crops)
    if not crops:
        raise RuntimeError('the test dataloader yielded no images')
    if slide is None:
        h = min(c.shape[-2] for c in crops)
        w = min(c.shape[-1] for c in crops)
        if any(c.shape[-2:] != (h, w) for c in crops):
            print(f'whole-image inference: the {len(crops)} test images differ in size; '
                  f'each is centre-cropped to {h}x{w} so that they batch')
            tops = [((c.shape[-2] - h) // 2, (c.shape[-1] - w) // 2) for c in crops]
            crops = [c[:, y:y + h, x:x + w] for c, (y, x) in zip(crops, tops)]
    reps = -(-num_crops // len(crops))  # too few images: cycle through them
    return torch.stack((crops * reps)[:num_crops])


# ---------------------------------------------------------------- timing


def cpu_name() -> str:
    """The CPU model (from ``/proc/cpuinfo``, else ``platform.processor()``)."""
    import platform
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or 'CPU'


def _sync(device: str) -> None:
    if str(device).startswith('cuda'):
        torch.cuda.synchronize()


def run_benchmark(model, crops: Tensor, batch_sizes: Sequence[int],
                  variants: Sequence[str], repeats: int = 3, warmup: int = 1,
                  keep_ratio: Optional[Sequence[float]] = None, exit_by: str = 'score',
                  keep_jitter: float = 0.0, threshold: Optional[Sequence[float]] = None,
                  seed: int = 0, progress: bool = True,
                  precision: str = 'fp32') -> List[dict]:
    """Time the variants on ``crops`` at each batch size.

    Args:
        model (DToPEncoderDecoder): the model, in eval mode, on the crops' device.
        crops (Tensor): ``(num_crops, 3, h, w)`` preprocessed crops (one repeat
            runs all of them, ``batch_size`` at a time).
        batch_sizes (Sequence[int]): batch sizes to time.
        variants (Sequence[str]): among ``dense``, ``dense+aux``, ``p0=1``, ``pruned``,
            each optionally suffixed ``@fp32``/``@bf16``/``@fp16`` (autocast
            precision; default ``precision``). Speedups are relative to the first
            ``dense`` variant.
        repeats (int): timed repeats (the median is reported).
        warmup (int): untimed forwards per variant and batch size.
        keep_ratio (Sequence[float], optional): force this keep ratio in ``pruned``
            (see :func:`force_keep_ratio`); else the model's own rule.
        exit_by (str): ``'score'`` or ``'random'`` (with ``keep_ratio``).
        keep_jitter (float): per-image spread of the keep ratio.
        threshold (Sequence[float], optional): ``p0`` for ``pruned`` when no
            ``keep_ratio`` is given (default: the model's).
        seed (int): seed of the random exit choices.
        progress (bool): show an mmengine progress bar.
        precision (str): default precision of variants without a suffix.

    Returns:
        list[dict]: one row per (batch size, variant) with ``latency_s`` (median
        per forward), ``crop_latency_s``, ``crops_per_s``, ``gflops`` (ideal, per
        crop), ``gflops_executed`` (what the kernels execute: the packed
        token-wise work is the ideal; a padded attention kernel adds its
        padding), ``speedup``,
        ``gflops_reduction`` and ``realization`` (vs ``dense``), the mean
        ``keep_frac`` per stage, and all repeat times.
    """
    import numpy as np
    from mmengine.utils import ProgressBar

    from contextlib import nullcontext

    from dtop.evaluation.flops import DToPCostDims, dense_flops, model_flops
    from dtop.models.packing import Segments, select_attention_backend
    from dtop.models.pruning.options import validate_prune_threshold
    from dtop.utils.timing import LoadMonitor, spread, warn_timing
    from dtop.models.segmentors.dtop_encoder_decoder import PRECISIONS
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
    S = dims.num_stages
    dense_ref = dense_flops(dims, crop_shape)
    saved = (model.prune_threshold, model.__dict__.get('select_stage_exits'))

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
        variant = split(variant)[0]
        model.prune_threshold = list(saved[0])
        model.__dict__.pop('select_stage_exits', None)
        if variant == 'p0=1':
            model.prune_threshold = [None] * len(saved[0])
        elif variant == 'pruned':
            if keep_ratio is not None:
                force_keep_ratio(model, keep_ratio, exit_by, keep_jitter, seed)
            elif threshold is not None:
                model.prune_threshold = validate_prune_threshold(
                    threshold if len(threshold) > 1 else threshold[0], S)

    def forward(variant, x):
        name, prec = split(variant)
        dtype = PRECISIONS[prec]
        ctx = torch.autocast(x.device.type, dtype=dtype) if dtype else nullcontext()
        with ctx:
            if name == 'dense':
                return dense_forward(model, x), None
            if name == 'dense+aux':
                return dense_forward(model, x, all_heads=True), None
            probs, out = model._encode_decode_with_stats(x)
        heads_run[variant] = out.heads_run  # idle aux heads are skipped (p0 = 1)
        return probs, out.active_counts

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
                        _sync(device)
                        if bar:
                            bar.update(len(batches[0]))
                for r in range(repeats):
                    for v in variants[r % len(variants):] + variants[:r % len(variants)]:
                        configure(v)
                        if split(v)[0] == 'pruned' and keep_ratio is not None:
                            force_keep_ratio(model, keep_ratio, exit_by, keep_jitter,
                                             seed)  # same random choices every repeat
                        _sync(device)
                        t0, c0 = time.perf_counter(), time.process_time()
                        batch_counts = []
                        for b in batches:
                            _, c = forward(v, b)
                            batch_counts.append(c)
                        _sync(device)
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
                if counts[v] and counts[v][0] is not None:
                    c = torch.cat(counts[v]).cpu().numpy().astype(np.float64)
                    hr = heads_run.get(v) or None
                    ideal = model_flops(dims, c, crop_shape, N,
                                        heads_run=hr)['backbone_all_heads']
                    pick = backend_for(PRECISIONS[split(v)[1]] or torch.float32)
                    pad_extra = sum(attention_padding_flops(dims, cb.cpu().numpy(), pick,
                                                            prefix) for cb in counts[v])
                    executed = ideal + pad_extra / len(c)
                    keep = (c / N).mean(0).tolist()
                elif split(v)[0] == 'dense':
                    ideal = executed = np.array([dense_ref['backbone_final_head']])
                    keep = [1.0] * S
                else:
                    ideal = executed = np.array([dense_ref['backbone_all_heads']])
                    keep = [1.0] * S
                rows.append(dict(batch_size=bs, variant=v, precision=split(v)[1],
                                 latency_s=med / len(batches),
                                 crop_latency_s=med / len(crops),
                                 crops_per_s=len(crops) / med,
                                 gflops=float(ideal.mean() / 1e9),
                                 gflops_executed=float(executed.mean() / 1e9),
                                 cpu_crop_s=statistics.median(cpu_times[v]) / len(crops),
                                 keep_frac=keep, times_s=times[v], cpu_times_s=cpu_times[v],
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
        model.prune_threshold = saved[0]
        model.__dict__.pop('select_stage_exits', None)
        if saved[1] is not None:
            model.select_stage_exits = saved[1]
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


def main(argv: Optional[List[str]] = None) -> Dict[str, object]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    cfg = load_cfg(args.config, args.cfg_options)
    model = build_model(cfg, args.checkpoint, args.device, args.allow_partial_load)
    batch_sizes = args.batch_sizes or sorted({1, args.batch_size})
    num_crops = args.num_crops or max(batch_sizes)
    if num_crops % max(batch_sizes):
        raise SystemExit('--num-crops must be a multiple of the batch sizes')
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
    print(f'device: {device}; torch {torch.__version__}; {num_crops} real crops '
          f'{tuple(crops.shape[-2:])}; median of {args.repeats} repeats; '
          f'pruned: ' + (f'keep ratio {args.keep_ratio} by {args.exit_by}'
                         + (f' ± {args.keep_jitter}' if args.keep_jitter else '')
                         if args.keep_ratio else
                         f'prune_threshold {args.threshold or model.prune_threshold}'))
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
