"""Exceptions the DToP tools turn into one clear line (no traceback).

Every error here names the thing that is wrong (file, key, value) and the fix.
:func:`run_cli` runs a tool's ``main`` and prints them as ``error: ...``.

Which exceptions are the user's (one line, exit 1) and which are bugs (the
traceback, as Python prints it), see :func:`user_error_message` and
``docs/robustness.md`` ("User errors and bugs").
"""
import gc
import linecache
import os
import os.path as osp
import sys
from typing import Callable, Optional

#: folders of this repository whose explicit ``raise ValueError(...)`` statements
#: are input checks (see :func:`user_error_message`).
_OWN_DIRS = tuple(osp.join(osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))), d)
                  + os.sep for d in ('dtop', 'tools', 'demo'))
#: how torch's DataLoader re-raises an exception of a worker process
_WORKER_MARK = '\nOriginal Traceback (most recent call last):'


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


class NonFiniteError(DToPUserError, RuntimeError):
    """NaN/Inf where numbers must be finite: a diverged training step, a checkpoint's
    weights, a metric computed from non-finite logits."""


def _raised_explicitly_by_us(exc: BaseException) -> bool:
    """Whether ``exc`` comes from a ``raise`` statement in dtop/, tools/ or demo/.

    The innermost frame of the traceback must be such a statement: a value check
    of ours. A ValueError raised inside a library (numpy, torch, mmengine) or by
    an operation in our code (unpacking, ``int('x')``) is not.
    """
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    filename = osp.abspath(tb.tb_frame.f_code.co_filename)
    if not filename.startswith(_OWN_DIRS):
        return False
    return linecache.getline(filename, tb.tb_lineno).lstrip().startswith('raise ')


def _unwrap_worker_message(exc: BaseException, msg: str) -> str:
    """The original message of an exception re-raised by a DataLoader worker.

    torch re-raises ``type(exc)("Caught X in DataLoader worker process N.\\n
    Original Traceback ...\\nmodule.X: message")``; the user needs the last part.
    """
    if _WORKER_MARK not in msg:
        return msg
    original = msg.partition(_WORKER_MARK)[2]
    for name in (f'{type(exc).__module__}.{type(exc).__qualname__}', type(exc).__qualname__):
        pos = original.rfind(f'\n{name}: ')
        if pos >= 0:
            return original[pos + len(name) + 3:].strip()
    return msg


def _os_error_message(exc: OSError) -> str:
    """``strerror: filename`` of an OSError (its own message when it has one)."""
    if exc.strerror and exc.filename is not None:
        text = f'{exc.strerror}: {exc.filename}'
        if exc.filename2 is not None:
            text += f' -> {exc.filename2}'
        return text
    return str(exc) or type(exc).__name__


def user_error_message(exc: BaseException) -> Optional[str]:
    """The one-line message of a user error, or None for a bug.

    User errors (printed as one ``error:`` line, exit 1):

    * :class:`DToPUserError` and its subclasses (``OptionError``, ``DataError``,
      ``CheckpointError``, ``CheckpointMismatchError``): raised where an input is
      checked; the message names the file, key or value and the fix.
    * ``OSError`` and its subclasses (``FileNotFoundError``, ``FileExistsError``,
      ``NotADirectoryError``, ``PermissionError``, a full disk, a busy port): the
      environment, not the code; the message names the path (or errno).
    * ``ValueError`` raised by an explicit ``raise`` statement in ``dtop/``,
      ``tools/`` or ``demo/`` (an input check that names the value).

    Everything else is treated as a bug and keeps its traceback: ``TypeError``,
    ``AttributeError``, ``KeyError``, ``IndexError``, ``RuntimeError``, ... and a
    ``ValueError`` from inside a library or from an operation in our code.

    An exception a DataLoader worker re-raised is judged by its type, and printed
    with the worker's original message (not torch's embedded traceback).
    """
    if isinstance(exc, DToPUserError):
        msg = str(exc)
    elif isinstance(exc, OSError):
        msg = _os_error_message(exc)
    elif isinstance(exc, ValueError) and _raised_explicitly_by_us(exc):
        msg = str(exc)
    else:
        return None
    return _unwrap_worker_message(exc, msg)


def run_cli(main: Callable, *args, **kwargs):
    """Run a tool's ``main``; print a user error as one ``error:`` line, exit 1.

    What counts as a user error: :func:`user_error_message`. Other exceptions
    (bugs) propagate with their traceback. Set ``DTOP_TRACEBACK=1`` to see the
    full traceback of a user error too.
    """
    try:
        return main(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001  (bugs are re-raised below)
        if os.environ.get('DTOP_TRACEBACK', '0') not in ('0', ''):
            raise
        msg = user_error_message(exc)
        if msg is None:
            raise
        print(f'error: {msg}', file=sys.stderr, flush=True)
        _stop_dataloader_workers()
    sys.exit(1)


def _stop_dataloader_workers() -> None:
    """Stop the worker processes of DataLoader iterators a failed run left open.

    Called while the exception (and so the iterator) is alive: collected later as
    garbage, an iterator's queues are closed before its ``__del__`` stops the
    workers, which then never hear of it and are joined with a 5 s timeout each.
    """
    module = sys.modules.get('torch.utils.data.dataloader')
    cls = getattr(module, '_MultiProcessingDataLoaderIter', None)
    if cls is None:
        return
    for obj in gc.get_objects():
        if type(obj) is cls:  # not isinstance: some objects warn when asked their class
            try:
                obj._shutdown_workers()
            except Exception:  # noqa: BLE001  (best effort: the error is printed)
                pass
