"""Exceptions the DToP tools turn into one clear line (no traceback).

Every error here names the thing that is wrong (file, key, value) and the fix.
:func:`run_cli` runs a tool's ``main`` and prints them as ``error: ...``.
"""
import os
import sys
from typing import Callable


class DToPUserError(Exception):
    """A problem with the user's input (file, option, data), not a bug."""


class CheckpointError(DToPUserError, RuntimeError):
    """A checkpoint file cannot be read (missing, empty, truncated, garbage)."""


class CheckpointMismatchError(DToPUserError, RuntimeError):
    """A checkpoint's weights do not fit the model built from the config."""


class DataError(DToPUserError, ValueError):
    """A dataset sample (image / annotation) or a data root is unusable."""


class OptionError(DToPUserError, ValueError):
    """An option (config key, command-line value) is invalid."""


def run_cli(main: Callable, *args, **kwargs):
    """Run a tool's ``main``; print :class:`DToPUserError` as one line, exit 1.

    Set ``DTOP_TRACEBACK=1`` to see the full traceback instead.
    """
    try:
        return main(*args, **kwargs)
    except DToPUserError as exc:
        if os.environ.get('DTOP_TRACEBACK', '0') not in ('0', ''):
            raise
        print(f'error: {exc}', file=sys.stderr, flush=True)
        sys.exit(1)
