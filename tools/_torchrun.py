"""torchrun (``python -m torch.distributed.run``) with one-line rendezvous errors.

``tools/_dist_common.sh`` starts this file instead of ``-m torch.distributed.run``
(same arguments, same process: the workers still die with it). It runs torchrun's
own ``main`` in this process; only a failure of the static rendezvous (the
``--master_addr/--master_port`` TCPStore that the nodes meet at) is turned into
one ``error:`` line and exit status 1:

* node 0: the other nodes did not join within the rendezvous timeout
  (``--rdzv-conf timeout=S``; ``DTOP_RDZV_TIMEOUT`` in the launchers), or the port
  could not be opened (taken between the launcher's check and now);
* node > 0: node 0 could not be reached within the timeout.

``DTOP_TRACEBACK=1`` shows torchrun's traceback instead. Everything else (worker
failures, torchrun's own argument errors) is torchrun's behaviour, unchanged.
Not imported by anything; it imports only torch (no dtop), so the agent stays light.
"""
import os
import re
import sys

# `python tools/_torchrun.py` puts tools/ first on sys.path, where test.py would
# shadow the standard library's `test` package: take it off.
_HERE = os.path.dirname(os.path.abspath(__file__))
if sys.path and os.path.abspath(sys.path[0] or '.') == _HERE:
    del sys.path[0]

# The agent's C++ side logs every failed connection attempt to node 0 with a
# 40-line stack; the one line below says it better. Quiet for this process only
# (read when torch loads), unless the user set a level: workers get the
# environment as it was.
_USER_CPP_LOG_LEVEL = os.environ.get('TORCH_CPP_LOG_LEVEL')
if _USER_CPP_LOG_LEVEL is None:
    os.environ['TORCH_CPP_LOG_LEVEL'] = 'FATAL'
from torch.distributed.run import main as torchrun_main  # noqa: E402

if _USER_CPP_LOG_LEVEL is None:
    del os.environ['TORCH_CPP_LOG_LEVEL']


class RendezvousFailed(RuntimeError):
    """The static rendezvous failed; ``str()`` is the one line to print."""


def describe_failure(exc: BaseException, rank: int, world_size: int, addr: str,
                     port: int, timeout_s: float) -> str:
    """The one line for a failed static rendezvous.

    Args:
        exc: what torch's TCPStore raised.
        rank: this node's rank (``NODE_RANK``).
        world_size: number of nodes (``NNODES``).
        addr, port: the master's address and port.
        timeout_s: the rendezvous timeout in seconds.

    Returns:
        str: the message (without the ``error:`` prefix).
    """
    text = str(exc)
    where = f'{addr}:{port}'
    if rank == 0 and re.search(r'in use|failed to listen|bind', text, re.I):
        return (f'torchrun could not listen on PORT={port} on this host (node 0): the port '
                'is in use. Pick another PORT (the same on every node).')
    if rank == 0:
        joined = re.search(r'(\d+)/(\d+) clients joined', text)
        got = f'{joined.group(1)} of {world_size}' if joined else f'not all {world_size}'
        missing = ('NODE_RANK=1' if world_size == 2
                   else f'NODE_RANK=1..{world_size - 1}')
        return (f'rendezvous timed out after {timeout_s:g} s: {got} nodes joined at {where} '
                f'(this is node 0 of NNODES={world_size}). Start the other nodes '
                f'({missing}, the same NNODES, MASTER_ADDR={addr} and PORT={port}) within '
                'DTOP_RDZV_TIMEOUT seconds, or raise DTOP_RDZV_TIMEOUT.')
    return (f'rendezvous failed after {timeout_s:g} s: node 0 was not reachable at {where} '
            f'(this is node {rank} of NNODES={world_size}). Start node 0 (NODE_RANK=0) '
            'with the same NNODES and PORT, check that MASTER_ADDR is its address as seen '
            f'from here and that port {port} is open, or raise DTOP_RDZV_TIMEOUT.')


def _patch_static_rendezvous() -> bool:
    """Make the static rendezvous raise :class:`RendezvousFailed` on failure.

    Returns:
        bool: whether the patch applied (False on a torch without the class:
        plain torchrun behaviour).
    """
    try:
        from torch.distributed.elastic.rendezvous import static_tcp_rendezvous as mod
        cls = mod.StaticTCPRendezvous
        original = cls.next_rendezvous
    except (ImportError, AttributeError):
        return False

    def next_rendezvous(self):
        try:
            return original(self)
        except (RuntimeError, OSError) as exc:  # DistStoreError / DistNetworkError
            if os.environ.get('DTOP_TRACEBACK', '0') not in ('0', ''):
                raise
            timeout = getattr(self, 'timeout', None)
            timeout_s = timeout.total_seconds() if timeout is not None else float('nan')
            raise RendezvousFailed(describe_failure(
                exc, int(self.rank), int(self.world_size), str(self.master_addr),
                int(self.master_port), timeout_s)) from None

    cls.next_rendezvous = next_rendezvous
    return True


def main(argv=None) -> None:
    """Run torchrun with ``argv`` (default ``sys.argv[1:]``)."""
    _patch_static_rendezvous()
    try:
        torchrun_main(argv)
    except RendezvousFailed as exc:
        print(f'{os.environ.get("DTOP_LAUNCHER", "torchrun")}: error: {exc}',
              file=sys.stderr, flush=True)
        sys.exit(1)


if __name__ == '__main__':
    main()
