"""Shared pieces of the analysis tools that run a model on real data (no model code).

* Inputs of the speed benchmark: :func:`real_crops` (test images through the
  dataloader and the data preprocessor, cut into the unit the model runs on).
* Cost accounting of padded kernels: :func:`attention_padding_flops`.
* Runs of the test split under different exit policies, one runner and one
  checkpoint load for all of them: :func:`prepare_test_cfg` and
  :class:`PolicyEvaluator` (``sweep_threshold.py``, ``ablate_exit_policy.py``).
* Small helpers: :func:`cpu_name`, :func:`sync`, :class:`IterTimer`.

Exit decisions are always the model's own: a policy is installed with the
segmentor's public ``set_exit_policy``; nothing here re-implements the stage loop
or patches the model.
"""
import numbers
import time
from typing import Dict, List, Optional

import torch
from mmengine.hooks import Hook
from torch import Tensor


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


def sync(device) -> None:
    """Wait for the GPU (a no-op on CPU) so that a timer sees finished work."""
    if str(device).startswith('cuda'):
        torch.cuda.synchronize()


# ---------------------------------------------------------------- inputs


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
    a note says so). Too few images: they are cycled through.
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
    reps = -(-num_crops // len(crops))
    return torch.stack((crops * reps)[:num_crops])


# ---------------------------------------------------------------- cost


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


# ---------------------------------------------------------------- test-split runs


def p0_type(text: str) -> float:
    """argparse type of one ``p0``: a number checked by ``validate_prune_threshold``."""
    import argparse

    from dtop.models.pruning.options import validate_prune_threshold
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f'--thresholds values must be numbers in [0, 1] (>= 1 disables pruning), '
            f'got {text!r}') from None
    try:
        validate_prune_threshold(value, 2)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


def prepare_test_cfg(cfg, checkpoint: str, work_dir: str, num_images: Optional[int] = None,
                     tool: str = 'this tool'):
    """Test-only config: IoUFlopsMetric + dims hook, checkpoint, work dir, subset.

    Args:
        cfg (Config): the loaded config (modified in place and returned).
        checkpoint (str): weights to evaluate (``load_from``).
        work_dir (str): the runner's work dir.
        num_images (int, optional): evaluate only the first N test images.
        tool (str): name used in error messages.

    Returns:
        Config: ``cfg``.
    """
    cfg.work_dir = work_dir
    cfg.load_from = checkpoint
    cfg.resume = False
    evaluator = cfg.get('test_evaluator', None) or dict(type='IoUMetric')
    if isinstance(evaluator, (list, tuple)):
        raise ValueError(f'{tool} expects a single test_evaluator')
    evaluator = dict(evaluator)
    if evaluator.get('type') in ('IoUMetric', 'mmseg.IoUMetric'):
        evaluator['type'] = 'IoUFlopsMetric'
    if evaluator.get('type') != 'IoUFlopsMetric':
        raise ValueError(f'test_evaluator must be IoUMetric/IoUFlopsMetric, got '
                         f'{evaluator.get("type")}')
    evaluator.pop('format_only', None)
    cfg.test_evaluator = evaluator
    hooks = list(cfg.get('custom_hooks', None) or [])
    if not any(h.get('type') == 'FlopsMetricDimsHook' for h in hooks):
        hooks.append(dict(type='FlopsMetricDimsHook'))
    cfg.custom_hooks = hooks
    if num_images:
        cfg.test_dataloader.dataset['indices'] = int(num_images)
    custom = dict(cfg.get('custom_imports', None) or dict(imports=[]))
    imports = list(custom.get('imports', []))
    for mod in ('dtop', 'dtop.evaluation'):
        if mod not in imports:
            imports.append(mod)
    custom['imports'] = imports
    cfg.custom_imports = custom
    return cfg


class IterTimer(Hook):
    """Hook timing each test iteration (model forward + metric update, synchronised
    on GPU); data loading, checkpoint loading and metric computation are excluded."""

    priority = 'VERY_HIGH'

    def __init__(self):
        self.total, self.images, self._t0 = 0.0, 0, None

    def reset(self):
        self.total, self.images = 0.0, 0

    def before_test_iter(self, runner, batch_idx, data_batch=None):
        sync('cuda' if torch.cuda.is_available() else 'cpu')
        self._t0 = time.perf_counter()

    def after_test_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        sync('cuda' if torch.cuda.is_available() else 'cpu')
        self.total += time.perf_counter() - self._t0
        self.images += len(outputs) if outputs is not None else 1


class PolicyEvaluator:
    """The config's test split under exit policies: one runner, one checkpoint load.

    Args:
        cfg (Config): from :func:`prepare_test_cfg`.

    Attributes:
        runner (DToPRunner): the runner (checkpoint loaded strictly unless the
            config says ``load_strict = False``).
        model (DToPEncoderDecoder): the segmentor it tests.
    """

    def __init__(self, cfg) -> None:
        import dtop.evaluation  # noqa: F401  (registers IoUFlopsMetric and the hook)
        from dtop.engine import DToPRunner

        # the checkpoint is loaded safely (dtop.utils.checkpoint; trust_checkpoint in
        # the config unpickles it fully)
        self.runner = DToPRunner.from_cfg(cfg)
        self.model = getattr(self.runner.model, 'module', self.runner.model)
        if not hasattr(self.model, 'set_exit_policy'):
            raise TypeError(f'{type(self.model).__name__} has no exit policy; '
                            'is it a DToPEncoderDecoder?')

    @property
    def num_stages(self) -> int:
        """Stages of the model (auxiliary heads + 1)."""
        return self.model.backbone.num_stages

    def register_hook(self, hook: Hook) -> None:
        self.runner.register_hook(hook)

    def evaluate(self, policy=None) -> Dict[str, float]:
        """Install ``policy`` (if given) and run the test split once.

        Args:
            policy (dict | ExitPolicy, optional): the exit policy; seeded policies
                restart their random stream, so a run is reproducible.

        Returns:
            dict: the numeric metrics (``mIoU``, ``GFLOPs_img``, ``exit_frac_s*``...).
        """
        if policy is not None:
            policy = self.model.set_exit_policy(policy)
        if hasattr(self.model.exit_policy, 'reset'):
            self.model.exit_policy.reset()
        metrics = self.runner.test()
        return {k: float(v) for k, v in metrics.items()
                if isinstance(v, numbers.Number)}  # incl. numpy scalars


def stage_keep_ratios(metrics: Dict[str, float], num_stages: int) -> List[float]:
    """Mean keep ratio of each auxiliary stage from IoUFlopsMetric's exit fractions.

    ``exit_frac_s{s}`` is the mean fraction of the grid that exits after stage
    ``s``; the fraction active at stage ``s`` is ``a_s = 1 - sum_{t<s} exit_frac_t``
    and stage ``s`` keeps ``a_{s+1} / a_s`` of its active tokens (``1`` where no
    token is left). A policy keeping these ratios processes the same mean number
    of tokens per stage.

    Args:
        metrics (dict): IoUFlopsMetric results.
        num_stages (int): stages of the model.

    Returns:
        list[float]: ``num_stages - 1`` ratios in ``[0, 1]``.
    """
    active, ratios = 1.0, []
    for s in range(num_stages - 1):
        nxt = min(max(active - metrics[f'exit_frac_s{s}'], 0.0), active)
        ratios.append(nxt / active if active > 0 else 1.0)
        active = nxt
    return ratios
