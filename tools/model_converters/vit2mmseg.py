"""Convert a timm / AugReg ViT checkpoint to mmseg (and DToP) backbone keys.

Sources understood:

* timm ``VisionTransformer`` state dicts (``.pth``, ``.pt``, ``.bin``,
  ``.safetensors``), bare or wrapped in ``{'model': ...}``, ``{'state_dict': ...}``
  or ``{'state_dict_ema': ...}``, optionally with a ``module.`` prefix;
* Google AugReg / ``vision_transformer`` jax checkpoints (``.npz``) with per-block
  (``Transformer/encoderblock_N/...``) or scanned (``Transformer/encoderblock/...``)
  parameters, with or without the ``opt/target/`` / ``params/`` prefix.

The result uses the key layout of mmseg 1.x ``VisionTransformer`` (which
``DToPVisionTransformer`` shares), i.e. the layout of mmseg's Segmenter
``vit_{base,large}_p16_384_*.pth`` checkpoints::

    cls_token                          (1, 1, C)
    pos_embed                          (1, 1 + N, C)   cls slot kept
    patch_embed.projection.{weight,bias}
    layers.i.ln1.{weight,bias}
    layers.i.attn.attn.in_proj_{weight,bias}           (3C, C) / (3C,)
    layers.i.attn.attn.out_proj.{weight,bias}
    layers.i.ln2.{weight,bias}
    layers.i.ffn.layers.0.0.{weight,bias}               fc1
    layers.i.ffn.layers.1.{weight,bias}                 fc2

The classifier (``head``, ``pre_logits``, ``fc_norm``, attention-pool heads) and
the final ``norm`` are dropped (DToP builds the ViT with ``final_norm=False``);
``--keep-final-norm`` keeps the final norm as mmseg's ``ln1.*`` instead. The
position embedding keeps its pretraining grid: mmseg's ``VisionTransformer``
resizes it to the crop grid when it loads the file through ``pretrained=`` /
``init_cfg=dict(type='Pretrained', ...)``.

Usage::

    python tools/model_converters/vit2mmseg.py SRC DST [--keep-final-norm]
"""
import argparse
import math
import os
import os.path as osp
import re
from collections import OrderedDict
from typing import Dict, List, Mapping, Optional, Tuple

import numpy as np
import torch

StateDict = Dict[str, torch.Tensor]

# Keys (or key prefixes) of the classification parts, dropped without error.
_TIMM_DROP_PREFIXES = ('head.', 'head_dist.', 'pre_logits.', 'fc_norm.', 'attn_pool.')
_TIMM_FINAL_NORM = ('norm.weight', 'norm.bias')

_TIMM_BLOCK_MAP = {
    'norm1.weight': 'ln1.weight',
    'norm1.bias': 'ln1.bias',
    'attn.qkv.weight': 'attn.attn.in_proj_weight',
    'attn.qkv.bias': 'attn.attn.in_proj_bias',
    'attn.proj.weight': 'attn.attn.out_proj.weight',
    'attn.proj.bias': 'attn.attn.out_proj.bias',
    'norm2.weight': 'ln2.weight',
    'norm2.bias': 'ln2.bias',
    'mlp.fc1.weight': 'ffn.layers.0.0.weight',
    'mlp.fc1.bias': 'ffn.layers.0.0.bias',
    'mlp.fc2.weight': 'ffn.layers.1.weight',
    'mlp.fc2.bias': 'ffn.layers.1.bias',
}

# timm features that mmseg's VisionTransformer cannot represent.
_TIMM_UNSUPPORTED = {
    'dist_token': 'a distillation token (DeiT-distilled); use a non-distilled ViT',
    'reg_token': 'register tokens; use a ViT without registers',
    'ls1.': 'LayerScale (ls1/ls2); use a ViT without layer scale',
    'ls2.': 'LayerScale (ls1/ls2); use a ViT without layer scale',
    'attn.q_norm.': 'QK-norm; use a ViT without qk_norm',
    'attn.k_norm.': 'QK-norm; use a ViT without qk_norm',
    'attn.norm.': 'a scaled attention norm (scale_attn_norm); not supported',
    'mlp.norm.': 'a scaled MLP norm (scale_mlp_norm); not supported',
    'attn.q_bias': 'BEiT-style split q/v biases; not supported',
    'patch_embed.norm.': 'a normalised patch embedding; mmseg needs patch_norm=True '
                         '(DToP configs use False)',
    'patch_embed.backbone.': 'a hybrid (ResNet) stem; not supported',
}

_WRAPPER_KEYS = ('state_dict', 'model', 'state_dict_ema', 'model_ema', 'module')


class ConversionError(ValueError):
    """Raised when a checkpoint cannot be converted (message names key and fix)."""


# ----------------------------------------------------------------------------- io
def load_checkpoint_file(path: str, trust: bool = False) -> Mapping:
    """Read a checkpoint file into a mapping (tensors for torch files, arrays for npz).

    Args:
        path (str): ``.pth/.pt/.bin/.ckpt``, ``.safetensors`` or ``.npz`` file.
        trust (bool): load torch files with ``weights_only=False`` (runs any code
            pickled in the file; only for files you trust). Default False.

    Returns:
        Mapping: the raw content (possibly a wrapper dict).
    """
    if not osp.isfile(path):
        raise FileNotFoundError(f'checkpoint not found: {path}')
    if path.endswith('.npz'):
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    if path.endswith('.safetensors'):
        try:
            from safetensors.torch import load_file
        except ImportError as e:  # pragma: no cover - depends on the env
            raise ConversionError(
                f'{path} is a .safetensors file but the `safetensors` package is not '
                f'installed; `pip install safetensors` or pass a .pth/.bin file.') from e
        return load_file(path, device='cpu')
    try:
        return torch.load(path, map_location='cpu', weights_only=not trust)
    except Exception as e:  # pickle errors differ across torch versions
        if trust:
            raise
        raise ConversionError(
            f'could not load {path} with torch.load(weights_only=True) ({type(e).__name__}). '
            f'If the file holds more than '
            f'tensors (optimizer state, argparse Namespace, ...) and you trust it, rerun '
            f'with --trust-checkpoint.') from e


def unwrap_state_dict(ckpt: Mapping) -> StateDict:
    """Return the parameter dict inside a training checkpoint.

    Args:
        ckpt (Mapping): raw checkpoint content.

    Returns:
        dict: name -> tensor/array, with a common ``module.`` prefix removed.
    """
    if not isinstance(ckpt, Mapping):
        raise ConversionError(f'expected a dict-like checkpoint, got {type(ckpt).__name__}')
    sd = ckpt
    for key in _WRAPPER_KEYS:
        if key in ckpt and isinstance(ckpt[key], Mapping):
            sd = ckpt[key]
            break
    sd = {k: v for k, v in sd.items() if isinstance(v, (torch.Tensor, np.ndarray))}
    if not sd:
        raise ConversionError('the checkpoint holds no tensors (looked at the top level and '
                              f'under {list(_WRAPPER_KEYS)})')
    if all(k.startswith('module.') for k in sd):
        sd = {k[len('module.'):]: v for k, v in sd.items()}
    return sd


def save_state_dict(state_dict: StateDict, path: str) -> None:
    """Save a bare ``{name: tensor}`` dict (loadable with ``weights_only=True``).

    Args:
        state_dict (dict): converted parameters.
        path (str): destination file; parent folders are created.
    """
    parent = osp.dirname(osp.abspath(path))
    os.makedirs(parent, exist_ok=True)
    torch.save(OrderedDict((k, v.detach().clone().contiguous()) for k, v in state_dict.items()),
               path)


def _as_tensor(x) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    return torch.from_numpy(np.ascontiguousarray(x))


def _is_square(n: int) -> bool:
    r = int(math.isqrt(n))
    return r * r == n


def pos_embed_with_cls_slot(pos_embed: torch.Tensor,
                            has_cls_token: bool) -> Tuple[torch.Tensor, bool]:
    """Make sure the position embedding has a leading cls slot ``(1, 1 + N, C)``.

    A position embedding without cls slot (timm ``class_token=False`` or
    ``no_embed_class=True`` models) gets a zero slot. DToP drops the cls token
    before layer 0, so that slot never reaches the encoder.

    Args:
        pos_embed (Tensor): ``(1, L, C)``.
        has_cls_token (bool): whether the source model has a cls token.

    Returns:
        tuple: ``(1, 1 + N, C)`` tensor and whether a slot was added.
    """
    if pos_embed.dim() == 2:
        pos_embed = pos_embed[None]
    if pos_embed.dim() != 3 or pos_embed.shape[0] != 1:
        raise ConversionError(f'pos_embed must be (1, L, C), got {tuple(pos_embed.shape)}')
    length = pos_embed.shape[1]
    if _is_square(length) and length > 1:
        has_slot = False          # an N = h*w grid only
    elif _is_square(length - 1):
        has_slot = True
    else:                          # non-square grid: trust the cls token's presence
        has_slot = has_cls_token
    if has_slot:
        return pos_embed, False
    zero = pos_embed.new_zeros(1, 1, pos_embed.shape[2])
    return torch.cat([zero, pos_embed], dim=1), True


# ------------------------------------------------------- steps shared with mmpretrain2mmseg
#: attention biases a source may lack: zeros of (this many) x embed_dims, and the note
_ZERO_FILLED_BIASES = {
    'attn.qkv.bias': (3, 'qkv had no bias (qkv_bias=False): wrote zeros'),
    'attn.proj.bias': (1, 'attention proj had no bias (proj_bias=False): wrote zeros'),
}


def convert_cls_and_pos_embed(sd: Mapping, out: StateDict, notes: List[str],
                              embed_dims: int, no_cls_note: str) -> None:
    """Write ``cls_token`` and ``pos_embed`` (with a cls slot) to ``out``.

    A source without cls token gets a zero one (noted with ``no_cls_note``); a
    position embedding without cls slot gets a zero slot
    (:func:`pos_embed_with_cls_slot`, noted).
    """
    has_cls = 'cls_token' in sd
    out['cls_token'] = sd['cls_token'] if has_cls else torch.zeros(1, 1, embed_dims)
    if not has_cls:
        notes.append(no_cls_note)
    pos, added = pos_embed_with_cls_slot(sd['pos_embed'], has_cls)
    if added:
        notes.append('pos_embed had no cls slot: prepended a zero slot')
    out['pos_embed'] = pos


def convert_pre_norm(sd: Mapping, out: StateDict, done: set, notes: List[str],
                     name: str) -> None:
    """Keep the source's norm before the first layer (``name``: timm's ``norm_pre``,
    mmpretrain's ``pre_norm``) as mmseg's ``ln_pre``, noted."""
    if f'{name}.weight' in sd:
        out['ln_pre.weight'] = sd[f'{name}.weight']
        out['ln_pre.bias'] = sd[f'{name}.bias']
        done.update([f'{name}.weight', f'{name}.bias'])
        notes.append(f'source has {name}: kept as ln_pre (build the backbone with '
                     'pre_norm=True)')


def convert_layers(sd: Mapping, out: StateDict, done: set, notes: List[str],
                   layer_map: Mapping[str, str], prefix: str, embed_dims: int, source: str,
                   zero_filled: Tuple[str, ...] = ('attn.qkv.bias', )) -> None:
    """Map every transformer layer ``{prefix}.i.<src>`` to mmseg's ``layers.i.<dst>``.

    Args:
        layer_map (Mapping): ``{src: dst}`` key suffixes of one layer.
        prefix (str): the source's layer prefix (``'blocks'``, ``'layers'``).
        source (str): the source's name in error messages (``'timm'``, ...).
        zero_filled (tuple): biases of :data:`_ZERO_FILLED_BIASES` written as zeros
            (one note per kind) when missing; any other missing key is an error.

    Raises:
        ConversionError: layers not numbered 0..L-1, or a missing key.
    """
    ids = sorted({int(m.group(1)) for k in sd for m in [re.match(rf'{prefix}\.(\d+)\.', k)]
                  if m})
    if not ids or ids != list(range(len(ids))):
        raise ConversionError(f'transformer {prefix} must be {prefix}.0..{prefix}.L-1, '
                              f'got {ids}')
    filled = set()
    for i in ids:
        for src, dst in layer_map.items():
            sk, dk = f'{prefix}.{i}.{src}', f'layers.{i}.{dst}'
            if sk in sd:
                out[dk] = sd[sk]
                done.add(sk)
            elif src in zero_filled:
                out[dk] = torch.zeros(_ZERO_FILLED_BIASES[src][0] * embed_dims)
                filled.add(src)
            else:
                raise ConversionError(f'missing "{sk}" in the {source} state dict')
    notes += [note for src, (_, note) in _ZERO_FILLED_BIASES.items() if src in filled]


def convert_and_save(convert, state_dict: Mapping, dst: Optional[str],
                     keep_final_norm: bool) -> Tuple[StateDict, List[str], List[str]]:
    """``convert(state_dict, keep_final_norm=...)``, saved to ``dst`` unless None."""
    out, dropped, notes = convert(state_dict, keep_final_norm=keep_final_norm)
    if dst is not None:
        save_state_dict(out, dst)
    return out, dropped, notes


# ----------------------------------------------------------------------------- npz
def _npz_prefix(w: Mapping) -> str:
    for prefix in ('', 'opt/target/', 'params/'):
        if f'{prefix}embedding/kernel' in w:
            return prefix
    raise ConversionError(
        'not a ViT jax checkpoint: no "embedding/kernel" (nor "opt/target/embedding/kernel", '
        '"params/embedding/kernel") array in the .npz. Hybrid (ResNet) and SigLIP/CLIP '
        'towers are not supported.')


def jax_npz_to_timm(w: Mapping) -> StateDict:
    """Convert AugReg / big_vision jax arrays to timm ``VisionTransformer`` keys.

    Args:
        w (Mapping): name -> numpy array, as read from the ``.npz``.

    Returns:
        dict: timm-layout state dict (``cls_token``, ``pos_embed``, ``blocks.N...``,
        ``norm``, ``head``).
    """
    p = _npz_prefix(w)
    used = set()

    def get(name: str, idx: Optional[int] = None) -> np.ndarray:
        key = p + name
        if key not in w:
            raise ConversionError(f'the .npz lacks "{key}" (a ViT jax checkpoint has it)')
        used.add(key)
        a = np.asarray(w[key])
        return a[idx] if idx is not None else a

    def t(a: np.ndarray) -> torch.Tensor:
        """jax kernel -> torch weight layout."""
        if a.ndim == 4:      # (kh, kw, in, out) -> (out, in, kh, kw)
            a = a.transpose(3, 2, 0, 1)
        elif a.ndim == 3:    # (H, hd, C) -> (C, H, hd)
            a = a.transpose(2, 0, 1)
        elif a.ndim == 2:
            a = a.T
        return torch.from_numpy(np.ascontiguousarray(a)).float()

    out: StateDict = OrderedDict()
    out['patch_embed.proj.weight'] = t(get('embedding/kernel'))
    out['patch_embed.proj.bias'] = t(get('embedding/bias'))
    if p + 'cls' in w:
        out['cls_token'] = t(get('cls')).reshape(1, 1, -1)
    out['pos_embed'] = torch.from_numpy(
        np.ascontiguousarray(get('Transformer/posembed_input/pos_embedding'))).float()

    scanned = p + 'Transformer/encoderblock/LayerNorm_0/scale' in w
    if scanned:
        num_layers = np.asarray(w[p + 'Transformer/encoderblock/LayerNorm_0/scale']).shape[0]
    else:
        ids = {int(m.group(1)) for k in w
               for m in [re.match(re.escape(p) + r'Transformer/encoderblock_(\d+)/', k)] if m}
        num_layers = len(ids)
        if ids != set(range(num_layers)):
            raise ConversionError(f'encoder blocks in the .npz are not 0..L-1: {sorted(ids)}')
    if num_layers == 0:
        raise ConversionError('no Transformer/encoderblock_N arrays in the .npz')
    # Sub-module numbering: AugReg (1, 3, 2), big_vision (0, 0, 1).
    bv = (p + 'Transformer/encoderblock/MultiHeadDotProductAttention_0/query/kernel' in w
          or p + 'Transformer/encoderblock_0/MultiHeadDotProductAttention_0/query/kernel' in w)
    mha, mlp, ln2 = (0, 0, 1) if bv else (1, 3, 2)

    for i in range(num_layers):
        if scanned:
            bp, idx = 'Transformer/encoderblock/', i
        else:
            bp, idx = f'Transformer/encoderblock_{i}/', None
        ap = f'{bp}MultiHeadDotProductAttention_{mha}/'
        tp = f'blocks.{i}.'
        out[tp + 'norm1.weight'] = t(get(bp + 'LayerNorm_0/scale', idx))
        out[tp + 'norm1.bias'] = t(get(bp + 'LayerNorm_0/bias', idx))
        # query/key/value kernels (C, H, hd) -> (H*hd, C) rows of timm's qkv weight.
        qkv_w = [torch.from_numpy(np.ascontiguousarray(k.reshape(k.shape[0], -1).T))
                 for k in (get(f'{ap}{n}/kernel', idx) for n in ('query', 'key', 'value'))]
        qkv_b = [torch.from_numpy(np.ascontiguousarray(get(f'{ap}{n}/bias', idx).reshape(-1)))
                 for n in ('query', 'key', 'value')]
        out[tp + 'attn.qkv.weight'] = torch.cat(qkv_w).float()
        out[tp + 'attn.qkv.bias'] = torch.cat(qkv_b).float()
        out[tp + 'attn.proj.weight'] = t(get(ap + 'out/kernel', idx)).flatten(1)
        out[tp + 'attn.proj.bias'] = t(get(ap + 'out/bias', idx))
        out[tp + 'norm2.weight'] = t(get(f'{bp}LayerNorm_{ln2}/scale', idx))
        out[tp + 'norm2.bias'] = t(get(f'{bp}LayerNorm_{ln2}/bias', idx))
        for r in range(2):
            out[tp + f'mlp.fc{r + 1}.weight'] = t(get(f'{bp}MlpBlock_{mlp}/Dense_{r}/kernel', idx))
            out[tp + f'mlp.fc{r + 1}.bias'] = t(get(f'{bp}MlpBlock_{mlp}/Dense_{r}/bias', idx))

    if p + 'Transformer/encoder_norm/scale' in w:
        out['norm.weight'] = t(get('Transformer/encoder_norm/scale'))
        out['norm.bias'] = t(get('Transformer/encoder_norm/bias'))
    # Classification parts: mapped so that they are reported as dropped.
    for name, dst in (('head', 'head'), ('pre_logits', 'pre_logits'),
                      ('MAPHead_0', 'attn_pool')):
        for k in list(w):
            if k.startswith(p + name + '/'):
                used.add(k)
                out[f'{dst}.{k[len(p) + len(name) + 1:].replace("/", ".")}'] = _as_tensor(w[k])
    leftover = sorted(k for k in w if k not in used)
    if leftover:
        raise ConversionError(f'.npz arrays not understood (not a plain ViT?): {leftover[:10]}'
                              f'{" ..." if len(leftover) > 10 else ""}')
    return out


# ----------------------------------------------------------------------------- timm
def convert_timm_vit(state_dict: Mapping, keep_final_norm: bool = False
                     ) -> Tuple[StateDict, List[str], List[str]]:
    """Convert a timm ``VisionTransformer`` state dict to mmseg backbone keys.

    Args:
        state_dict (Mapping): timm-layout ``{name: tensor}``.
        keep_final_norm (bool): write the final ``norm`` as mmseg's ``ln1``
            (for ``final_norm=True`` models) instead of dropping it.

    Returns:
        tuple: ``(converted, dropped, notes)``: the mmseg-layout state dict, the
        source keys left out, and human-readable notes (e.g. zero-filled biases).
    """
    sd = {k: _as_tensor(v) for k, v in state_dict.items()}
    for bad, why in _TIMM_UNSUPPORTED.items():
        hits = [k for k in sd if k == bad or k.startswith(bad) or f'.{bad}' in k]
        if hits:
            raise ConversionError(f'key "{hits[0]}" means the source ViT has {why}.')
    if 'patch_embed.proj.weight' not in sd or 'pos_embed' not in sd:
        raise ConversionError(
            'not a timm VisionTransformer state dict: "patch_embed.proj.weight" or '
            f'"pos_embed" missing (first keys: {list(sd)[:6]}). For mmpretrain checkpoints use '
            'tools/model_converters/mmpretrain2mmseg.py.')

    out: StateDict = OrderedDict()
    dropped: List[str] = []
    notes: List[str] = []
    done = set()
    embed_dims = sd['patch_embed.proj.weight'].shape[0]

    convert_cls_and_pos_embed(sd, out, notes, embed_dims,
                              'no cls_token in the source: wrote zeros (DToP never uses it)')
    out['patch_embed.projection.weight'] = sd['patch_embed.proj.weight']
    out['patch_embed.projection.bias'] = sd.get('patch_embed.proj.bias',
                                                torch.zeros(embed_dims))
    if 'patch_embed.proj.bias' not in sd:
        notes.append('patch embedding had no bias: wrote zeros')
    done.update(['cls_token', 'pos_embed', 'patch_embed.proj.weight', 'patch_embed.proj.bias'])
    convert_pre_norm(sd, out, done, notes, 'norm_pre')
    convert_layers(sd, out, done, notes, _TIMM_BLOCK_MAP, 'blocks', embed_dims, 'timm')

    for k in sd:
        if k in done:
            continue
        if k in _TIMM_FINAL_NORM:
            if keep_final_norm:
                out['ln1.' + k.split('.', 1)[1]] = sd[k]
            else:
                dropped.append(k)
        elif k.startswith(_TIMM_DROP_PREFIXES):
            dropped.append(k)
        else:
            raise ConversionError(f'unexpected key "{k}" in the timm state dict (not a plain '
                                  f'ViT?)')
    return out, dropped, notes


def convert_file(src: str, dst: Optional[str] = None, keep_final_norm: bool = False,
                 trust: bool = False) -> Tuple[StateDict, List[str], List[str]]:
    """Convert a timm/AugReg checkpoint file (``.npz`` or torch) and optionally save it.

    Args:
        src (str): source checkpoint path.
        dst (str, optional): where to save the converted state dict.
        keep_final_norm (bool): see :func:`convert_timm_vit`.
        trust (bool): see :func:`load_checkpoint_file`.

    Returns:
        tuple: as :func:`convert_timm_vit`.
    """
    raw = load_checkpoint_file(src, trust=trust)
    sd = jax_npz_to_timm(raw) if src.endswith('.npz') else unwrap_state_dict(raw)
    return convert_and_save(convert_timm_vit, sd, dst, keep_final_norm)


def summarize(out: StateDict, dropped: List[str], notes: List[str]) -> str:
    """One readable report of a conversion."""
    layers = len({k.split('.')[1] for k in out if k.startswith('layers.')})
    pos = out['pos_embed']
    lines = [f'converted {len(out)} tensors: {layers} layers, embed_dims {pos.shape[-1]}, '
             f'pos_embed {tuple(pos.shape)}']
    if dropped:
        lines.append(f'dropped {len(dropped)} keys: {", ".join(dropped)}')
    lines += [f'note: {n}' for n in notes]
    if 'patch_embed.projection.bias' in out:
        lines.append('note: the file has patch_embed.projection.bias: build the backbone with '
                     'patch_bias=True (mmseg >= 1.1 defaults to False, and the non-strict '
                     'pretrained load would drop the bias silently)')
    return '\n'.join(lines)


def converter_parser(description: str, src_help: str,
                     trust_help: str) -> argparse.ArgumentParser:
    """The command line of the converters: ``SRC DST [--keep-final-norm]
    [--trust-checkpoint]``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument('src', help=src_help)
    parser.add_argument('dst', help='output .pth (bare state dict)')
    parser.add_argument('--keep-final-norm', action='store_true',
                        help='keep the final norm as ln1.* (mmseg final_norm=True models)')
    parser.add_argument('--trust-checkpoint', action='store_true', help=trust_help)
    return parser


def converter_main(args: argparse.Namespace, convert_file) -> None:
    """Run ``convert_file`` on the parsed command line and print the report; a file
    that cannot be converted ends in one ``error:`` line."""
    try:
        out, dropped, notes = convert_file(args.src, args.dst, args.keep_final_norm,
                                           args.trust_checkpoint)
    except (ConversionError, FileNotFoundError) as e:
        raise SystemExit(f'error: {args.src}: {e}')
    print(summarize(out, dropped, notes))
    print(f'saved to {args.dst}')


def parse_args(argv=None):
    return converter_parser(
        'Convert a timm / AugReg (jax .npz) ViT checkpoint to mmseg/DToP backbone keys.',
        'source checkpoint (.pth/.bin/.safetensors/.npz)',
        'torch.load(weights_only=False): needed for files that pickle more than tensors; '
        'runs code from the file, so only for trusted files').parse_args(argv)


def main(argv=None) -> None:
    converter_main(parse_args(argv), convert_file)


if __name__ == '__main__':
    main()
