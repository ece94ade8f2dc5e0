"""MaskAnnealingHook: EoMT's per-block polynomial decay of attn_mask_probs."""
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
from mmengine.logging import MessageHub

from dtop.engine.hooks import MaskAnnealingHook, mask_prob
from dtop.utils.errors import OptionError

STARTS = [0, 10, 20, 30]
ENDS = [20, 30, 40, 50]


def test_mask_prob_key_values_and_formula():
    assert mask_prob(0, 5, 15) == 1.0
    assert mask_prob(4, 5, 15) == 1.0
    assert mask_prob(5, 5, 15) == 1.0          # progress 0
    assert mask_prob(15, 5, 15) == 0.0         # exactly 0 at the end ...
    assert mask_prob(10 ** 6, 5, 15) == 0.0    # ... and after it
    assert mask_prob(10, 5, 15) == pytest.approx(0.5 ** 0.9)
    assert mask_prob(7, 5, 15, power=2.0) == pytest.approx(0.8 ** 2)
    values = [mask_prob(t, 5, 15) for t in range(0, 20)]
    assert all(a >= b for a, b in zip(values, values[1:]))
    assert all(a > b for a, b in zip(values[5:16], values[6:16]))  # strictly inside
    for t in range(6, 15):
        assert values[t] == pytest.approx((1 - (t - 5) / 10) ** 0.9)
    with pytest.raises(ValueError):
        mask_prob(0, 5, 5)


def test_eomt_ade20k_recipe_values():
    hook = MaskAnnealingHook([6520, 13040, 19560, 26080], [13040, 19560, 26080, 32600])
    assert hook.probs(0) == [1.0] * 4
    assert hook.probs(13040) == [0.0, 1.0, 1.0, 1.0]
    assert hook.probs(16300)[1] == pytest.approx(0.5 ** 0.9)
    assert hook.probs(32600) == [0.0] * 4


class _Head(nn.Module):
    def __init__(self, n=4):
        super().__init__()
        self.register_buffer('attn_mask_probs', torch.ones(n))


class _Model(nn.Module):
    def __init__(self, head=None):
        super().__init__()
        self.decode_head = head if head is not None else _Head()


class _FakeDDP(nn.Module):
    def __init__(self, module):
        super().__init__()
        self.module = module


def _runner(model, it=0, max_iters=60, name='mask_anneal'):
    return SimpleNamespace(model=model, iter=it, max_iters=max_iters,
                           message_hub=MessageHub.get_instance(f'{name}_{it}_{id(model)}'))


def _expected(t):
    return torch.tensor([mask_prob(t, s, e) for s, e in zip(STARTS, ENDS)])


@pytest.mark.parametrize('wrap', [False, True])
def test_hook_sets_buffer_every_iteration(wrap):
    inner = _Model()
    runner = _runner(_FakeDDP(inner) if wrap else inner)
    probs = inner.decode_head.attn_mask_probs
    hook = MaskAnnealingHook(STARTS, ENDS)
    hook.before_train(runner)
    torch.testing.assert_close(probs, _expected(0))
    for t in range(60):
        runner.iter = t
        hook.before_train_iter(runner, batch_idx=t)
        torch.testing.assert_close(probs, _expected(t))   # used by iteration t
        hook.after_train_iter(runner, batch_idx=t, outputs={})
        torch.testing.assert_close(probs, _expected(t + 1))  # left for val / ckpt
    assert probs.tolist() == [0.0, 0.0, 0.0, 0.0]  # exactly 0 after the last end
    assert inner.decode_head.attn_mask_probs is probs  # updated in place
    hub = runner.message_hub
    assert hub.get_scalar('train/attn_mask_prob_3').current() == 0.0


def test_midway_values():
    model = _Model()
    runner = _runner(model, it=25)
    MaskAnnealingHook(STARTS, ENDS).before_train_iter(runner, batch_idx=25)
    got = model.decode_head.attn_mask_probs.tolist()
    assert got[0] == 0.0 and got[3] == 1.0
    assert got[1] == pytest.approx((1 - 15 / 20) ** 0.9)
    assert got[2] == pytest.approx((1 - 5 / 20) ** 0.9)


def test_resume_sets_from_restored_iteration():
    model = _FakeDDP(_Model())
    # a resumed run: the loop's iteration is restored before before_train
    runner = _runner(model, it=35)
    model.module.decode_head.attn_mask_probs.fill_(1.0)
    MaskAnnealingHook(STARTS, ENDS).before_train(runner)
    torch.testing.assert_close(model.module.decode_head.attn_mask_probs, _expected(35))


def test_warns_when_training_ends_before_annealing(capsys):
    from mmengine.logging import MMLogger
    MMLogger.get_instance('mask_anneal_warn')
    runner = _runner(_Model(), max_iters=40)
    MaskAnnealingHook(STARTS, ENDS).before_train(runner)
    assert 'masked attention will still be on' in capsys.readouterr().out


@pytest.mark.parametrize('kwargs, key', [
    (dict(start_iters=[0, 1], end_iters=[5]), 'same length'),
    (dict(start_iters=[0, 10], end_iters=[5, 10]), 'end_iters[1]=10'),
    (dict(start_iters=[0, 10], end_iters=[5, 8]), 'end_iters[1]=8'),
    (dict(start_iters=[-1], end_iters=[5]), 'start_iters'),
    (dict(start_iters=[0], end_iters=[2.5]), 'end_iters'),
    (dict(start_iters=[True], end_iters=[5]), 'start_iters'),
    (dict(start_iters=[], end_iters=[]), 'start_iters'),
    (dict(start_iters=5, end_iters=[5]), 'start_iters'),
    (dict(start_iters=[0], end_iters=[5], power=0), 'power'),
    (dict(start_iters=[0], end_iters=[5], power=float('nan')), 'power'),
])
def test_bad_arguments_give_one_line_option_error(kwargs, key):
    with pytest.raises(OptionError) as info:
        MaskAnnealingHook(**kwargs)
    msg = str(info.value)
    assert key in msg and '\n' not in msg and msg.startswith('MaskAnnealingHook')


def test_model_without_buffer_or_wrong_length():
    hook = MaskAnnealingHook(STARTS, ENDS)
    with pytest.raises(OptionError, match='attn_mask_probs buffer') as info:
        hook.before_train(_runner(_Model(head=nn.Linear(2, 2))))
    assert '\n' not in str(info.value)
    with pytest.raises(OptionError, match='decode_head'):
        hook.before_train(_runner(nn.Linear(2, 2)))
    with pytest.raises(OptionError, match=r'shape \(3,\)') as info:
        hook.before_train(_runner(_FakeDDP(_Model(head=_Head(3)))))
    assert '\n' not in str(info.value)


def test_real_runner_checkpoint_and_resume(tmp_path):
    from mmengine.hooks import Hook
    from mmengine.model import BaseModel
    from mmengine.runner import Runner

    import dtop  # noqa: F401

    class Model(BaseModel):
        def __init__(self):
            super().__init__()
            self.decode_head = _Head(2)
            self.decode_head.lin = nn.Linear(2, 1)

        def forward(self, inputs, data_samples=None, mode='tensor'):
            return dict(loss=self.decode_head.lin(inputs.float()).sum())

    seen = []

    class Record(Hook):
        priority = 'LOW'

        def before_train_iter(self, runner, batch_idx, data_batch=None):
            seen.append(runner.model.decode_head.attn_mask_probs.tolist())

    def train(max_iters, resume):
        runner = Runner(
            model=Model(), work_dir=str(tmp_path), default_scope='mmseg',
            experiment_name=f'mask_anneal_{max_iters}', resume=resume,
            train_dataloader=dict(
                dataset=[dict(inputs=torch.randn(2)) for _ in range(32)], batch_size=2,
                sampler=dict(type='DefaultSampler', shuffle=False),
                collate_fn=dict(type='default_collate')),
            train_cfg=dict(by_epoch=False, max_iters=max_iters),
            optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.01)),
            default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=3,
                                               by_epoch=False)),
            custom_hooks=[dict(type='MaskAnnealingHook', start_iters=[0, 2],
                               end_iters=[4, 6]), Record()])
        runner.train()
        return runner

    def expected(t):
        return [mask_prob(t, 0, 4), mask_prob(t, 2, 6)]

    runner = train(3, resume=False)
    torch.testing.assert_close(torch.tensor(seen),
                               torch.tensor([expected(t) for t in range(3)]))
    saved = torch.load(tmp_path / 'iter_3.pth', map_location='cpu', weights_only=False)
    assert saved['state_dict']['decode_head.attn_mask_probs'].tolist() == \
        pytest.approx(expected(3))
    seen.clear()
    runner = train(8, resume=True)
    torch.testing.assert_close(torch.tensor(seen),
                               torch.tensor([expected(t) for t in range(3, 8)]))
    assert runner.model.decode_head.attn_mask_probs.tolist() == [0.0, 0.0]


def test_registered():
    from mmseg.registry import HOOKS

    import dtop  # noqa: F401
    hook = HOOKS.build(dict(type='MaskAnnealingHook', start_iters=[0], end_iters=[4]))
    assert isinstance(hook, MaskAnnealingHook) and hook.power == 0.9
