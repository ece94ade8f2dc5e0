"""The plain mmseg model a DToP config corresponds to.

A DToP SETR or Segmenter model is mmseg's dense ``EncoderDecoder`` with the same
parameters, run stage by stage. :func:`mmseg_dense_model_cfg` writes that dense
model's config (``VisionTransformer`` + ``SETRUPHead`` /
``SegmenterMaskTransformerHead``), so that tests can compare outputs with shared
weights and ``get_flops.py`` can count mmseg's own model next to ours.
"""
import copy
from typing import List, Tuple

#: DToP head type -> the mmseg head with the same parameters.
MMSEG_HEADS = {
    'DToPSETRUPHead': 'SETRUPHead',
    'DToPSegmenterMaskHead': 'SegmenterMaskTransformerHead',
}
#: config keys of DToP modules that mmseg's modules do not take
_DTOP_ONLY_KEYS = ('attention_backend', )
_DTOP_TEST_KEYS = ('crop_batch_size', 'precision', 'skip_idle_aux_heads')


def _head_type(cfg: dict) -> str:
    t = cfg.get('type')
    return t if isinstance(t, str) else getattr(t, '__name__', str(t))


def mmseg_dense_model_cfg(model_cfg: dict) -> Tuple[dict, List[int]]:
    """mmseg ``EncoderDecoder`` config with the parameters of a DToP model config.

    The backbone becomes mmseg's ``VisionTransformer`` with the same arguments
    (DToP's ``patch_bias`` default, True, is written out since mmseg's is False);
    each head with an mmseg counterpart (:data:`MMSEG_HEADS`) becomes it, reading
    its stage's backbone output (``in_index`` = stage). Auxiliary heads without an
    mmseg counterpart (ATM heads) are left out: they do not exist in the dense
    model and, with pruning off, do not run at inference.

    Args:
        model_cfg (dict): a ``DToPEncoderDecoder`` config.

    Returns:
        tuple: the mmseg config and the stage indices of the auxiliary heads kept.

    Raises:
        ValueError: if the decode head has no mmseg counterpart (SegViT/ATM).
    """
    cfg = copy.deepcopy(dict(model_cfg))
    decode = dict(cfg['decode_head'])
    if _head_type(decode) not in MMSEG_HEADS:
        raise ValueError(f'the decode head {_head_type(decode)} has no mmseg counterpart '
                         f'(supported: {sorted(MMSEG_HEADS)})')
    backbone = dict(cfg['backbone'])
    backbone['type'] = 'VisionTransformer'
    backbone.setdefault('patch_bias', True)
    backbone.setdefault('out_indices', (5, 7, 11))
    for k in _DTOP_ONLY_KEYS:
        backbone.pop(k, None)
    num_stages = len(backbone['out_indices'])

    def convert(head: dict, stage: int) -> dict:
        head = dict(head)
        head['type'] = MMSEG_HEADS[_head_type(head)]
        head['in_index'] = stage
        for k in _DTOP_ONLY_KEYS:
            head.pop(k, None)
        return head

    aux = cfg.get('auxiliary_head') or []
    if isinstance(aux, dict):
        aux = [aux]
    kept, aux_cfgs = [], []
    for s, head in enumerate(aux):
        if _head_type(head) in MMSEG_HEADS:
            kept.append(s)
            aux_cfgs.append(convert(head, s))
    test_cfg = dict(cfg.get('test_cfg') or dict(mode='whole'))
    for k in _DTOP_TEST_KEYS:
        test_cfg.pop(k, None)
    out = dict(type='EncoderDecoder', data_preprocessor=cfg.get('data_preprocessor'),
               backbone=backbone, decode_head=convert(decode, num_stages - 1),
               train_cfg=cfg.get('train_cfg', dict()), test_cfg=test_cfg)
    if aux_cfgs:
        out['auxiliary_head'] = aux_cfgs
    return out, kept


def dtop_to_mmseg_state_dict(state_dict: dict, kept_aux: List[int]) -> dict:
    """Our state dict in the dense model's key layout (auxiliary heads renumbered
    to the kept ones, heads without an mmseg counterpart dropped)."""
    out = {}
    index = {s: i for i, s in enumerate(kept_aux)}
    for k, v in state_dict.items():
        if k.startswith('auxiliary_head.'):
            s = int(k.split('.')[1])
            if s not in index:
                continue
            k = f'auxiliary_head.{index[s]}.' + k.split('.', 2)[2]
        out[k] = v
    return out
