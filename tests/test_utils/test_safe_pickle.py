"""Loading a checkpoint never runs its code (dtop.utils.safe_pickle and
dtop.utils.checkpoint): real weights load, every payload stays inert, NaN/Inf weights
are refused, and our plain-data checkpoints round-trip (HistoryBuffer, numpy)."""
import builtins
import functools
import logging
import os
import pickle
import zipfile

import numpy as np
import pytest
import torch
import torch.nn as nn
from mmengine.logging import HistoryBuffer, MMLogger
from mmengine.runner.checkpoint import CheckpointLoader

from dtop.utils import safe_pickle
from dtop.utils.checkpoint import (from_plain_checkpoint, read_checkpoint,
                                   set_trust_checkpoint, to_plain_checkpoint,
                                   torch_load_checkpoint)
from dtop.utils.errors import CheckpointError, NonFiniteError


class _System:
    """Unpickling it runs ``os.system(cmd)`` (with a full unpickler)."""

    def __init__(self, cmd):
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


class _Open:
    """Unpickling it creates ``path`` with ``open(path, 'w')``."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (builtins.open, (self.path, 'w'))


class _CallPartial:
    """Unpickling it calls a pickled ``functools.partial(os.system, cmd)``."""

    def __init__(self, cmd):
        self.cmd = cmd

    def __reduce__(self):
        return (functools.partial(os.system, self.cmd), ())


class _Eval:
    def __init__(self, code):
        self.code = code

    def __reduce__(self):
        return (builtins.eval, (self.code,))


def _net(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Linear(6, 3))


def _payloads(tmp_path):
    """Four payloads, each creating its own marker file if it ever ran."""
    markers = [tmp_path / f'ran_{i}' for i in range(4)]
    payloads = [_System(f'touch {markers[0]}'), _Open(str(markers[1])),
                _CallPartial(f'touch {markers[2]}'),
                _Eval(f'open({str(markers[3])!r}, "w")')]
    return payloads, markers


@pytest.fixture
def evil(tmp_path):
    model = _net(int.from_bytes(os.urandom(2), 'little'))
    payloads, markers = _payloads(tmp_path)
    ckpt = dict(state_dict=model.state_dict(),
                meta=dict(iter=3, note=payloads[0], nested=[{'x': payloads[1]}]),
                extra=(payloads[2], payloads[3]))
    path = tmp_path / 'evil.pth'
    torch.save(ckpt, str(path))
    return dict(path=str(path), model=model, markers=markers)


@pytest.fixture(autouse=True)
def _untrusted_by_default():
    set_trust_checkpoint(False)
    yield
    set_trust_checkpoint(False)


def test_weights_load_and_no_payload_runs(evil, caplog):
    ckpt = read_checkpoint(evil['path'])
    assert not any(m.exists() for m in evil['markers']), 'a payload ran'
    for k, v in evil['model'].state_dict().items():
        assert torch.equal(ckpt['state_dict'][k], v), k
    assert ckpt['meta']['iter'] == 3
    assert isinstance(ckpt['meta']['note'], safe_pickle.UntrustedObject)
    assert ckpt['meta']['note'].name == 'posix.system'
    names = safe_pickle.untrusted_globals(ckpt)
    assert {'posix.system', 'io.open', 'builtins.eval', 'functools.partial'} <= set(names)
    # a state dict keeps its version metadata (BatchNorm)
    assert ckpt['state_dict']._metadata == evil['model'].state_dict()._metadata


def test_the_payloads_do_run_when_trusted(evil):
    """The same file with full unpickling creates the files: the test above could fail."""
    logger = MMLogger.get_current_instance()
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger.addHandler(handler)
    try:
        read_checkpoint(evil['path'], trust=True)
    finally:
        logger.removeHandler(handler)
    assert all(m.exists() for m in evil['markers'])
    text = ' '.join(r.getMessage() for r in records)
    assert f'unpickling {evil["path"]} fully' in text and 'can run code' in text


def test_legacy_format_raw_pickle_and_torchscript(tmp_path):
    payloads, markers = _payloads(tmp_path)
    model = _net(1)
    legacy = tmp_path / 'legacy.pth'
    torch.save(dict(state_dict=model.state_dict(), evil=payloads),
               str(legacy), _use_new_zipfile_serialization=False)
    ckpt = read_checkpoint(str(legacy))
    assert torch.equal(ckpt['state_dict']['0.weight'], model[0].weight)
    raw = tmp_path / 'raw.pkl'
    raw.write_bytes(pickle.dumps(payloads))
    with pytest.raises(CheckpointError, match='not a readable PyTorch checkpoint'):
        read_checkpoint(str(raw))
    whole = tmp_path / 'whole_model.pkl'
    whole.write_bytes(pickle.dumps(_System(f'touch {markers[0]}')))
    with pytest.raises(CheckpointError):
        read_checkpoint(str(whole))
    assert not any(m.exists() for m in markers), 'a payload ran'
    scripted = tmp_path / 'scripted.pt'
    torch.jit.save(torch.jit.script(nn.Linear(2, 2)), str(scripted))
    with pytest.raises(CheckpointError, match='TorchScript archive'):
        read_checkpoint(str(scripted))


def test_mmengine_checkpoint_loader_is_routed_through_the_safe_loader(evil):
    """mmengine's load_checkpoint / load_from / init_cfg=Pretrained use it too."""
    ckpt = CheckpointLoader.load_checkpoint(evil['path'], map_location='cpu')
    assert not any(m.exists() for m in evil['markers'])
    assert torch.equal(ckpt['state_dict']['2.bias'], evil['model'][2].bias)


def test_non_finite_weights_are_refused_naming_the_tensor(tmp_path):
    model = _net(2)
    sd = model.state_dict()
    sd['2.weight'] = sd['2.weight'].clone()
    sd['2.weight'][1, 2] = float('nan')
    sd['0.bias'] = sd['0.bias'].clone()
    sd['0.bias'][0] = float('inf')
    path = tmp_path / 'nan.pth'
    torch.save(dict(state_dict=sd), str(path))
    with pytest.raises(NonFiniteError) as info:
        read_checkpoint(str(path))
    msg = str(info.value)
    assert msg.startswith(f'checkpoint {path} has non-finite weights: 2 of ')
    assert '0.bias (1 Inf of 6)' in msg and '2.weight (1 NaN of 18)' in msg
    assert '\n' not in msg
    assert read_checkpoint(str(path), check_finite=False)['state_dict']['2.weight'].isnan().any()


def test_plain_checkpoints_round_trip_and_load_weights_only(tmp_path):
    rng = np.random.default_rng(int.from_bytes(os.urandom(2), 'little'))
    buf = HistoryBuffer()
    for v in rng.normal(size=5):
        buf.update(float(v))
    meta = dict(eta=np.float64(rng.normal()), count=np.int64(7),
                arr=rng.integers(0, 9, (2, 3)), mixed=(np.float32(1.5), [np.arange(3)]))
    ckpt = dict(message_hub=dict(log_scalars={'train/loss': buf}, runtime_info=meta,
                                 resumed_keys={'train/loss': True}),
                state_dict=_net(3).state_dict())
    plain = to_plain_checkpoint(ckpt)
    assert plain['state_dict'] is ckpt['state_dict']  # untouched: keeps _metadata
    path = tmp_path / 'plain.pth'
    torch.save(plain, str(path))
    loaded = torch.load(str(path), weights_only=True)  # PyTorch's own safe loader
    back = from_plain_checkpoint(loaded)
    hb = back['message_hub']['log_scalars']['train/loss']
    assert isinstance(hb, HistoryBuffer)
    np.testing.assert_array_equal(hb._log_history, buf._log_history)
    np.testing.assert_array_equal(hb._count_history, buf._count_history)
    info = back['message_hub']['runtime_info']
    assert type(info['eta']) is np.float64 and info['eta'] == meta['eta']
    assert type(info['count']) is np.int64 and info['count'] == 7
    np.testing.assert_array_equal(info['arr'], meta['arr'])
    assert info['arr'].dtype == meta['arr'].dtype
    assert type(info['mixed']) is tuple and type(info['mixed'][0]) is np.float32
    np.testing.assert_array_equal(info['mixed'][1][0], np.arange(3))


def test_native_mmengine_history_buffer_is_rebuilt_from_data(tmp_path):
    """mmengine pickles HistoryBuffer with builtins.getattr: the safe loader keeps it
    inert, and from_plain_checkpoint builds a fresh one from its arrays."""
    buf = HistoryBuffer()
    for v in np.random.default_rng().normal(size=4):
        buf.update(float(v))
    path = tmp_path / 'native.pth'
    torch.save(dict(message_hub=dict(log_scalars={'loss': buf})), str(path))
    with zipfile.ZipFile(path) as zf:
        data = zf.read([n for n in zf.namelist() if n.endswith('data.pkl')][0])
    assert b'getattr' in data  # why weights_only=True refuses mmengine checkpoints
    raw = torch_load_checkpoint(str(path))
    assert isinstance(raw['message_hub']['log_scalars']['loss'], safe_pickle.UntrustedObject)
    rebuilt = from_plain_checkpoint(raw)['message_hub']['log_scalars']['loss']
    assert isinstance(rebuilt, HistoryBuffer)
    np.testing.assert_array_equal(rebuilt._log_history, buf._log_history)


def test_strip_untrusted_before_saving_again(evil):
    ckpt = read_checkpoint(evil['path'])
    clean, dropped = safe_pickle.strip_untrusted(ckpt)
    assert 'posix.system' in dropped and 'note' not in clean['meta']
    assert clean['meta']['nested'] == [{}] and clean['extra'] == ()
    assert not safe_pickle.untrusted_globals(clean)
