"""Two tests that share an mmengine logger created under ``capsys`` (as two runners
built from one config within the same second do) log cleanly, each into its own
captured output (see ``_loggers_write_to_open_streams`` in ``tests/conftest.py``)."""
import os

from mmengine.logging import MMLogger

_NAME = f'shared_logger_{os.getpid()}_{os.urandom(4).hex()}'


def test_first_creates_the_logger(capsys):
    token = os.urandom(4).hex()
    MMLogger.get_instance(_NAME, log_level='INFO').info(token)
    assert token in capsys.readouterr().out


def test_second_reuses_it_after_its_stream_closed(capsys):
    logger = MMLogger.get_instance(_NAME)
    token = os.urandom(4).hex()
    logger.info(token)
    captured = capsys.readouterr()
    assert 'Logging error' not in captured.err, captured.err
    assert token in captured.out
