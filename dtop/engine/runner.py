"""DToPRunner: mmengine's Runner with strict checkpoint loading, atomic checkpoint
saves and checked data.

It changes the things below and nothing else (``tools/train.py`` and ``tools/test.py``
use it; configs select it with ``runner_type = 'DToPRunner'``, as the DToP runtime
base does):

* **Loading is strict** (``load_from``, ``--resume``, ``tools/test.py``): an
  unreadable file stops with one line naming it; a key or shape mismatch stops
  *before any work* with the first mismatches and the fix
  (:func:`dtop.utils.checkpoint.check_checkpoint_fits`). ``load_strict = False``
  in the config (``--allow-partial-load`` in the tools) allows a deliberate
  partial load and logs a summary of what did not load.
* ``--resume`` uses the newest *complete* checkpoint
  (:func:`dtop.utils.checkpoint.find_resumable_checkpoint`).
* The checkpoint hook of ``default_hooks`` is :class:`AtomicCheckpointHook` when the
  config asks for mmengine's ``CheckpointHook`` (same arguments).
* Every dataloader's dataset is checked when it is built: an empty dataset stops
  with the data root and the fix; its pipeline is wrapped in
  :class:`dtop.datasets.checks.CheckedPipeline` so a bad file is named.
* **Loading never runs a checkpoint's code**: every checkpoint is read through the
  restricted unpickler (:func:`dtop.utils.checkpoint.read_checkpoint`); the config
  key ``trust_checkpoint = True`` (``--trust-checkpoint`` in the tools) unpickles
  fully, announced per file. Checkpoints with NaN/Inf weights are refused.
* **Checkpoints hold plain data** (:class:`~dtop.engine.hooks.PlainCheckpointHook`):
  the message hub's history and numpy values are stored as tensors / lists and
  restored by ``--resume``.
* **Non-finite guard**: the ``optim_wrapper`` is built as its guarded subclass
  (:mod:`dtop.engine.optim_wrappers`: a step with a NaN/Inf loss or gradient norm
  is not applied) and a :class:`~dtop.engine.hooks.NonFiniteGuardHook` is added
  when the config has none: training stops at the first such step with one line.
  No checkpoint with non-finite weights is written.
* ``--resume`` follows ``last_checkpoint`` only inside the work dir (a copied work
  dir resumes from its own copy).
* DDP's ``find_unused_parameters`` is decided from the model when the config
  leaves it ``None`` (the runtime base does): False when every trainable
  parameter takes part in the loss (:func:`dtop.utils.launch.ddp_wrapper_cfg`).
"""
import copy
import os.path as osp
from typing import Callable, Dict, Optional, Union

from mmengine.registry import RUNNERS
from mmengine.runner import Runner
from mmengine.runner.checkpoint import _load_checkpoint_to_model

from dtop.datasets.checked_pipeline import install_sample_checks
from dtop.datasets.dataset_checks import build_checked_dataset, check_not_empty
from dtop.utils.checkpoint_fit import DEFAULT_REVISE_KEYS, _unwrap, check_checkpoint_fits
from dtop.utils.checkpoint_read import read_checkpoint
from dtop.utils.checkpoint_resume import find_resumable_checkpoint

_PLAIN_CHECKPOINT_HOOKS = ('CheckpointHook', 'mmengine.CheckpointHook')
_TRUST_SOURCE = 'trust_checkpoint = True (--trust-checkpoint)'


def _split_of(dataloader_cfg) -> str:
    """Best guess of the split of a dataloader config, for messages."""
    sampler = (dataloader_cfg.get('sampler') or {}) if isinstance(dataloader_cfg, dict) else {}
    return 'train' if 'Infinite' in str(sampler.get('type', '')) or \
        sampler.get('shuffle') else 'val'


@RUNNERS.register_module()
class DToPRunner(Runner):
    """:class:`mmengine.runner.Runner` with the checks described in the module doc.

    The config keys ``load_strict`` (default True) and ``trust_checkpoint`` (default
    False) control checkpoint loading.
    """

    @property
    def trust_checkpoint(self) -> bool:
        """Whether checkpoints are unpickled fully (config ``trust_checkpoint``)."""
        return bool(self.cfg.get('trust_checkpoint', False))

    @property
    def load_strict(self) -> bool:
        """Whether checkpoints must match the model exactly (config ``load_strict``)."""
        return bool(self.cfg.get('load_strict', True))

    # ------------------------------------------------------------------ hooks
    def register_default_hooks(self, hooks: Optional[Dict] = None) -> None:
        """As mmengine, but a ``CheckpointHook`` config becomes
        :class:`AtomicCheckpointHook` (same arguments), as does the default one."""
        hooks = dict(hooks) if hooks is not None else {}
        ckpt = hooks.get('checkpoint', dict(type='CheckpointHook', interval=1))
        if isinstance(ckpt, dict) and ckpt.get('type') in _PLAIN_CHECKPOINT_HOOKS:
            ckpt = dict(ckpt)
            ckpt['type'] = 'AtomicCheckpointHook'
            hooks['checkpoint'] = ckpt
        super().register_default_hooks(hooks)

    def register_hooks(self, default_hooks=None, custom_hooks=None) -> None:
        """As mmengine, plus :class:`PlainCheckpointHook` and, unless the config has
        one, a :class:`NonFiniteGuardHook` (``max_skips=0``)."""
        from dtop.engine.hooks import NonFiniteGuardHook, PlainCheckpointHook
        super().register_hooks(default_hooks, custom_hooks)
        if not any(isinstance(h, NonFiniteGuardHook) for h in self._hooks):
            self.register_hook(NonFiniteGuardHook())
        self.register_hook(PlainCheckpointHook())

    # ------------------------------------------------------------- optimizer
    def build_optim_wrapper(self, optim_wrapper):
        """As mmengine, but an ``optim_wrapper`` config is built as its guarded
        subclass (:func:`dtop.engine.optim_wrappers.guard_optim_wrapper_cfg`) when a
        :class:`NonFiniteGuardHook` is registered."""
        from dtop.engine.hooks import NonFiniteGuardHook
        from dtop.engine.optim_wrappers import guard_optim_wrapper_cfg
        if isinstance(optim_wrapper, dict) and \
                any(isinstance(h, NonFiniteGuardHook) for h in self._hooks):
            optim_wrapper = guard_optim_wrapper_cfg(optim_wrapper)
        return super().build_optim_wrapper(optim_wrapper)

    # ------------------------------------------------------------------ DDP
    def wrap_model(self, model_wrapper_cfg, model):
        """As mmengine, but DDP's ``find_unused_parameters`` comes from the model
        when the config leaves it ``None`` (:func:`dtop.utils.launch.ddp_wrapper_cfg`):
        False when every trainable parameter takes part in the loss."""
        from mmengine.model import is_model_wrapper
        if self.distributed and not is_model_wrapper(model):
            from dtop.utils.launch import ddp_wrapper_cfg
            model_wrapper_cfg = ddp_wrapper_cfg(self.cfg, model_wrapper_cfg, model,
                                                self.logger)
        return super().wrap_model(model_wrapper_cfg, model)

    # -------------------------------------------------------------- datasets
    @staticmethod
    def build_dataloader(dataloader, seed: Optional[int] = None,
                         diff_rank_seed: bool = False):
        """Build as mmengine does, then check the dataset (see module docstring)."""
        if isinstance(dataloader, dict):
            cfg = copy.deepcopy(dataloader)
            split = _split_of(cfg)
            dataset = cfg['dataset']
            if isinstance(dataset, dict):
                dataset = build_checked_dataset(dataset, split)
            check_not_empty(dataset, split)
            install_sample_checks(dataset, split)
            cfg['dataset'] = dataset
            dataloader = cfg
        loader = Runner.build_dataloader(dataloader, seed=seed, diff_rank_seed=diff_rank_seed)
        install_sample_checks(loader.dataset)
        return loader

    # ----------------------------------------------------------- checkpoints
    def load_or_resume(self) -> None:
        """As mmengine, but ``--resume`` picks the newest complete checkpoint."""
        if self._has_loaded:
            return None
        if self._resume and self._load_from is None:
            resume_from = find_resumable_checkpoint(self.work_dir,
                                                    checkpoint_dirs=self._checkpoint_dirs())
            if resume_from is None:
                self.logger.warning(f'--resume: no checkpoint in {self.work_dir}; '
                                    'training starts from the beginning.')
            else:
                self.logger.info(f'Auto resumed from the latest checkpoint {resume_from}.')
                self.resume(resume_from)
                self._has_loaded = True
                return None
        return super().load_or_resume()

    def _checkpoint_dirs(self):
        """Where the checkpoint hook writes when its ``out_dir`` is not the work dir."""
        hook = (self.cfg.get('default_hooks') or {}).get('checkpoint') or {}
        out_dir = hook.get('out_dir') if isinstance(hook, dict) else None
        return [osp.join(out_dir, osp.basename(osp.normpath(self.work_dir)))] \
            if out_dir and '://' not in str(out_dir) else []

    def save_checkpoint(self, out_dir: str, filename: str, *args, **kwargs) -> None:
        """As mmengine, but a model with NaN/Inf weights is not saved (one line
        naming the first such tensors and the last good checkpoint)."""
        from dtop.engine.hooks.nonfinite_guard_hook import check_finite_before_save
        check_finite_before_save(self.model, osp.join(str(out_dir), filename),
                                 self.work_dir)
        return super().save_checkpoint(out_dir, filename, *args, **kwargs)

    def load_checkpoint(self, filename: str,
                        map_location: Union[str, Callable] = 'cpu',
                        strict: bool = False,
                        revise_keys: list = [(r'^module.', '')]):  # noqa: B006 (mmengine's)
        """Load ``filename`` into the model, strictly unless ``load_strict=False``.

        Args:
            filename (str): path or URL.
            map_location: as :func:`torch.load`.
            strict (bool): also require an exact match (as mmengine's argument);
                the config's ``load_strict`` (default True) applies either way.
            revise_keys (list): key rewrites (default strips ``module.``).

        Returns:
            dict: the checkpoint.

        Raises:
            CheckpointError: the file cannot be read.
            NonFiniteError: its weights hold NaN or Inf.
            CheckpointMismatchError: keys/shapes differ and loading is strict.
        """
        checkpoint = read_checkpoint(filename, map_location=map_location,
                                     trust=_TRUST_SOURCE if self.trust_checkpoint else None)
        self.call_hook('after_load_checkpoint', checkpoint=checkpoint)
        model = _unwrap(self.model)
        check_checkpoint_fits(model, checkpoint, filename, strict or self.load_strict,
                              revise_keys or DEFAULT_REVISE_KEYS, logger=self.logger)
        checkpoint = _load_checkpoint_to_model(model, checkpoint, False,
                                               revise_keys=revise_keys)
        self._has_loaded = True
        self.logger.info(f'Load checkpoint from {filename}')
        return checkpoint
