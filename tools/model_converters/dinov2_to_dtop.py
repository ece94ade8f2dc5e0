"""Convert a transformers or timm DINOv2 checkpoint to ``DToPDinov2`` weights.

Sources understood (``--source auto`` tells them apart by their keys):

* transformers ``Dinov2Model`` / ``Dinov2WithRegistersModel`` (also inside a
  ``*ForImageClassification``): a ``save_pretrained`` folder (``model.safetensors``,
  sharded ``model.safetensors.index.json`` or ``pytorch_model.bin``) or one file;
* timm ``vit_*_patch14_dinov2`` / ``vit_*_patch14_reg4_dinov2`` (and the original
  DINOv2 layout): ``.pth``, ``.bin`` or ``.safetensors``, bare or wrapped in
  ``{'state_dict' | 'model' | 'teacher': ...}``.

Torch files are read by the safe loader (nothing pickled in them runs;
``--trust-checkpoint`` for files that need full unpickling), NaN/Inf weights are
refused. The output ``{'state_dict': ..., 'meta': {'arch': ...}}`` loads with
``torch.load(weights_only=True)`` and is meant for
``backbone=dict(type='DToPDinov2', ..., init_cfg=dict(type='Pretrained',
checkpoint=DST))``; the backbone config implied by the weights is printed.
``--patch-size 16`` resamples the patch embedding (FlexiViT resampling of timm,
needs ``pip install timm``), as EoMT does with DINOv2-L/14.

Examples::

    python tools/model_converters/dinov2_to_dtop.py \\
        ~/hf/dinov2-with-registers-large dinov2_reg4_vit-l14.pth
    python tools/model_converters/dinov2_to_dtop.py \\
        vit_large_patch14_reg4_dinov2.safetensors dinov2_reg4_vit-l16.pth --patch-size 16
"""
import os
import os.path as osp
import sys
from typing import Dict, List, Optional

ROOT = osp.abspath(osp.join(osp.dirname(__file__), '..', '..'))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

def parse_args(argv: Optional[List[str]] = None):
    from dtop.utils.cli import add_trust_checkpoint_arg, tool_parser
    parser = tool_parser('Convert a transformers / timm DINOv2 checkpoint to DToPDinov2 '
                         'backbone weights.', __doc__)
    parser.add_argument('src', help='checkpoint file (.pth/.bin/.safetensors) or a '
                        'transformers save_pretrained folder')
    parser.add_argument('dst', help='output .pth ({"state_dict", "meta"})')
    parser.add_argument('--source', choices=('auto', 'hf', 'timm'), default='auto',
                        help='layout of SRC (default: told by its keys)')
    parser.add_argument('--patch-size', type=int, default=None,
                        help='resample the patch embedding to this patch size (needs timm)')
    add_trust_checkpoint_arg(parser)
    return parser.parse_args(argv)


def detect_source(state_dict: Dict) -> str:
    """``'hf'`` or ``'timm'`` from the keys of a state dict."""
    from dtop.models.converters import ConversionError
    if any(k.endswith('embeddings.patch_embeddings.projection.weight') for k in state_dict):
        return 'hf'
    if 'layers.0.attn.qkv.weight' in state_dict:
        raise ConversionError('the checkpoint is in DToPDinov2 layout already (layers.N.*): '
                              'use it as init_cfg=dict(type=\'Pretrained\', checkpoint=...)')
    if any(k.endswith('patch_embed.proj.weight') for k in state_dict):
        return 'timm'
    raise ConversionError(f'not a transformers or timm DINOv2 checkpoint (first keys: '
                          f'{list(state_dict)[:5]})')


def convert(state_dict: Dict, source: str = 'auto', patch_size: Optional[int] = None):
    """Convert a loaded state dict.

    Returns:
        tuple: ``(checkpoint, dropped)``: ``{'state_dict', 'meta'}`` and the source
        keys left out.
    """
    from dtop.models.converters import (convert_hf_dinov2, convert_timm_dinov2,
                                        describe_dinov2, resample_patch_embed)
    source = detect_source(state_dict) if source == 'auto' else source
    dropped: List[str] = []
    if source == 'hf':
        out, pos_embed_cls = convert_hf_dinov2(state_dict, dropped), True
    else:
        out, pos_embed_cls = convert_timm_dinov2(state_dict, dropped)
    meta = dict(converter='tools/model_converters/dinov2_to_dtop.py', source=source)
    old = out['patch_embed.proj.weight'].shape[-1]
    if patch_size is not None and patch_size != old:
        if patch_size < 1:
            raise ValueError(f'--patch-size must be positive, got {patch_size}')
        out['patch_embed.proj.weight'] = resample_patch_embed(out['patch_embed.proj.weight'],
                                                              patch_size)
        meta['resampled_patch_size'] = [int(old), int(patch_size)]
    meta['arch'] = describe_dinov2(out, pos_embed_cls)
    state = {k: v.detach().contiguous() for k, v in out.items()}
    return dict(state_dict=state, meta=meta), dropped


def backbone_config(arch: dict) -> str:
    """The ``DToPDinov2`` arguments the converted weights need (``num_heads`` is not
    in the weights: DINOv2 S/B/L/g use 6/12/16/24)."""
    from dtop.models.dinov2_layers import swiglu_hidden
    C, hidden = arch['embed_dims'], arch['ffn_hidden']
    if arch['ffn_type'] == 'mlp':
        ratio = hidden / C
    else:
        ratio = 4.0 if swiglu_hidden(C, 4.0) == hidden else f'? (SwiGLU hidden {hidden})'
    img = [g * arch['patch_size'] for g in arch['pos_grid']]
    return (f"dict(type='DToPDinov2', img_size={tuple(img)}, "
            f"patch_size={arch['patch_size']}, embed_dims={C}, "
            f"num_layers={arch['num_layers']}, num_heads=?, mlp_ratio={ratio}, "
            f"ffn_type='{arch['ffn_type']}', "
            f"layer_scale_init={1.0 if arch['layer_scale'] else None}, "
            f"qkv_bias={arch['qkv_bias']}, "
            f"num_register_tokens={arch['num_register_tokens']}, "
            f"pos_embed_cls={arch['pos_embed_cls']})")


def main(argv: Optional[List[str]] = None) -> str:
    import torch

    from dtop.models.converters.source import read_source
    args = parse_args(argv)
    sd = read_source(args.src, args.trust_checkpoint)
    ckpt, dropped = convert(sd, args.source, args.patch_size)
    parent = osp.dirname(osp.abspath(args.dst))
    os.makedirs(parent, exist_ok=True)
    tmp = args.dst + '.tmp'
    torch.save(ckpt, tmp)
    os.replace(tmp, args.dst)
    meta, arch = ckpt['meta'], ckpt['meta']['arch']
    print(f"converted {len(ckpt['state_dict'])} tensors ({meta['source']} layout): "
          f"{arch['num_layers']} layers, embed_dims {arch['embed_dims']}, "
          f"{arch['num_register_tokens']} registers, {arch['ffn_type']} FFN, "
          f"pos_embed grid {arch['pos_grid'][0]}x{arch['pos_grid'][1]}"
          f"{' + cls' if arch['pos_embed_cls'] else ' (no cls position)'}")
    if 'resampled_patch_size' in meta:
        print('resampled the patch embedding from patch {} to {}'.format(
            *meta['resampled_patch_size']))
    if dropped:
        print(f'dropped {len(dropped)} keys: {", ".join(dropped[:10])}'
              f'{" ..." if len(dropped) > 10 else ""}')
    print(f'backbone: {backbone_config(arch)}')
    print(f'saved to {args.dst}')
    return args.dst


if __name__ == '__main__':
    from dtop.utils.errors import run_cli
    run_cli(main)
