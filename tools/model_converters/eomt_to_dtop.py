"""Convert a transformers EoMT checkpoint (``EomtForUniversalSegmentation``) to DToP.

The ViT blocks before the queries join become ``backbone.layers.*`` of
``DToPDinov2``, the query blocks, norm, query embedding, upscaling, mask MLP and class
head ``decode_head.*`` of ``EoMTHead`` (docs/eomt.md); the loss's constant
``criterion.empty_weight`` is dropped. SRC: a ``save_pretrained`` folder or one
``.safetensors`` / ``.bin`` / ``.pth`` file (torch files through the safe loader;
NaN/Inf weights refused). The output ``{'state_dict', 'meta'}`` holds no auxiliary
heads: it loads into an EoMT config's model with ``--allow-partial-load`` (test at
p0 = 1), or as the start of a BASE training of the auxiliary heads.

Examples::

    python tools/model_converters/eomt_to_dtop.py ~/hf/eomt-large-ade-512 eomt_l_ade.pth
"""
import os
import os.path as osp
import sys
from typing import List, Optional

ROOT = osp.abspath(osp.join(osp.dirname(__file__), '..', '..'))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def parse_args(argv: Optional[List[str]] = None):
    from dtop.utils.cli import add_trust_checkpoint_arg, tool_parser
    parser = tool_parser('Convert a transformers EoMT checkpoint to DToP (DToPDinov2 '
                         'backbone + EoMTHead).', __doc__)
    parser.add_argument('src', help='save_pretrained folder or checkpoint file')
    parser.add_argument('dst', help='output .pth ({"state_dict", "meta"})')
    parser.add_argument('--num-heads', type=int, default=None,
                        help='attention heads, for the printed config (not in the weights)')
    add_trust_checkpoint_arg(parser)
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> str:
    import torch
    from dtop.models.converters.eomt import convert_hf_eomt, eomt_arch
    from dtop.models.converters.source import read_source
    args = parse_args(argv)
    sd = read_source(args.src, args.trust_checkpoint)
    dropped: List[str] = []
    state = convert_hf_eomt(sd, dropped)
    arch = eomt_arch(state, args.num_heads)
    ckpt = dict(state_dict={k: v.detach().contiguous() for k, v in state.items()},
                meta=dict(converter='tools/model_converters/eomt_to_dtop.py', arch=arch))
    os.makedirs(osp.dirname(osp.abspath(args.dst)), exist_ok=True)
    tmp = args.dst + '.tmp'
    torch.save(ckpt, tmp)
    os.replace(tmp, args.dst)
    print(f"converted {len(state)} tensors: backbone {arch['num_layers']} blocks + "
          f"{arch['num_blocks']} query blocks, embed_dims {arch['embed_dims']}, "
          f"{arch['num_register_tokens']} registers, {arch['num_queries']} queries, "
          f"{arch['num_classes']} classes, patch {arch['patch_size']}")
    if dropped:
        print(f'dropped {len(dropped)} keys: {", ".join(dropped[:10])}')
    print(f'saved to {args.dst}')
    return args.dst


if __name__ == '__main__':
    from dtop.utils.errors import run_cli
    run_cli(main)
