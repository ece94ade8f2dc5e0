"""A checkpoint hook that crashes (exception) or dies (SIGKILL) at a chosen point of a
save, for the interrupted-save tests. Imported by the tests directly, and by the
training subprocess through ``custom_imports`` (PYTHONPATH includes this folder).
"""
import os
import signal

from mmseg.registry import HOOKS

from dtop.engine.hooks import AtomicCheckpointHook


class SimulatedCrash(RuntimeError):
    """Raised by :class:`FaultyCheckpointHook` with ``action='raise'``."""


@HOOKS.register_module(force=True)
class FaultyCheckpointHook(AtomicCheckpointHook):
    """:class:`AtomicCheckpointHook` that fails during the save of ``fault_step``.

    Args:
        fault_step (int): the iteration whose save fails.
        fault_stage (str): ``written`` (the temporary file is cut to a third first,
            as if the process died while writing), ``renamed``, ``pointed``.
        action (str): ``raise`` (:class:`SimulatedCrash`) or ``kill`` (SIGKILL).
        **kwargs: ``CheckpointHook`` arguments.
    """

    def __init__(self, fault_step: int, fault_stage: str, action: str = 'raise', **kwargs):
        super().__init__(**kwargs)
        self.fault_step, self.fault_stage, self.action = fault_step, fault_stage, action

    def _on_save_stage(self, runner, stage, path):
        if stage != self.fault_stage or runner.iter + 1 != self.fault_step:
            return
        if stage == 'written':
            with open(path, 'rb') as f:
                data = f.read()
            with open(path, 'wb') as f:
                f.write(data[: len(data) // 3])
        if self.action == 'kill':
            os.kill(os.getpid(), signal.SIGKILL)
        raise SimulatedCrash(f'simulated crash at {stage} of iteration {self.fault_step}')
