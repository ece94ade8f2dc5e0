"""dtop.utils.checkpoint: unreadable files are named in one line; mismatches stop
(strict) or are summarised (partial); --resume finds the newest complete file.
Also the work-directory lock of dtop.utils.launch."""
import os

import pytest
import torch
import torch.nn as nn

from dtop.utils.checkpoint import (check_checkpoint_fits, compare_state_dict,
                                   diagnose_checkpoint_file, find_resumable_checkpoint,
                                   load_checkpoint_strict, read_checkpoint,
                                   summarize_partial_load)
from dtop.utils.errors import CheckpointError, CheckpointMismatchError, DToPUserError
from dtop.utils.launch import WorkDirLock


def _net(width):
    torch.manual_seed(width)
    return nn.Sequential(nn.Linear(4, width), nn.ReLU(), nn.Linear(width, 3))


def _save(path, model, **extra):
    torch.save(dict(state_dict=model.state_dict(), meta=dict(iter=1), **extra), str(path))
    return str(path)


@pytest.fixture
def good(tmp_path):
    return _save(tmp_path / 'good.pth', _net(8))


def test_read_good_checkpoint(good):
    assert diagnose_checkpoint_file(good) is None
    ckpt = read_checkpoint(good)
    assert set(ckpt['state_dict']) == {'0.weight', '0.bias', '2.weight', '2.bias'}


@pytest.mark.parametrize('damage,reason', [
    (lambda b: b'', r'it is empty \(0 bytes\)'),
    (lambda b: b[: len(b) // 2], 'it is truncated or corrupt'),
    (lambda b: os.urandom(len(b)), 'is not a PyTorch checkpoint|not a readable PyTorch'),
    (lambda b: b'\x80\x02garbage' + os.urandom(64), 'not a readable PyTorch checkpoint'),
])
def test_unreadable_files_are_named_in_one_line(tmp_path, good, damage, reason):
    bad = tmp_path / 'bad.pth'
    with open(good, 'rb') as f:
        bad.write_bytes(damage(f.read()))
    with pytest.raises(CheckpointError, match=reason) as info:
        read_checkpoint(str(bad))
    msg = str(info.value)
    assert msg.startswith(f'cannot read checkpoint {bad}: ')
    assert '\n' not in msg and 'Traceback' not in msg


def test_missing_and_non_dict_files(tmp_path):
    with pytest.raises(CheckpointError, match='it does not exist. Check the path'):
        read_checkpoint(str(tmp_path / 'nope.pth'))
    torch.save([1, 2, 3], str(tmp_path / 'list.pth'))
    with pytest.raises(CheckpointError, match='it holds a list, not a state dict'):
        read_checkpoint(str(tmp_path / 'list.pth'))


def test_mismatch_stops_with_first_mismatches_and_fix(tmp_path):
    ckpt_path = _save(tmp_path / 'w16.pth', _net(16))
    model = _net(8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointMismatchError) as info:
        load_checkpoint_strict(model, ckpt_path)
    msg = str(info.value)
    assert f'checkpoint {ckpt_path} does not fit the model: 1 of 4 model tensors' in msg
    assert '3 shape mismatches (checkpoint vs model): 0.weight [16, 4] vs [8, 4]' in msg
    assert '--allow-partial-load' in msg and 'Fix:' in msg
    # nothing was loaded
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


def test_missing_and_unexpected_keys_are_listed():
    model = _net(8)
    sd = dict(model.state_dict())
    sd.pop('2.bias')
    sd['extra.weight'] = torch.zeros(2)
    diff = compare_state_dict(model, sd)
    assert diff.missing == ['2.bias'] and diff.unexpected == ['extra.weight']
    assert not diff.ok and diff.num_loaded == 3
    with pytest.raises(CheckpointMismatchError,
                       match='1 model keys missing from the checkpoint: 2.bias'):
        check_checkpoint_fits(model, dict(state_dict=sd), 'x.pth')


def test_partial_load_opt_out_loads_what_fits(tmp_path, capsys):
    src = _net(8)
    sd = dict(src.state_dict())
    sd['2.weight'] = torch.zeros(5, 8)  # wrong shape
    path = tmp_path / 'partial.pth'
    torch.save(dict(state_dict=sd), str(path))
    model = _net(8)
    keep = model.state_dict()['2.weight'].clone()
    load_checkpoint_strict(model, str(path), strict=False)
    assert torch.equal(model.state_dict()['0.weight'], src.state_dict()['0.weight'])
    assert torch.equal(model.state_dict()['2.weight'], keep)


def test_module_prefix_is_stripped_like_mmengine(tmp_path):
    src = _net(8)
    path = tmp_path / 'ddp.pth'
    torch.save(dict(state_dict={f'module.{k}': v for k, v in src.state_dict().items()}),
               str(path))
    model = _net(8)
    load_checkpoint_strict(model, str(path))
    assert torch.equal(model[0].weight, src[0].weight)


def test_summarize_partial_load_counts():
    model = _net(8)
    sd = {'0.weight': torch.zeros(8, 4), 'head.x': torch.zeros(1)}
    diff = summarize_partial_load(model, sd, 'imagenet.pth')
    assert diff.num_loaded == 1 and len(diff.missing) == 3 and diff.unexpected == ['head.x']


def _ckpt(work, it, model, complete=True):
    path = work / f'iter_{it}.pth'
    _save(path, model)
    if not complete:
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 3])
    return str(path)


def test_find_resumable_checkpoint(tmp_path):
    work = tmp_path / 'work'
    work.mkdir()
    assert find_resumable_checkpoint(str(work)) is None
    m = _net(4)
    p2 = _ckpt(work, 2, m)
    (work / 'last_checkpoint').write_text(p2)
    assert find_resumable_checkpoint(str(work)) == p2
    # last_checkpoint names a deleted file (mmengine's order of operations)
    p4 = _ckpt(work, 4, m, complete=False)
    (work / 'last_checkpoint').write_text(str(work / 'iter_6.pth'))
    assert find_resumable_checkpoint(str(work)) == p2  # iter_4 is truncated
    (work / 'last_checkpoint').write_text(p4)
    assert find_resumable_checkpoint(str(work)) == p2
    # killed after the rename, before the pointer moved: the newer complete file wins
    p6 = _ckpt(work, 6, m)
    (work / 'last_checkpoint').write_text(p2)
    assert find_resumable_checkpoint(str(work)) == p6
    os.remove(p6)
    os.remove(p2)
    with pytest.raises(CheckpointError, match='holds no other complete checkpoint'):
        find_resumable_checkpoint(str(work))


def test_work_dir_lock(tmp_path):
    lock = WorkDirLock(str(tmp_path / 'w')).acquire()
    with pytest.raises(DToPUserError, match=f'another training \\(pid {os.getpid()}\\)'):
        WorkDirLock(str(tmp_path / 'w')).acquire()
    lock.release()
    WorkDirLock(str(tmp_path / 'w')).acquire().release()


def test_garbage_last_checkpoint_is_named_not_a_unicode_traceback(tmp_path):
    work = tmp_path / 'work'
    work.mkdir()
    pointer = work / 'last_checkpoint'
    pointer.write_bytes(b'\xf4\x80' + os.urandom(198))
    with pytest.raises(CheckpointError) as info:
        find_resumable_checkpoint(str(work))
    msg = str(info.value)
    assert f'{pointer} is not a text file naming a checkpoint (200 bytes of binary ' \
        'data)' in msg and 'holds no complete checkpoint' in msg and '\n' not in msg
    p2 = _ckpt(work, 2, _net(4))
    assert find_resumable_checkpoint(str(work)) == p2  # ignored, with a warning


def test_resume_follows_last_checkpoint_only_inside_the_work_dir(tmp_path):
    """A work dir copied with cp -a: its last_checkpoint names the source's file."""
    import shutil
    src = tmp_path / 'src'
    src.mkdir()
    m = _net(4)
    p2 = _ckpt(src, 2, m)
    (src / 'last_checkpoint').write_text(p2)
    copy = tmp_path / 'copy'
    shutil.copytree(src, copy)
    _ckpt(src, 6, m)  # the source run goes on: its newer file must not be picked
    (src / 'last_checkpoint').write_text(str(src / 'iter_6.pth'))
    assert find_resumable_checkpoint(str(copy)) == str(copy / 'iter_2.pth')
    # the pointer names a file outside the work dir with no copy inside: refused
    (copy / 'last_checkpoint').write_text(str(src / 'iter_6.pth'))
    os.remove(copy / 'iter_2.pth')
    with pytest.raises(CheckpointError) as info:
        find_resumable_checkpoint(str(copy))
    msg = str(info.value)
    assert f'names {src / "iter_6.pth"}, which is not inside the work dir {copy}' in msg
    assert 'load_from=' in msg and '\n' not in msg
