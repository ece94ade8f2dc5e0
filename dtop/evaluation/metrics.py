"""mIoU together with the dynamic GFLOPs of DToP, as one mmengine metric.

:class:`IoUFlopsMetric` is mmseg's :class:`IoUMetric` plus the cost of every test
image computed from the per-crop active-token counts that
:class:`DToPEncoderDecoder.predict` attaches to each sample (metainfo
``dtop_stats``); no second forward pass is needed. The cost model is
:mod:`dtop.evaluation.flops` (fvcore counting conventions; docs/benchmarks.md).

The metric needs the model's dimensions. Give them one of three ways:

* ``custom_hooks = [dict(type='FlopsMetricDimsHook')]`` in the config (recommended:
  the hook reads them from the built model before every val/test run, so nothing
  has to be repeated in the config);
* ``cost_dims=...`` (a :class:`DToPCostDims` or its ``to_dict()``);
* ``model_cfg=cfg.model`` (the model is built on the ``meta`` device to read them).

Reported keys (next to ``aAcc``/``mIoU``/``mAcc``):

* ``GFLOPs_img`` / ``GFLOPs_img_std``: mean / std over images of the pruned cost of
  one test image (sum over its slide crops), **with** the auxiliary heads (which
  pruning needs); ``GFLOPs_img_noaux`` / ``GFLOPs_img_noaux_std`` without them.
* ``GFLOPs_crop`` / ``GFLOPs_crop_std`` / ``GFLOPs_crop_noaux`` /
  ``GFLOPs_crop_noaux_std``: the same over all slide crops.
* ``GFLOPs_dense_crop`` (backbone + final head, the README BASE convention),
  ``GFLOPs_dense_crop_allheads`` (backbone + all heads), ``GFLOPs_dense_img`` and
  ``GFLOPs_dense_img_allheads``: the dense reference of the same crops/images.
* ``GFLOPs_reduction_pct`` = 100 (1 - pruned with aux heads / dense BASE), and
  ``GFLOPs_reduction_noaux_pct`` = 100 (1 - pruned without aux heads / dense BASE);
  the ratio of totals, so the same per image and per crop.
* ``exit_frac_s{s}``: mean over crops of the fraction of the grid's tokens that
  exited after stage ``s`` (auxiliary stages); ``active_frac_final``: the fraction
  that reached the final stage.
* ``crops_per_img``: mean slide crops per image (summed over TTA passes).
* ``tta_passes_per_img`` (``--tta`` runs only, via :class:`DToPTTAModel`): augmented
  passes per image; every GFLOPs figure per image is then the sum over the passes.
"""
import copy
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from mmengine.hooks import Hook
from mmengine.logging import MMLogger, print_log
from mmseg.evaluation.metrics import IoUMetric
from mmseg.registry import HOOKS, METRICS
from prettytable import PrettyTable

from .flops import DToPCostDims, model_flops


def _to_numpy(x) -> np.ndarray:
    if hasattr(x, 'detach'):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def flops_summary(records: Sequence[dict], dims: DToPCostDims) -> Dict[str, float]:
    """Aggregate per-image token statistics into the GFLOPs report.

    Args:
        records (Sequence[dict]): one per image, with ``token_counts``
            ``(num_crops, S)``, ``grid_tokens`` (int), ``crop_shape`` ``(h, w)`` and
            optionally ``heads_run`` (per stage, whether its head ran; default all),
            or ``passes``: a list of such records, one per test-time augmentation
            pass (the image's cost is then the sum over its passes).
        dims (DToPCostDims): model dimensions.

    Returns:
        dict: the keys listed in the module docstring (GFLOPs, percentages and
        fractions as floats).
    """
    if not records:
        return {}
    S = dims.num_stages
    img_with, img_without, img_dense, img_dense_all = [], [], [], []
    crop_with, crop_without, crop_dense, crop_dense_all = [], [], [], []
    exit_fracs, final_fracs, crops_per_img = [], [], []
    passes_per_img = []
    for rec in records:
        # Test-time augmentation (DToPTTAModel): one record per augmented pass; the
        # image's cost is the sum over its passes.
        passes = rec.get('passes') or [rec]
        totals = np.zeros(4)
        n_img = 0
        for p in passes:
            counts = _to_numpy(p['token_counts']).reshape(-1, S).astype(np.float64)
            crop_shape = tuple(int(v) for v in p['crop_shape'])
            N = int(p['grid_tokens'])
            cost = model_flops(dims, counts, crop_shape, grid_tokens=N,
                               heads_run=p.get('heads_run'))
            dense = model_flops(dims, np.full((1, S), N), crop_shape, grid_tokens=N)
            n = counts.shape[0]
            crop_with.append(cost['backbone_all_heads'])
            crop_without.append(cost['backbone_final_head'])
            crop_dense.append(np.repeat(dense['backbone_final_head'], n))
            crop_dense_all.append(np.repeat(dense['backbone_all_heads'], n))
            totals += (cost['backbone_all_heads'].sum(), cost['backbone_final_head'].sum(),
                       dense['backbone_final_head'][0] * n,
                       dense['backbone_all_heads'][0] * n)
            exit_fracs.append((counts[:, :-1] - counts[:, 1:]) / N)
            final_fracs.append(counts[:, -1] / N)
            n_img += n
        img_with.append(totals[0])
        img_without.append(totals[1])
        img_dense.append(totals[2])
        img_dense_all.append(totals[3])
        crops_per_img.append(n_img)
        passes_per_img.append(len(passes))
    g = 1e-9
    crop_with, crop_without = np.concatenate(crop_with) * g, np.concatenate(crop_without) * g
    crop_dense, crop_dense_all = np.concatenate(crop_dense) * g, np.concatenate(crop_dense_all) * g
    img_with, img_without = np.asarray(img_with) * g, np.asarray(img_without) * g
    img_dense, img_dense_all = np.asarray(img_dense) * g, np.asarray(img_dense_all) * g
    exit_fracs = np.concatenate(exit_fracs)
    out = dict(
        GFLOPs_img=img_with.mean(), GFLOPs_img_std=img_with.std(),
        GFLOPs_img_noaux=img_without.mean(), GFLOPs_img_noaux_std=img_without.std(),
        GFLOPs_crop=crop_with.mean(), GFLOPs_crop_std=crop_with.std(),
        GFLOPs_crop_noaux=crop_without.mean(), GFLOPs_crop_noaux_std=crop_without.std(),
        GFLOPs_dense_crop=crop_dense.mean(), GFLOPs_dense_crop_allheads=crop_dense_all.mean(),
        GFLOPs_dense_img=img_dense.mean(), GFLOPs_dense_img_allheads=img_dense_all.mean(),
        GFLOPs_reduction_pct=100.0 * (1.0 - crop_with.sum() / crop_dense.sum()),
        GFLOPs_reduction_noaux_pct=100.0 * (1.0 - crop_without.sum() / crop_dense.sum()))
    for s in range(S - 1):
        out[f'exit_frac_s{s}'] = exit_fracs[:, s].mean()
    out['active_frac_final'] = np.concatenate(final_fracs).mean()
    out['crops_per_img'] = float(np.mean(crops_per_img))
    if max(passes_per_img) > 1:
        out['tta_passes_per_img'] = float(np.mean(passes_per_img))
    return {k: float(v) for k, v in out.items()}


def stats_record(stats: dict) -> dict:
    """The small part of one ``dtop_stats`` that the cost model needs (no exit map).

    Args:
        stats (dict): a sample's ``dtop_stats`` (``token_counts``, ``grid_tokens``,
            ``crop_shape``, optionally ``heads_run`` and, for test-time
            augmentation, ``passes``: one such dict per augmented pass).

    Returns:
        dict: a record for :func:`flops_summary`.
    """
    rec = dict(token_counts=_to_numpy(stats['token_counts']).astype(np.int32),
               grid_tokens=int(stats['grid_tokens']),
               crop_shape=tuple(int(v) for v in stats['crop_shape']))
    if stats.get('heads_run') is not None:
        rec['heads_run'] = tuple(bool(v) for v in stats['heads_run'])
    if stats.get('passes'):
        rec['passes'] = [stats_record(p) for p in stats['passes']]
    return rec


def image_gflops(stats: dict, dims: DToPCostDims) -> Dict[str, float]:
    """GFLOPs of one image from its ``dtop_stats``, as :class:`IoUFlopsMetric`
    reports them (:func:`flops_summary` of this one image).

    Args:
        stats (dict): the sample's ``dtop_stats``.
        dims (DToPCostDims): model dims (``DToPCostDims.from_model(model)``).

    Returns:
        dict: ``gflops`` (pruned, with the auxiliary heads that ran),
        ``gflops_noaux`` (without them), ``gflops_dense`` (backbone + final head on
        every token of the same crops), ``gflops_dense_allheads`` and
        ``reduction_pct`` (``100 (1 - gflops / gflops_dense)``).
    """
    summary = flops_summary([stats_record(stats)], dims)
    return dict(gflops=summary['GFLOPs_img'], gflops_noaux=summary['GFLOPs_img_noaux'],
                gflops_dense=summary['GFLOPs_dense_img'],
                gflops_dense_allheads=summary['GFLOPs_dense_img_allheads'],
                reduction_pct=summary['GFLOPs_reduction_pct'])


def _resolve_dims(cost_dims, model_cfg) -> Optional[DToPCostDims]:
    if cost_dims is not None:
        if isinstance(cost_dims, DToPCostDims):
            return cost_dims
        return DToPCostDims.from_dict(dict(cost_dims))
    if model_cfg is not None:
        return DToPCostDims.from_config(model_cfg)
    return None


def _non_finite_logits(ds: dict) -> Optional[str]:
    """The image path when the sample's ``seg_logits`` hold NaN/Inf, else None."""
    logits = (ds.get('seg_logits') or {}).get('data') if isinstance(
        ds.get('seg_logits'), dict) else None
    if torch.is_tensor(logits) and logits.numel() and not bool(torch.isfinite(logits).all()):
        return str(ds.get('img_path') or 'an image without img_path')
    return None


def _refuse_nan_results(results: List[tuple]) -> None:
    """Raise when any image's logits were non-finite: its scores are not numbers."""
    from dtop.utils.errors import NonFiniteError
    bad = [r[2] for r in results if len(r) > 2 and r[2] is not None]
    if bad:
        raise NonFiniteError(
            f'IoUFlopsMetric: the model\'s logits are NaN/Inf for {len(bad)} of '
            f'{len(results)} images (first: {bad[0]}), so no metric is reported. The '
            'weights or the inference precision are at fault: use a checkpoint with finite '
            'weights (the tools refuse NaN/Inf weights) and try --precision fp32.')


def _refuse_unlabelled(ious: List[tuple], ignore_index: int) -> None:
    """Raise when no pixel of the split is labelled (aAcc/mIoU would be nan)."""
    from dtop.utils.errors import DataError
    labelled = sum(float(r[3].sum()) for r in ious)
    if labelled == 0:
        raise DataError(
            f'IoUFlopsMetric: the {len(ious)} images of the split have no labelled pixels '
            f'(every annotation pixel is the ignore index {ignore_index} after the '
            'dataset\'s label mapping, e.g. reduce_zero_label turns 0 into 255), so aAcc '
            'and mIoU would be nan. Check the annotations: tools/misc/check_dataset.py '
            'CONFIG.')


@METRICS.register_module()
class IoUFlopsMetric(IoUMetric):
    """:class:`IoUMetric` plus DToP's dynamic GFLOPs and token-exit statistics.

    Args:
        cost_dims (DToPCostDims | dict, optional): model dims for the cost model.
        model_cfg (dict, optional): the model config, used to derive the dims if
            ``cost_dims`` is not given.
        require_stats (bool): raise if a sample carries no ``dtop_stats`` (True),
            or report IoU only for such runs (False, with a warning). Default False.
        **kwargs: :class:`IoUMetric` arguments (``iou_metrics``, ``ignore_index``,
            ``format_only``, ``output_dir``, ``prefix``, ...).

    Per sample only the small ``(num_crops, S)`` count array, the grid size and
    the crop shape are kept, so multi-process collection stays cheap.
    """

    def __init__(self,
                 cost_dims: Union[DToPCostDims, dict, None] = None,
                 model_cfg: Optional[dict] = None,
                 require_stats: bool = False,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        self.cost_dims = _resolve_dims(cost_dims, copy.deepcopy(model_cfg))
        self.require_stats = require_stats

    def process(self, data_batch: dict, data_samples: Sequence[dict]) -> None:
        """Store the IoU areas (as IoUMetric) and the token statistics per sample.

        Args:
            data_batch (dict): the batch from the dataloader (unused here).
            data_samples (Sequence[dict]): model outputs as dicts; DToP samples
                carry ``dtop_stats`` at the top level.
        """
        for ds in data_samples:
            if not self.format_only:
                self._check_ground_truth(ds)
            before = len(self.results)
            super().process(data_batch, [ds])
            iou = self.results.pop() if len(self.results) > before else None
            stats = ds.get('dtop_stats')
            if stats is None and self.require_stats:
                raise KeyError('IoUFlopsMetric(require_stats=True): a sample has no '
                               '"dtop_stats" metainfo; is the model a DToPEncoderDecoder?')
            rec = stats_record(stats) if stats is not None else None
            bad = _non_finite_logits(ds)  # a third element only for NaN/Inf logits
            self.results.append((iou, rec) if bad is None else (iou, rec, bad))

    def _check_ground_truth(self, ds: dict) -> None:
        """Refuse to score a sample whose labels or size cannot be scored right.

        mmseg's ``IoUMetric`` silently drops label values ``>= num_classes`` from
        the class areas but still counts the predicted pixels there (mIoU falls,
        aAcc can become nan), and fails with a raw ``IndexError`` when the
        annotation's size differs from the image's.

        Raises:
            DataError: naming the image / annotation, the offending values or
                sizes, and the fix.
        """
        from dtop.datasets.sample_checks import out_of_range_labels
        from dtop.utils.errors import DataError
        gt = ds.get('gt_sem_seg')
        if gt is None:
            return
        label = gt['data'].squeeze()
        pred = ds['pred_sem_seg']['data'].squeeze()
        where = f"{ds.get('img_path')} (annotation {ds.get('seg_map_path')})"
        if tuple(label.shape) != tuple(pred.shape):
            raise DataError(
                f'{where}: the annotation is {tuple(label.shape)} (H, W) but the '
                f'prediction for the image is {tuple(pred.shape)}: annotation and image '
                'sizes differ. Fix the annotation; tools/misc/check_dataset.py CONFIG '
                'lists every such file.')
        num_classes = len(self.dataset_meta['classes'])
        bad = out_of_range_labels(label, num_classes, self.ignore_index)
        if bad:
            raise DataError(
                f'{where}: label values {bad} are outside [0, {num_classes}) and are not '
                f'the ignore index {self.ignore_index} (after the dataset\'s label '
                'mapping, e.g. reduce_zero_label); they would be scored as errors. Fix '
                'the annotation or the number of classes; tools/misc/check_dataset.py '
                'CONFIG lists every such file.')

    def compute_metrics(self, results: List[tuple]) -> Dict[str, float]:
        """mIoU metrics of :class:`IoUMetric` plus the GFLOPs report.

        Args:
            results (list): ``(iou_areas or None, stats record or None)`` per image,
                gathered from all ranks.

        Returns:
            dict: IoU metrics and the keys of :func:`flops_summary`.
        """
        logger: MMLogger = MMLogger.get_current_instance()
        _refuse_nan_results(results)
        ious = [r[0] for r in results if r[0] is not None]
        if ious and not self.format_only:
            _refuse_unlabelled(ious, self.ignore_index)
        metrics = dict(super().compute_metrics(ious)) if (ious or self.format_only) else {}
        records = [r[1] for r in results if r[1] is not None]
        if not records:
            print_log('IoUFlopsMetric: no sample carried "dtop_stats"; GFLOPs are not '
                      'reported.', logger, level=30)
            return metrics
        if len(records) != len(results):
            print_log(f'IoUFlopsMetric: only {len(records)} of {len(results)} samples '
                      'carried "dtop_stats"; GFLOPs are averaged over those.', logger,
                      level=30)
        if self.cost_dims is None:
            raise RuntimeError(
                'IoUFlopsMetric needs the model dims: add '
                "custom_hooks=[dict(type='FlopsMetricDimsHook')] to the config, or pass "
                'cost_dims=... / model_cfg=cfg.model to the metric.')
        summary = flops_summary(records, self.cost_dims)
        metrics.update({k: round(v, 4) for k, v in summary.items()})
        print_log('\n' + format_flops_table(summary, self.cost_dims), logger)
        return metrics


def format_flops_table(summary: Dict[str, float], dims: DToPCostDims) -> str:
    """A human-readable table of :func:`flops_summary` output."""
    table = PrettyTable(['GFLOPs (fvcore conventions)', 'per image', 'per crop'])
    table.align = 'r'

    def pm(key):
        return f"{summary[key]:.2f} ± {summary[key + '_std']:.2f}"

    table.add_row(['pruned, with aux heads', pm('GFLOPs_img'), pm('GFLOPs_crop')])
    table.add_row(['pruned, without aux heads', pm('GFLOPs_img_noaux'),
                   pm('GFLOPs_crop_noaux')])
    table.add_row(['dense: backbone + final head (README)',
                   f"{summary['GFLOPs_dense_img']:.2f}", f"{summary['GFLOPs_dense_crop']:.2f}"])
    table.add_row(['dense: backbone + all heads', f"{summary['GFLOPs_dense_img_allheads']:.2f}",
                   f"{summary['GFLOPs_dense_crop_allheads']:.2f}"])
    exits = ', '.join(f"s{s}: {100 * summary[f'exit_frac_s{s}']:.1f}%"
                      for s in range(dims.num_stages - 1))
    return (f'{table.get_string()}\n'
            f"reduction vs dense README convention: {summary['GFLOPs_reduction_pct']:.1f}% "
            f"(with aux heads), {summary['GFLOPs_reduction_noaux_pct']:.1f}% (without); "
            f"tokens exited after {exits}; reached the final stage: "
            f"{100 * summary['active_frac_final']:.1f}%; "
            f"{summary['crops_per_img']:.2f} crops/image")


@HOOKS.register_module()
class FlopsMetricDimsHook(Hook):
    """Gives every :class:`IoUFlopsMetric` the dims of the model being evaluated.

    Add ``custom_hooks = [dict(type='FlopsMetricDimsHook')]``; before each val/test
    run the hook reads :class:`DToPCostDims` from ``runner.model`` and sets it on
    the metrics of the loop's evaluator that have none (``overwrite=True``: on
    all of them).

    Args:
        overwrite (bool): replace dims a metric was configured with. Default False.
    """

    priority = 'LOW'

    def __init__(self, overwrite: bool = False) -> None:
        self.overwrite = overwrite

    def _fill(self, runner, loop_name: str) -> None:
        loop = getattr(runner, loop_name, None)
        evaluator = getattr(loop, 'evaluator', None)
        metrics = [m for m in getattr(evaluator, 'metrics', [])
                   if isinstance(m, IoUFlopsMetric)]
        if not metrics:
            return
        dims = DToPCostDims.from_model(runner.model)
        for m in metrics:
            if m.cost_dims is None or self.overwrite:
                m.cost_dims = dims

    def before_val(self, runner) -> None:
        self._fill(runner, 'val_loop')

    def before_test(self, runner) -> None:
        self._fill(runner, 'test_loop')
