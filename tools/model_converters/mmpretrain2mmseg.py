"""Convert an mmpretrain ``VisionTransformer`` checkpoint to mmseg (and DToP) backbone keys.

mmpretrain 1.x ViT keys (``backbone.`` prefix in classifier / self-supervised
checkpoints, none in bare backbone state dicts) map as::

    backbone.cls_token / pos_embed           -> cls_token / pos_embed (cls slot kept or added)
    backbone.patch_embed.projection.*        -> patch_embed.projection.*
    backbone.pre_norm.*                      -> ln_pre.*     (CLIP-style; needs pre_norm=True)
    backbone.layers.i.ln1.*                  -> layers.i.ln1.*
    backbone.layers.i.attn.qkv.*             -> layers.i.attn.attn.in_proj_*
    backbone.layers.i.attn.proj.*            -> layers.i.attn.attn.out_proj.*
    backbone.layers.i.ln2.*                  -> layers.i.ln2.*
    backbone.layers.i.ffn.layers.0.0.*       -> layers.i.ffn.layers.0.0.*
    backbone.layers.i.ffn.layers.1.*         -> layers.i.ffn.layers.1.*
    backbone.ln1.* (final norm), backbone.ln2.* (avg_featmap norm), head.*, neck.*, ...
                                             -> dropped (reported)

Usage::

    python tools/model_converters/mmpretrain2mmseg.py SRC DST [--keep-final-norm]
"""
import os.path as osp
import sys
from collections import OrderedDict
from typing import List, Mapping, Optional, Tuple

import torch

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from vit2mmseg import (ConversionError, StateDict, _as_tensor,  # noqa: E402
                       convert_and_save, convert_cls_and_pos_embed, convert_layers,
                       convert_pre_norm, converter_main, converter_parser,
                       load_checkpoint_file, unwrap_state_dict)

_LAYER_MAP = {
    'ln1.weight': 'ln1.weight',
    'ln1.bias': 'ln1.bias',
    'attn.qkv.weight': 'attn.attn.in_proj_weight',
    'attn.qkv.bias': 'attn.attn.in_proj_bias',
    'attn.proj.weight': 'attn.attn.out_proj.weight',
    'attn.proj.bias': 'attn.attn.out_proj.bias',
    'ln2.weight': 'ln2.weight',
    'ln2.bias': 'ln2.bias',
    'ffn.layers.0.0.weight': 'ffn.layers.0.0.weight',
    'ffn.layers.0.0.bias': 'ffn.layers.0.0.bias',
    'ffn.layers.1.weight': 'ffn.layers.1.weight',
    'ffn.layers.1.bias': 'ffn.layers.1.bias',
}

_UNSUPPORTED = {
    '.gamma1.': 'LayerScale (layer_scale_init_value > 0)',
    '.gamma2.': 'LayerScale (layer_scale_init_value > 0)',
    'ffn.w12.': "a SwiGLU FFN (ffn_type='swiglu_fused')",
    'patch_embed.norm.': 'a normalised patch embedding (patch_cfg norm_cfg)',
    'attn.q_bias': 'BEiT-style split q/v biases (not a VisionTransformer)',
    'rel_pos_bias': 'relative position bias (BEiT); not a VisionTransformer',
}


def _backbone_keys(sd: Mapping) -> Tuple[dict, List[str], str]:
    """Split a full mmpretrain state dict into backbone params and the rest.

    Returns:
        tuple: backbone params (prefix removed), the other keys, the prefix.
    """
    if any(k.startswith('backbone.') for k in sd):
        bb = {k[len('backbone.'):]: v for k, v in sd.items() if k.startswith('backbone.')}
        rest = [k for k in sd if not k.startswith('backbone.')]
        return bb, rest, 'backbone.'
    return dict(sd), [], ''


def convert_mmpretrain_vit(state_dict: Mapping, keep_final_norm: bool = False
                           ) -> Tuple[StateDict, List[str], List[str]]:
    """Convert an mmpretrain ``VisionTransformer`` state dict to mmseg backbone keys.

    Args:
        state_dict (Mapping): mmpretrain-layout ``{name: tensor}`` (full model with
            ``backbone.`` prefix, or a bare backbone).
        keep_final_norm (bool): write mmpretrain's final norm (``ln1``) as mmseg's
            ``ln1`` (for ``final_norm=True`` models) instead of dropping it.

    Returns:
        tuple: ``(converted, dropped, notes)`` as in ``vit2mmseg.convert_timm_vit``.
    """
    sd, dropped, prefix = _backbone_keys({k: _as_tensor(v) for k, v in state_dict.items()})
    if 'patch_embed.projection.weight' not in sd or 'pos_embed' not in sd:
        hint = (' It looks like a timm checkpoint: use tools/model_converters/vit2mmseg.py.'
                if 'patch_embed.proj.weight' in sd else '')
        raise ConversionError(
            'not an mmpretrain VisionTransformer state dict: "[backbone.]patch_embed.'
            f'projection.weight" or "[backbone.]pos_embed" missing (first keys: '
            f'{list(state_dict)[:6]}).{hint}')
    if any(k.startswith('layers.') and '.attn.attn.' in k for k in sd):
        raise ConversionError('the checkpoint already has mmseg keys (layers.N.attn.attn.*); '
                              'no conversion needed.')
    for bad, why in _UNSUPPORTED.items():
        hits = [k for k in sd if bad in k or k.startswith(bad.lstrip('.'))]
        if hits:
            raise ConversionError(f'key "{hits[0]}" means the source ViT uses {why}, which '
                                  f"mmseg's VisionTransformer cannot represent.")

    out: StateDict = OrderedDict()
    notes: List[str] = []
    done = set()
    embed_dims = sd['patch_embed.projection.weight'].shape[0]
    convert_cls_and_pos_embed(sd, out, notes, embed_dims,
                              'no cls_token in the source (with_cls_token=False): wrote '
                              'zeros (DToP never uses it)')
    out['patch_embed.projection.weight'] = sd['patch_embed.projection.weight']
    if 'patch_embed.projection.bias' in sd:
        out['patch_embed.projection.bias'] = sd['patch_embed.projection.bias']
    else:
        out['patch_embed.projection.bias'] = torch.zeros(embed_dims)
        notes.append('patch embedding had no bias (pre_norm=True models): wrote zeros')
    done.update(['cls_token', 'pos_embed', 'patch_embed.projection.weight',
                 'patch_embed.projection.bias'])
    convert_pre_norm(sd, out, done, notes, 'pre_norm')
    convert_layers(sd, out, done, notes, _LAYER_MAP, 'layers', embed_dims, 'mmpretrain',
                   zero_filled=('attn.qkv.bias', 'attn.proj.bias'))

    for k in sd:
        if k in done:
            continue
        if k in ('ln1.weight', 'ln1.bias') and keep_final_norm:
            out[k] = sd[k]
        elif k.startswith(('ln1.', 'ln2.')):
            dropped.append(prefix + k)
        else:
            raise ConversionError(f'unexpected backbone key "{k}" (not an mmpretrain '
                                  'VisionTransformer?)')
    return out, dropped, notes


def convert_file(src: str, dst: Optional[str] = None, keep_final_norm: bool = False,
                 trust: bool = False) -> Tuple[StateDict, List[str], List[str]]:
    """Convert an mmpretrain checkpoint file and optionally save it.

    Args:
        src (str): source checkpoint (``{'state_dict': ...}`` or bare).
        dst (str, optional): where to save the converted state dict.
        keep_final_norm (bool): see :func:`convert_mmpretrain_vit`.
        trust (bool): ``torch.load(weights_only=False)``; only for trusted files.

    Returns:
        tuple: as :func:`convert_mmpretrain_vit`.
    """
    sd = unwrap_state_dict(load_checkpoint_file(src, trust=trust))
    return convert_and_save(convert_mmpretrain_vit, sd, dst, keep_final_norm)


def parse_args(argv=None):
    return converter_parser(
        'Convert an mmpretrain VisionTransformer checkpoint to mmseg/DToP backbone keys.',
        'mmpretrain checkpoint (.pth)',
        'torch.load(weights_only=False): needed for checkpoints that pickle more than '
        'tensors (e.g. numpy objects in meta); runs code from the file, so only for '
        'trusted files').parse_args(argv)


def main(argv=None) -> None:
    converter_main(parse_args(argv), convert_file)


if __name__ == '__main__':
    main()
