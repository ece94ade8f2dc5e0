"""Shared test set-up: the repository root on ``sys.path`` (for ``tests.utils``) and
mmseg's registries with 'mmseg' as default scope."""
import os
import sys

os.environ.setdefault('OMP_NUM_THREADS', '2')

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)  # `from tests.utils.tiny_models import ...` from any cwd

from mmseg.utils import register_all_modules  # noqa: E402

import dtop  # noqa: E402,F401  (registers DToP modules)

register_all_modules(init_default_scope=True)


import logging  # noqa: E402

import pytest  # noqa: E402
from mmengine.logging import MMLogger  # noqa: E402


class _CurrentStdout:
    """A stream that writes to whatever ``sys.stdout`` is when it is written to."""

    def write(self, text):
        return sys.stdout.write(text)

    def flush(self):
        sys.stdout.flush()


def _closed(stream) -> bool:
    return bool(getattr(stream, 'closed', False))


@pytest.fixture(autouse=True)
def _loggers_write_to_open_streams():
    """Point log handlers left on a closed stream at the current stdout.

    mmengine's Runner names its logger ``<config>_<timestamp to the second>``, and
    ``MMLogger.get_instance`` returns an existing logger of that name: two runners
    built from the same config within one second share it. Its handler was bound to
    the ``sys.stdout`` of the test that created it, which ``capsys`` closed, so the
    next test's log lines become 'Logging error' tracebacks on stderr. (One process
    per tool run in real use: no closed streams there.)
    """
    loggers = list(MMLogger._instance_dict.values()) + [
        lg for lg in logging.Logger.manager.loggerDict.values()
        if isinstance(lg, logging.Logger)] + [logging.getLogger()]
    for logger in loggers:
        for handler in logger.handlers:
            if isinstance(handler, logging.StreamHandler) and _closed(handler.stream):
                handler.stream = _CurrentStdout()  # (setStream flushes the closed one)
    yield
