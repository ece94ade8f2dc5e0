"""The EoMT demo configs (configs/demo/*eomt*): BASE and prune configs build the same
model, share the SegViT demo's data and test settings, anneal masked attention away
before the BASE checkpoint (and never in the fine-tune), and train/infer on a crop."""
import copy
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmengine.structures import PixelData
from mmseg.registry import MODELS
from mmseg.structures import SegDataSample

from dtop.engine.hooks import MaskAnnealingHook

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
BASE = 'configs/demo/eomt_vit-t16-8l_1xb8-1200_demo-128x128.py'
PRUNE = 'configs/demo/dtop_eomt_vit-t16-8l_1xb8-100_demo-128x128.py'
SEGVIT = 'configs/demo/segvit_vit-t16-8l_1xb8-1200_demo-128x128.py'
SEGVIT_PRUNE = 'configs/demo/dtop_segvit_vit-t16-8l_1xb8-100_demo-128x128.py'


def _load(path):
    return Config.fromfile(osp.join(ROOT, path))


def _strip(model):
    model = copy.deepcopy(model.to_dict())
    model.pop('prune_threshold')
    return model


def _annealing(cfg):
    return [h for h in cfg.custom_hooks if h.type == 'MaskAnnealingHook']


def test_run_demo_knows_the_eomt_pair():
    script = open(osp.join(ROOT, 'tools/run_demo.sh')).read()
    assert f'[eomt]={BASE}' in script and f'[eomt]={PRUNE}' in script
    assert osp.isfile(osp.join(ROOT, BASE)) and osp.isfile(osp.join(ROOT, PRUNE))


def test_base_and_prune_share_model_and_data():
    base, prune = _load(BASE), _load(PRUNE)
    segvit, segvit_prune = _load(SEGVIT), _load(SEGVIT_PRUNE)
    assert base.model.prune_threshold == 1.0 and prune.model.prune_threshold < 1.0
    assert _strip(base.model) == _strip(prune.model)  # the BASE checkpoint loads exactly
    for cfg, ref in ((base, segvit), (prune, segvit_prune)):
        for key in ('train_dataloader', 'val_dataloader', 'test_dataloader', 'val_evaluator',
                    'optim_wrapper', 'param_scheduler', 'train_cfg', 'default_hooks'):
            assert cfg[key] == ref[key], key
        assert cfg.model.test_cfg == ref.model.test_cfg
        assert cfg.model.data_preprocessor == ref.model.data_preprocessor
    bb, head = base.model.backbone, base.model.decode_head
    assert (bb.type, head.type) == ('DToPDinov2', 'EoMTHead')
    assert bb.num_layers + head.num_blocks == segvit.model.backbone.num_layers == 8
    assert bb.out_indices == [1, 3, 5] and not bb.pos_embed_cls and not bb.final_norm
    assert [h.type for h in base.model.auxiliary_head] == ['ATMPruneHead'] * 2
    assert base.model.auxiliary_head == segvit.model.auxiliary_head


def test_masked_attention_is_annealed_away_before_the_base_checkpoint():
    base, prune = _load(BASE), _load(PRUNE)
    (hook_cfg, ) = _annealing(base)
    hook = MaskAnnealingHook(**{k: v for k, v in hook_cfg.items() if k != 'type'})
    iters = base.train_cfg.max_iters
    assert len(hook.start_iters) == base.model.decode_head.num_blocks
    assert max(hook.end_iters) < iters  # an unmasked last stretch of training
    assert hook.probs(iters) == [0.0] * len(hook.start_iters)
    assert hook.probs(0) == [1.0] * len(hook.start_iters)
    # everything else of the BASE schedule is the SegViT demo's
    rest = [h for h in base.custom_hooks if h.type != 'MaskAnnealingHook']
    assert rest == _load(SEGVIT).custom_hooks
    # the fine-tune keeps the checkpoint's zeros: no annealing hook there
    assert not _annealing(prune)
    assert prune.custom_hooks == _load(SEGVIT_PRUNE).custom_hooks


def test_demo_model_trains_and_infers_on_a_crop():
    init_default_scope('mmseg')
    torch.manual_seed(0)
    cfg = _load(PRUNE)
    model = MODELS.build(cfg.model)
    model.init_weights()
    model.decode_head.attn_mask_probs.zero_()  # as after BASE training
    x = torch.randn(2, 3, 128, 128)
    samples = []
    for _ in range(2):
        s = SegDataSample()
        s.gt_sem_seg = PixelData(data=torch.randint(0, 10, (1, 128, 128)))
        s.set_metainfo(dict(img_shape=(128, 128), ori_shape=(128, 128), pad_shape=(128, 128)))
        samples.append(s)
    model.train()
    losses = model.loss(x, samples)
    total = sum(v for k, v in losses.items() if 'loss' in k)
    assert torch.isfinite(total)
    total.backward()
    model.eval()
    with torch.no_grad():
        out = model._forward(x[:1])
    assert out.shape == (1, 10, 128, 128)


@pytest.mark.parametrize('path', [BASE, PRUNE])
def test_configs_document_themselves(path):
    text = open(osp.join(ROOT, path)).read()
    assert text.startswith('# ') and ('run_demo.sh' in text or 'dist_train_load.sh' in text)
