"""State-dict converters: transformers / timm DINOv2 → :class:`DToPDinov2` keys.

Pure functions on ``{name: tensor}`` dicts (no file IO, no model built); the
command line is ``tools/model_converters/dinov2_to_dtop.py``. The target layout::

    cls_token                      (1, 1, C)
    register_tokens                (1, R, C)        models with registers only
    pos_embed                      (1, [1 +] N, C)  cls entry iff pos_embed_cls
    patch_embed.proj.{weight,bias}
    layers.i.norm1.{weight,bias}
    layers.i.attn.qkv.{weight,bias}                 q, k, v stacked: (3C, C)
    layers.i.attn.proj.{weight,bias}
    layers.i.ls1.gamma / ls2.gamma                  layer scale
    layers.i.norm2.{weight,bias}
    layers.i.mlp.fc1.{weight,bias}                  SwiGLU: gate rows, then up rows
    layers.i.mlp.fc2.{weight,bias}
    norm.{weight,bias}

The position embedding keeps its pretraining grid; the backbone resizes it when it
loads the file (``init_cfg=dict(type='Pretrained', checkpoint=...)``).
"""
import math
import re
from typing import Dict, List, Mapping, Optional, Tuple

import torch
from torch import Tensor

from dtop.utils.errors import DToPUserError

StateDict = Dict[str, Tensor]

# one transformers layer: (our suffix, candidate source suffixes, first match wins)
_HF_RENAMES = (
    ('norm1', ('norm1', )),
    ('norm2', ('norm2', )),
    ('attn.proj', ('attention.output.dense', 'attention.o_proj', 'attention.out_proj')),
    ('mlp.fc2', ('mlp.fc2', 'mlp.weights_out', 'mlp.down_proj')),
)
_HF_QKV = (('attention.attention.query', 'attention.attention.key', 'attention.attention.value'),
           ('attention.q_proj', 'attention.k_proj', 'attention.v_proj'))
_HF_FC1 = (('mlp.fc1', ), ('mlp.weights_in', ), ('mlp.gate_proj', 'mlp.up_proj'))
_HF_PATCH = 'embeddings.patch_embeddings.projection.weight'
_TIMM_PATCH = 'patch_embed.proj.weight'
_TIMM_DROP = ('head.', 'head_dist.', 'fc_norm.', 'pre_logits.', 'attn_pool.')


class ConversionError(DToPUserError, ValueError):
    """A state dict that is not the DINOv2 layout the converter expects (the
    message names the key and what to do)."""


class MissingPackageError(DToPUserError, ImportError):
    """An optional package a conversion needs is not installed."""


def _dot(prefix: str) -> str:
    return prefix + '.' if prefix and not prefix.endswith('.') else prefix


def _take(sd: Mapping[str, Tensor], used: set, key: str) -> Tensor:
    used.add(key)
    return sd[key]


def _linear(sd: Mapping[str, Tensor], used: set, src: str, dst: str, out: StateDict,
            bias_required: bool = True) -> None:
    out[dst + '.weight'] = _take(sd, used, src + '.weight')
    if src + '.bias' in sd:
        out[dst + '.bias'] = _take(sd, used, src + '.bias')
    elif bias_required:
        raise KeyError(src + '.bias')


def _stacked(sd: Mapping[str, Tensor], used: set, srcs: Tuple[str, ...], dst: str,
             out: StateDict) -> None:
    """Rows of several linears stacked into one (``qkv``; SwiGLU gate + up)."""
    out[dst + '.weight'] = torch.cat([_take(sd, used, s + '.weight') for s in srcs])
    biases = [s + '.bias' for s in srcs if s + '.bias' in sd]
    if biases and len(biases) != len(srcs):
        raise ConversionError(f'only some of {[s + ".bias" for s in srcs]} exist')
    if biases:
        out[dst + '.bias'] = torch.cat([_take(sd, used, b) for b in biases])


def convert_hf_layer(state_dict: Mapping[str, Tensor], src_prefix: str,
                     dst_prefix: str) -> StateDict:
    """Convert ONE transformers DINOv2-style layer to :class:`Dinov2Block` keys.

    Understands both naming families of transformers:

    * DINOv2 (``Dinov2Layer``, ``Dinov2WithRegistersLayer``), as saved on disk:
      ``attention.attention.{query,key,value}``, ``attention.output.dense``, and as
      held in memory by transformers 5: ``attention.{q,k,v}_proj``,
      ``attention.o_proj``;
    * EoMT (``EomtLayer``): ``attention.{q,k,v}_proj``, ``attention.out_proj``;

    and, in both, ``norm1``/``norm2``, ``layer_scale{1,2}.lambda1`` (optional: a
    layer without layer scale maps to a block built with ``layer_scale_init=None``)
    and the FFN as ``mlp.fc1``/``mlp.fc2`` (GELU), ``mlp.weights_in``/
    ``mlp.weights_out`` or ``mlp.gate_proj``/``mlp.up_proj``/``mlp.down_proj``
    (SwiGLU; ``fc1`` = gate rows then up rows, as :class:`Dinov2Block` expects).

    Args:
        state_dict (Mapping): the whole source state dict.
        src_prefix (str): the layer's key prefix, e.g. ``'encoder.layer.3'`` or
            ``'layers.3.'`` (a trailing dot is added when missing).
        dst_prefix (str): prefix of the converted keys, e.g. ``'layers.3'``.

    Returns:
        dict: ``{dst_prefix.norm1.weight: ..., dst_prefix.attn.qkv.weight: ...}``.

    Raises:
        ConversionError: a key is missing, or a key under ``src_prefix`` is not
            understood (nothing is dropped silently).
    """
    src, dst = _dot(src_prefix), _dot(dst_prefix)
    sd = {k[len(src):]: v for k, v in state_dict.items() if k.startswith(src)}
    if not sd:
        raise ConversionError(f'no keys under "{src}"')
    used: set = set()
    out: StateDict = {}
    try:
        for ours, names in _HF_RENAMES:
            name = next((n for n in names if n + '.weight' in sd), names[0])
            _linear(sd, used, name, dst + ours, out)
        qkv = next((names for names in _HF_QKV if names[0] + '.weight' in sd), _HF_QKV[0])
        _stacked(sd, used, qkv, dst + 'attn.qkv', out)
        fc1 = next((names for names in _HF_FC1 if names[0] + '.weight' in sd), _HF_FC1[0])
        _stacked(sd, used, fc1, dst + 'mlp.fc1', out)
    except KeyError as e:
        raise ConversionError(f'missing "{src}{e.args[0]}" (not a transformers DINOv2 / '
                              'EoMT layer?)') from None
    for i in (1, 2):
        if f'layer_scale{i}.lambda1' in sd:
            out[f'{dst}ls{i}.gamma'] = _take(sd, used, f'layer_scale{i}.lambda1')
    left = sorted(set(sd) - used)
    if left:
        raise ConversionError(f'keys of layer "{src}" not understood: '
                              f'{[src + k for k in left[:5]]}')
    return out


def _layer_ids(keys, prefix: str) -> List[int]:
    ids = sorted({int(m.group(1)) for k in keys
                  for m in [re.match(re.escape(prefix) + r'(\d+)\.', k)] if m})
    if not ids or ids != list(range(len(ids))):
        raise ConversionError(f'layers must be {prefix}0..{prefix}L-1, got {ids}')
    return ids


def _find_prefix(state_dict: Mapping, anchor: str, source: str) -> str:
    hits = [k[:-len(anchor)] for k in state_dict if k.endswith(anchor)]
    if len(hits) != 1:
        raise ConversionError(
            f'not a {source} DINOv2 state dict: {len(hits)} keys end with "{anchor}" '
            f'(first keys: {list(state_dict)[:5]})')
    return hits[0]


def convert_hf_dinov2(state_dict: Mapping[str, Tensor],
                      dropped: Optional[List[str]] = None) -> StateDict:
    """Convert a transformers ``Dinov2Model`` / ``Dinov2WithRegistersModel`` state dict.

    Keys may carry a model prefix (``dinov2.``, ``dinov2_with_registers.``, ...: the
    one in front of ``embeddings.patch_embeddings.projection.weight``); keys outside
    it (classifier heads) and ``mask_token`` are dropped. transformers always stores
    a cls position, so the result needs ``pos_embed_cls=True``.

    Args:
        state_dict (Mapping): transformers ``{name: tensor}``.
        dropped (list, optional): receives the source keys left out.

    Returns:
        dict: :class:`DToPDinov2` keys (see the module doc).
    """
    p = _find_prefix(state_dict, _HF_PATCH, 'transformers')
    sd = {k[len(p):]: v for k, v in state_dict.items() if k.startswith(p)}
    skipped = [k for k in state_dict if not k.startswith(p)]
    out: StateDict = {}
    top = {'embeddings.cls_token': 'cls_token', 'embeddings.position_embeddings': 'pos_embed',
           'embeddings.patch_embeddings.projection.weight': 'patch_embed.proj.weight',
           'embeddings.patch_embeddings.projection.bias': 'patch_embed.proj.bias',
           'layernorm.weight': 'norm.weight', 'layernorm.bias': 'norm.bias'}
    for src, dst in top.items():
        if src not in sd:
            raise ConversionError(f'missing "{p}{src}" in the transformers state dict')
        out[dst] = sd[src]
    regs = sd.get('embeddings.register_tokens')
    if regs is not None and regs.shape[1] > 0:
        out['register_tokens'] = regs
    for i in _layer_ids(sd, 'encoder.layer.'):
        out.update(convert_hf_layer(sd, f'encoder.layer.{i}.', f'layers.{i}.'))
    known = set(top) | {'embeddings.register_tokens', 'embeddings.mask_token'}
    left = [k for k in sd if k not in known and not k.startswith('encoder.layer.')]
    if left:
        raise ConversionError(f'keys not understood in the transformers state dict: '
                              f'{[p + k for k in left[:5]]}')
    if dropped is not None:
        dropped += skipped + [p + k for k in ('embeddings.mask_token', ) if k in sd]
        if regs is not None and regs.shape[1] == 0:
            dropped.append(p + 'embeddings.register_tokens')
    return out


def convert_timm_dinov2(state_dict: Mapping[str, Tensor],
                        dropped: Optional[List[str]] = None) -> Tuple[StateDict, bool]:
    """Convert a timm DINOv2 ``VisionTransformer`` state dict.

    timm ``vit_*_patch14_dinov2`` (cls position stored) and
    ``vit_*_patch14_reg4_dinov2`` (``reg_token``, ``no_embed_class``: no cls
    position). The original DINOv2 layout (``register_tokens``, SwiGLU
    ``mlp.w12``/``mlp.w3``) is accepted too, and so is timm's split SwiGLU
    (``mlp.fc1_g``/``mlp.fc1_x``). ``mask_token``, ``fc_norm`` and heads are dropped.

    Args:
        state_dict (Mapping): timm ``{name: tensor}`` (an optional common prefix
            in front of ``patch_embed.proj.weight`` is removed).
        dropped (list, optional): receives the source keys left out.

    Returns:
        tuple: (:class:`DToPDinov2` state dict, ``pos_embed_cls``: whether the
        position embedding has a cls entry; build the backbone with it).
    """
    p = _find_prefix(state_dict, _TIMM_PATCH, 'timm')
    sd = {k[len(p):]: v for k, v in state_dict.items() if k.startswith(p)}
    skipped = [k for k in state_dict if not k.startswith(p)]
    out: StateDict = {}
    used: set = set()
    for src, dst in (('cls_token', 'cls_token'), ('pos_embed', 'pos_embed'),
                     ('patch_embed.proj.weight', 'patch_embed.proj.weight'),
                     ('patch_embed.proj.bias', 'patch_embed.proj.bias'),
                     ('norm.weight', 'norm.weight'), ('norm.bias', 'norm.bias')):
        if src not in sd:
            raise ConversionError(f'missing "{p}{src}" in the timm state dict')
        out[dst] = _take(sd, used, src)
    num_regs = 0
    for name in ('reg_token', 'register_tokens'):
        if name in sd and sd[name].shape[1] > 0:
            out['register_tokens'] = _take(sd, used, name)
            num_regs = sd[name].shape[1]
    length = out['pos_embed'].shape[1]
    if math.isqrt(length) ** 2 == length:
        pos_embed_cls = False
    elif math.isqrt(length - 1) ** 2 == length - 1:
        pos_embed_cls = True
    else:
        raise ConversionError(
            f'pos_embed {tuple(out["pos_embed"].shape)} is not a square grid with or '
            f'without a cls entry (positions for {num_regs} register tokens are not '
            'supported: DINOv2 registers have none)')
    try:
        _convert_timm_blocks(sd, used, out)
    except KeyError as e:
        raise ConversionError(f'missing "{p}{e.args[0]}" in the timm state dict') from None
    left = [k for k in sd if k not in used]
    ignored = [k for k in left if k.startswith(_TIMM_DROP) or k == 'mask_token']
    if len(ignored) != len(left):
        raise ConversionError(f'keys not understood in the timm state dict: '
                              f'{[p + k for k in left if k not in ignored][:5]}')
    if dropped is not None:
        dropped += skipped + [p + k for k in ignored]
    return out, pos_embed_cls


def _convert_timm_blocks(sd: Mapping[str, Tensor], used: set, out: StateDict) -> None:
    """timm ``blocks.i.*`` → ``layers.i.*`` (names are timm's already, but for the
    SwiGLU variants)."""
    for i in _layer_ids(sd, 'blocks.'):
        b = f'blocks.{i}.'
        for ours in ('norm1', 'norm2', 'attn.proj', 'attn.qkv'):
            _linear(sd, used, b + ours, f'layers.{i}.{ours}', out,
                    bias_required=ours != 'attn.qkv')
        if b + 'mlp.fc1_g.weight' in sd:
            _stacked(sd, used, (b + 'mlp.fc1_g', b + 'mlp.fc1_x'), f'layers.{i}.mlp.fc1', out)
        else:
            fc1 = b + ('mlp.w12' if b + 'mlp.w12.weight' in sd else 'mlp.fc1')
            _linear(sd, used, fc1, f'layers.{i}.mlp.fc1', out)
        _linear(sd, used, b + ('mlp.w3' if b + 'mlp.w3.weight' in sd else 'mlp.fc2'),
                f'layers.{i}.mlp.fc2', out)
        for ls in ('ls1', 'ls2'):
            if b + ls + '.gamma' in sd:
                out[f'layers.{i}.{ls}.gamma'] = _take(sd, used, b + ls + '.gamma')


def resample_patch_embed(weight: Tensor, patch_size: int) -> Tensor:
    """Resample a patch-embedding kernel to another patch size (e.g. DINOv2's 14 to
    16, as EoMT does for "DINOv2-L/14 resampled to patch 16").

    Uses ``timm.layers.resample_patch_embed`` (FlexiViT's pseudo-inverse of the
    bicubic resize: a patch resized with the image gives the same embedding).

    Args:
        weight (Tensor): ``(C, in, p, p)`` kernel.
        patch_size (int): new patch side.

    Returns:
        Tensor: ``(C, in, patch_size, patch_size)``.

    Raises:
        MissingPackageError: timm is not installed (``pip install timm``).
    """
    try:
        from timm.layers import resample_patch_embed as timm_resample
    except ImportError as e:
        raise MissingPackageError(
            'resampling the patch embedding to another patch size needs timm: '
            '`pip install timm` (or convert without --patch-size)') from e
    if weight.dim() != 4:
        raise ConversionError(f'expected a (C, in, p, p) kernel, got {tuple(weight.shape)}')
    with torch.no_grad():
        return timm_resample(weight.float(), [patch_size, patch_size]).to(weight.dtype)


def describe_dinov2(state_dict: Mapping[str, Tensor], pos_embed_cls: bool) -> dict:
    """The architecture a converted state dict implies (for the file's meta and
    the backbone config): plain data only.

    Returns:
        dict: ``embed_dims``, ``num_layers``, ``patch_size``, ``pos_grid``,
        ``num_register_tokens``, ``pos_embed_cls``, ``ffn_type``, ``ffn_hidden``,
        ``layer_scale``, ``qkv_bias``.
    """
    w = state_dict['patch_embed.proj.weight']
    n = state_dict['pos_embed'].shape[1] - int(pos_embed_cls)
    fc1 = state_dict['layers.0.mlp.fc1.weight'].shape[0]
    hidden = state_dict['layers.0.mlp.fc2.weight'].shape[1]
    regs = state_dict.get('register_tokens')
    return dict(embed_dims=int(w.shape[0]), patch_size=int(w.shape[-1]),
                num_layers=len({k.split('.')[1] for k in state_dict
                                if k.startswith('layers.')}),
                pos_grid=[math.isqrt(n)] * 2,
                num_register_tokens=0 if regs is None else int(regs.shape[1]),
                pos_embed_cls=bool(pos_embed_cls),
                ffn_type='swiglu' if fc1 == 2 * hidden else 'mlp', ffn_hidden=int(hidden),
                layer_scale='layers.0.ls1.gamma' in state_dict,
                qkv_bias='layers.0.attn.qkv.bias' in state_dict)
