"""DToPRunner: mmengine's Runner with strict checkpoint loading, atomic checkpoint
saves and checked data.

It changes four things and nothing else (``tools/train.py`` and ``tools/test.py``
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
"""
import copy
from typing import Callable, Dict, Optional, Union

from mmengine.registry import RUNNERS
from mmengine.runner import Runner
from mmengine.runner.checkpoint import _load_checkpoint_to_model

from dtop.datasets.checks import (build_checked_dataset, check_not_empty,
                                  install_sample_checks)
from dtop.utils.checkpoint import (DEFAULT_REVISE_KEYS, _unwrap, check_checkpoint_fits,
                                   find_resumable_checkpoint, read_checkpoint)

_PLAIN_CHECKPOINT_HOOKS = ('CheckpointHook', 'mmengine.CheckpointHook')


def _split_of(dataloader_cfg) -> str:
    """Best guess of the split of a dataloader config, for messages."""
    sampler = (dataloader_cfg.get('sampler') or {}) if isinstance(dataloader_cfg, dict) else {}
    return 'train' if 'Infinite' in str(sampler.get('type', '')) or \
        sampler.get('shuffle') else 'val'


@RUNNERS.register_module()
class DToPRunner(Runner):
    """:class:`mmengine.runner.Runner` with the checks described in the module doc.

    The config key ``load_strict`` (default True) controls checkpoint loading.
    """

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
            resume_from = find_resumable_checkpoint(self.work_dir)
            if resume_from is None:
                self.logger.warning(f'--resume: no checkpoint in {self.work_dir}; '
                                    'training starts from the beginning.')
            else:
                self.logger.info(f'Auto resumed from the latest checkpoint {resume_from}.')
                self.resume(resume_from)
                self._has_loaded = True
                return None
        return super().load_or_resume()

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
            CheckpointMismatchError: keys/shapes differ and loading is strict.
        """
        checkpoint = read_checkpoint(filename, map_location=map_location)
        self.call_hook('after_load_checkpoint', checkpoint=checkpoint)
        model = _unwrap(self.model)
        check_checkpoint_fits(model, checkpoint, filename, strict or self.load_strict,
                              revise_keys or DEFAULT_REVISE_KEYS, logger=self.logger)
        checkpoint = _load_checkpoint_to_model(model, checkpoint, False,
                                               revise_keys=revise_keys)
        self._has_loaded = True
        self.logger.info(f'Load checkpoint from {filename}')
        return checkpoint
