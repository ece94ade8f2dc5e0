"""Exit policies: which active tokens leave the network after an auxiliary stage.

The segmentor asks its exit policy once per auxiliary stage (under
``torch.no_grad()``, in fp32) and never decides anything itself. A policy is a
small registered object, chosen in the config with ``model.exit_policy``:

* :class:`ConfidenceThreshold` — the paper's rule (docs/method.md §3): a token
  exits when its confidence ``max_c P_c(t)`` is strictly greater than ``p0``,
  except the ``k`` most confident exit candidates of each class. The default;
  ``model.prune_threshold`` / ``model.keep_topk_per_class`` configure it.
* :class:`FixedKeepRatio` — every image keeps a fixed fraction of its active
  tokens at each stage (the ablation the paper argues against; also what the
  speed benchmark uses to force a keep ratio on untrained weights).
* :class:`RandomExit` — every active token exits with a fixed probability.

All policies share one interface, :class:`ExitPolicy`: :meth:`~ExitPolicy.bind`
(checked once the number of stages is known), :meth:`~ExitPolicy.prunes_at`
(whether a stage can prune at all: a stage that cannot lets the segmentor skip its
head at inference) and ``policy(stage, scores, segments) -> exits``.
"""
import numbers
from typing import List, Optional, Sequence, Union

import torch
from mmseg.registry import MODELS
from torch import Tensor

from ...utils.errors import OptionError
from ..packing import Segments
from .options import ThresholdValue, validate_prune_threshold
from .rule import select_exits_packed


class ExitPolicy:
    """Base class of the exit policies (see the module docstring).

    Subclasses implement :meth:`prunes_at` and :meth:`__call__`, and may check
    their per-stage settings in :meth:`_bind`.
    """

    num_stages: Optional[int] = None

    def bind(self, num_stages: int) -> 'ExitPolicy':
        """Check the settings against a model of ``num_stages`` stages.

        Args:
            num_stages (int): auxiliary heads + 1.

        Returns:
            ExitPolicy: ``self``.
        """
        if isinstance(num_stages, bool) or not isinstance(num_stages, int) or num_stages < 1:
            raise OptionError(f'num_stages must be an int >= 1, got {num_stages!r}.')
        self._bind(num_stages)
        self.num_stages = num_stages
        return self

    def _bind(self, num_stages: int) -> None:
        pass

    @property
    def num_aux(self) -> int:
        if self.num_stages is None:
            raise RuntimeError(f'{type(self).__name__} is not bound to a model yet '
                               '(call bind(num_stages)).')
        return self.num_stages - 1

    def prunes_at(self, stage: int) -> bool:
        """Whether tokens can exit after auxiliary stage ``stage``."""
        raise NotImplementedError

    @property
    def prunes(self) -> bool:
        """Whether any stage can prune."""
        return any(self.prunes_at(s) for s in range(self.num_aux))

    def __call__(self, stage: int, scores: Tensor, segments: Segments) -> Tensor:
        """Decide the exits after ``stage``.

        Args:
            stage (int): index of the auxiliary stage that just ran (only called
                where :meth:`prunes_at` is True).
            scores (Tensor): ``(T, Q)`` per-token class probabilities of its head
                (packed active patch tokens, fp32).
            segments (Segments): image boundaries of the packed tokens.

        Returns:
            Tensor: ``(T,)`` bool, True for tokens that exit now.
        """
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ', '.join(f'{k}={v!r}' for k, v in vars(self).items()
                         if not k.startswith('_') and k != 'num_stages')
        return f'{type(self).__name__}({args})'


def _per_stage(value, num_aux: int, name: str, lo: float, hi: float) -> List[float]:
    """One number for all auxiliary stages, or one per stage, each in ``[lo, hi]``."""
    values = [value] if isinstance(value, numbers.Number) else list(value)
    if len(values) == 1:
        values = values * num_aux
    if len(values) != num_aux:
        raise OptionError(f'{name}: expected one number or {num_aux} (one per auxiliary '
                          f'stage), got {value!r}.')
    for v in values:
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not lo <= v <= hi:
            raise OptionError(f'{name}: every value must be a number in [{lo}, {hi}], '
                              f'got {value!r}.')
    return [float(v) for v in values]


@MODELS.register_module()
class ConfidenceThreshold(ExitPolicy):
    """The paper's exit rule: confidence above ``p0``, top-``k`` per class stay.

    Args:
        p0 (float | list | None): threshold per auxiliary stage (one number for
            all). ``None`` or ``>= 1`` disables pruning at a stage. The
            comparison is strict (``>``). Validated by
            :func:`~dtop.models.pruning.options.validate_prune_threshold`.
        topk (int): ``k``, the most confident exit candidates of each (argmax)
            class that stay to keep context; ``0`` lets every candidate exit.
    """

    def __init__(self, p0: ThresholdValue = 1.0, topk: int = 5) -> None:
        if isinstance(topk, bool) or not isinstance(topk, int) or topk < 0:
            raise OptionError(f'keep_topk_per_class (k) must be an int >= 0, got {topk!r}; '
                              'e.g. model.keep_topk_per_class=5.')
        self.p0 = p0
        self.topk = topk
        self.thresholds: List[Optional[float]] = []

    def _bind(self, num_stages: int) -> None:
        self.thresholds = validate_prune_threshold(self.p0, num_stages)

    def prunes_at(self, stage: int) -> bool:
        return self.thresholds[stage] is not None

    def __call__(self, stage: int, scores: Tensor, segments: Segments) -> Tensor:
        return select_exits_packed(scores, segments, self.thresholds[stage], self.topk)


class _Seeded(ExitPolicy):
    """A policy that draws random numbers from its own seeded generator."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self._gen = torch.Generator().manual_seed(seed)

    def reset(self) -> None:
        """Restart the random stream (the same draws again)."""
        self._gen.manual_seed(self.seed)

    def _rand(self, n: int, device) -> Tensor:
        return torch.rand(n, generator=self._gen).to(device)


@MODELS.register_module()
class FixedKeepRatio(_Seeded):
    """Every image keeps ``round(r * n)`` of its ``n`` active tokens at each stage.

    Args:
        ratio (float | list): keep ratio ``r`` per auxiliary stage, in ``[0, 1]``
            (one number for all stages). ``1`` disables pruning at a stage.
        jitter (float): per image, ``r`` is drawn uniformly in ``[r - j, r + j]``
            (clamped to ``[0, 1]``), so the images of a batch keep unequal counts.
        by (str): ``'score'`` (the most confident tokens exit, as DToP's rule
            would) or ``'random'``.
        seed (int): seed of the random draws.
    """

    def __init__(self, ratio: Union[float, Sequence[float]] = 1.0, jitter: float = 0.0,
                 by: str = 'score', seed: int = 0) -> None:
        super().__init__(seed)
        if by not in ('score', 'random'):
            raise OptionError(f"FixedKeepRatio: by must be 'score' or 'random', got {by!r}.")
        if isinstance(jitter, bool) or not isinstance(jitter, numbers.Real) \
                or not 0 <= jitter <= 1:
            raise OptionError(f'FixedKeepRatio: jitter must be a number in [0, 1], '
                              f'got {jitter!r}.')
        self.ratio = ratio
        self.jitter = float(jitter)
        self.by = by
        self.ratios: List[float] = []

    def _bind(self, num_stages: int) -> None:
        self.ratios = _per_stage(self.ratio, num_stages - 1, 'FixedKeepRatio: ratio', 0., 1.)

    def prunes_at(self, stage: int) -> bool:
        return self.ratios[stage] < 1.0 or self.jitter > 0

    def __call__(self, stage: int, scores: Tensor, segments: Segments) -> Tensor:
        B, dev = segments.batch_size, scores.device
        n_active = segments.counts
        r = torch.full((B,), self.ratios[stage])
        if self.jitter > 0:
            r = (r + (self._rand(B, 'cpu') * 2 - 1) * self.jitter).clamp(0, 1)
        n_exit = n_active - torch.round(r.to(dev) * n_active).long()
        conf = scores.amax(dim=1) if self.by == 'score' else self._rand(scores.shape[0], dev)
        # rank of each token within its image, the most confident first
        padded = segments.pad(conf, value=float('-inf'))
        rank = segments.unpad(padded.argsort(dim=1, descending=True).argsort(dim=1))
        return rank < n_exit[segments.batch_index]


@MODELS.register_module()
class RandomExit(_Seeded):
    """Every active token exits independently with probability ``p``.

    Args:
        p (float | list): exit probability per auxiliary stage, in ``[0, 1]``.
        seed (int): seed of the random draws.
    """

    def __init__(self, p: Union[float, Sequence[float]] = 0.0, seed: int = 0) -> None:
        super().__init__(seed)
        self.p = p
        self.probs: List[float] = []

    def _bind(self, num_stages: int) -> None:
        self.probs = _per_stage(self.p, num_stages - 1, 'RandomExit: p', 0., 1.)

    def prunes_at(self, stage: int) -> bool:
        return self.probs[stage] > 0

    def __call__(self, stage: int, scores: Tensor, segments: Segments) -> Tensor:
        return self._rand(scores.shape[0], scores.device) < self.probs[stage]


def build_exit_policy(cfg: Union[dict, ExitPolicy], num_stages: int) -> ExitPolicy:
    """Build (if a config dict) and bind an exit policy.

    Args:
        cfg (dict | ExitPolicy): e.g. ``dict(type='FixedKeepRatio', ratio=0.6)``.
        num_stages (int): stages of the model.

    Returns:
        ExitPolicy: bound to ``num_stages``.
    """
    if isinstance(cfg, ExitPolicy):
        policy = cfg
    elif isinstance(cfg, dict):
        policy = MODELS.build(cfg)
        if not isinstance(policy, ExitPolicy):
            raise OptionError(f'exit_policy: {cfg.get("type")!r} is not an exit policy; '
                              'use ConfidenceThreshold, FixedKeepRatio or RandomExit.')
    else:
        raise OptionError(f'exit_policy must be a config dict or an ExitPolicy, got {cfg!r}.')
    return policy.bind(num_stages)
