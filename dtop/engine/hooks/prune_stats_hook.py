"""Training hook that turns the model's per-stage keep ratios into prune statistics."""
import json
import os.path as osp
import re
from typing import Dict, List, Optional, Sequence

from mmengine.dist import is_main_process
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmseg.registry import HOOKS

_KEEP_KEY = re.compile(r'^prune\.keep_ratio_s(\d+)$')


def keep_ratios_from_outputs(outputs: Optional[dict]) -> List[float]:
    """Per-stage keep ratios from a train step's log variables.

    Args:
        outputs (dict, optional): ``train_step`` output (``prune.keep_ratio_s{s}``
            for ``s = 1..S-1``; stage 0 always sees every token).

    Returns:
        list[float]: ``[1.0, r_1, ..., r_{S-1}]``, the mean fraction of tokens
        processed by each stage; ``[]`` when the step logged no keep ratio (BASE).
    """
    if not outputs:
        return []
    found = {}
    for key, value in outputs.items():
        m = _KEEP_KEY.match(key)
        if m:
            found[int(m.group(1))] = float(value.item() if hasattr(value, 'item') else value)
    if not found:
        return []
    num = max(found) + 1
    return [1.0] + [found.get(s, float('nan')) for s in range(1, num)]


def exit_fractions_from_keep(keep: Sequence[float]) -> List[float]:
    """Fraction of the grid that exits after each stage but the last.

    Args:
        keep (Sequence[float]): ``[1.0, r_1, ..., r_{S-1}]``.

    Returns:
        list[float]: ``S - 1`` values ``keep[s] - keep[s + 1]``.
    """
    return [keep[s] - keep[s + 1] for s in range(len(keep) - 1)]


def backbone_cost_ratio(keep: Sequence[float], stage_layers: Sequence[int]) -> float:
    """Backbone layer cost relative to the dense model, linear in the token count.

    Each stage's layers cost ∝ the tokens they process (the ``n^2`` attention
    term is ignored, so this slightly over-estimates the cost of a pruned model).

    Args:
        keep (Sequence[float]): per-stage keep ratios ``[1.0, r_1, ...]``.
        stage_layers (Sequence[int]): layers per stage.

    Returns:
        float: ``sum_s L_s r_s / sum_s L_s``.
    """
    if len(keep) != len(stage_layers):
        raise ValueError(f'{len(keep)} keep ratios for {len(stage_layers)} stages')
    total = float(sum(stage_layers))
    return sum(k * n for k, n in zip(keep, stage_layers)) / total


@HOOKS.register_module()
class PruneStatsHook(Hook):
    """Per-stage token statistics during the prune fine-tune.

    ``DToPEncoderDecoder.loss`` returns the mean keep ratio of every stage
    (``prune.keep_ratio_s{s}``), which mmengine already logs. This hook adds
    what one actually wants to watch:

    * ``prune.exit_s{s}``: the fraction of tokens that exited after stage ``s``
      (0-based), and ``prune.backbone_cost``: the backbone cost relative to the
      dense model, logged as training scalars next to the losses (so they also
      reach ``scalars.json`` and any visualizer backend);
    * every ``interval`` iterations, one line with the window means;
    * a warning when nothing was pruned for ``warn_after`` iterations (the heads
      are not confident above ``p0``: check ``prune_threshold`` and that
      ``load_from`` points at a trained BASE model);
    * at the end of training, the trajectory in ``WORK_DIR/{summary_file}``.

    In a BASE run (nothing logged) it does nothing.

    Args:
        interval (int): iterations per summary window. Default 50.
        warn_after (int): iterations without any exit before warning; ``0``
            disables the warning. Default 200.
        summary_file (str, optional): JSON file name in the work dir; ``None``
            writes nothing. Default ``'prune_stats.json'``.
    """

    priority = 'BELOW_NORMAL'

    def __init__(self,
                 interval: int = 50,
                 warn_after: int = 200,
                 summary_file: Optional[str] = 'prune_stats.json') -> None:
        if interval < 1:
            raise ValueError(f'interval must be >= 1, got {interval}')
        if warn_after < 0:
            raise ValueError(f'warn_after must be >= 0, got {warn_after}')
        self.interval = interval
        self.warn_after = warn_after
        self.summary_file = summary_file
        self.history: List[Dict] = []
        self._window: List[List[float]] = []
        self._no_exit_iters = 0
        self._warned = False
        self._stage_layers: Optional[List[int]] = None

    @staticmethod
    def _stage_layers_of(runner) -> Optional[List[int]]:
        model = getattr(runner.model, 'module', runner.model)
        ranges = getattr(getattr(model, 'backbone', None), 'stage_ranges', None)
        return [e - s for s, e in ranges] if ranges else None

    def before_train(self, runner) -> None:
        self._stage_layers = self._stage_layers_of(runner)
        self.history = []
        self._window = []
        self._no_exit_iters = 0
        self._warned = False

    def after_train_iter(self, runner, batch_idx: int, data_batch=None,
                         outputs: Optional[dict] = None) -> None:
        keep = keep_ratios_from_outputs(outputs)
        if not keep:
            return
        exits = exit_fractions_from_keep(keep)
        hub = runner.message_hub
        for s, e in enumerate(exits):
            hub.update_scalar(f'train/prune.exit_s{s}', e)
        if self._stage_layers is not None and len(self._stage_layers) == len(keep):
            hub.update_scalar('train/prune.backbone_cost',
                              backbone_cost_ratio(keep, self._stage_layers))
        self._window.append(keep)

        if keep[-1] >= 1.0 - 1e-9:
            self._no_exit_iters += 1
        else:
            self._no_exit_iters = 0
        if (self.warn_after and not self._warned
                and self._no_exit_iters >= self.warn_after):
            self._warned = True
            print_log(f'PruneStatsHook: no token exited in the last {self._no_exit_iters} '
                      'iterations; the heads are not confident above p0. Check '
                      'model.prune_threshold and that load_from is a trained BASE '
                      'checkpoint.', logger='current', level=30)

        if self.every_n_train_iters(runner, self.interval) or self.is_last_train_iter(runner):
            self._flush(runner)

    def _flush(self, runner) -> None:
        if not self._window:
            return
        n = len(self._window)
        num = len(self._window[0])
        keep = [sum(k[s] for k in self._window) / n for s in range(num)]
        rec = dict(iter=runner.iter + 1, keep=keep, exit=exit_fractions_from_keep(keep))
        if self._stage_layers is not None and len(self._stage_layers) == num:
            rec['backbone_cost'] = backbone_cost_ratio(keep, self._stage_layers)
        self.history.append(rec)
        self._window = []
        exits = ', '.join(f's{s}: {100 * e:.1f}%' for s, e in enumerate(rec['exit']))
        cost = (f"; backbone cost {100 * rec['backbone_cost']:.1f}% of dense"
                if 'backbone_cost' in rec else '')
        print_log(f'prune stats (iters {rec["iter"] - n + 1}-{rec["iter"]}): tokens exited '
                  f'after {exits}; reached the final stage: {100 * keep[-1]:.1f}%{cost}',
                  logger='current')

    def after_train(self, runner) -> None:
        self._flush(runner)
        if not self.history or self.summary_file is None or not is_main_process():
            return
        path = osp.join(runner.work_dir, self.summary_file)
        with open(path, 'w', encoding='utf-8') as f:
            json.dump(dict(stage_layers=self._stage_layers, interval=self.interval,
                           history=self.history), f, indent=1)
        print_log(f'prune statistics written to {path}', logger='current')
