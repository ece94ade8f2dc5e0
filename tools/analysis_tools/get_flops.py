"""Static GFLOPs of a DToP / SegViT-BASE model (dense, one crop, batch 1).

Counts with a library counter (mmengine's ``FlopAnalyzer`` by default, or fvcore)
under fvcore conventions (docs/benchmarks.md#counting-conventions) and prints, per
module: backbone, each head, "backbone + final head" (the README BASE convention) and
"backbone + all heads", next to the analytic cost model of
:mod:`dtop.evaluation.flops`.

For models whose heads exist in mmseg (SETR-naive, Segmenter) it also builds mmseg's
dense ``EncoderDecoder`` with the same backbone/head settings
(:func:`dtop.models.mmseg_dense.mmseg_dense_model_cfg`), counts it with the same
counter and prints both side by side (``--no-mmseg`` skips this).

Example::

    python tools/analysis_tools/get_flops.py \\
        configs/segvit/segvit_vit-b16_4xb4-160k_ade20k-512x512.py
    # --shape 640 640  to count another crop; --analytic  to skip the trace
"""
import argparse
import json
import os.path as osp
import sys
from typing import List, Optional

ROOT = osp.abspath(osp.join(osp.dirname(__file__), '..', '..'))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    from dtop.utils.cli import add_cfg_options_arg
    parser = argparse.ArgumentParser(description='Static GFLOPs of a DToP model')
    parser.add_argument('config', help='config file')
    parser.add_argument('--shape', type=int, nargs='+', default=None,
                        help='input crop H [W] (default: the training crop)')
    parser.add_argument('--backend', choices=['mmengine', 'fvcore'], default='mmengine',
                        help='library counter')
    parser.add_argument('--analytic', action='store_true',
                        help='print the analytic cost model only (no model trace)')
    parser.add_argument('--no-mmseg', action='store_true',
                        help='do not count mmseg\'s dense model of the same config')
    parser.add_argument('--out', help='also write the numbers to this JSON file')
    add_cfg_options_arg(parser, checked=False)
    return parser.parse_args(argv)


def load_model_cfg(config: str, cfg_options: Optional[List[str]] = None):
    """Load a config, register modules and return it (pruning disabled, no init)."""
    from mmengine.config import Config
    from mmengine.registry import init_default_scope

    import dtop  # noqa: F401  (registers the modules)
    from dtop.utils.config import parse_cfg_options
    options = parse_cfg_options(cfg_options)  # names an item without '='
    if not osp.isfile(config):
        raise FileNotFoundError(f'config file not found: {config}')
    cfg = Config.fromfile(config)
    if options:
        cfg.merge_from_dict(options)
    init_default_scope(cfg.get('default_scope', 'mmseg'))
    cfg.model.pop('pretrained', None)
    cfg.model.pop('init_cfg', None)
    if cfg.model.get('backbone', {}).get('init_cfg') is not None:
        cfg.model.backbone.init_cfg = None
    return cfg


def check_shape(shape: Optional[List[int]], patch_size=16) -> Optional[tuple]:
    """``--shape H [W]`` as ``(H, W)``; :class:`OptionError` naming a bad value.

    Each side must hold at least one patch (a smaller crop fails in the patch
    embedding's convolution).
    """
    from dtop.utils.errors import OptionError
    if shape is None:
        return None
    if len(shape) not in (1, 2):
        raise OptionError(f'--shape takes H or H W, got {len(shape)} values; e.g. '
                          '--shape 512 512.')
    least = max(patch_size) if isinstance(patch_size, (list, tuple)) else int(patch_size)
    if min(shape) < least:
        raise OptionError(f'--shape {" ".join(map(str, shape))}: each side must be at least '
                          f'the patch size {least} px; e.g. --shape 512 512.')
    return shape[0], shape[-1]


def main(argv: Optional[List[str]] = None) -> dict:
    args = parse_args(argv)
    cfg = load_model_cfg(args.config, args.cfg_options)

    from mmseg.registry import MODELS

    from dtop.evaluation.flops import (DToPCostDims, count_flops_library,
                                       dense_flops)
    shape = check_shape(args.shape, (cfg.model.get('backbone') or {}).get('patch_size', 16))
    if args.analytic:
        dims = DToPCostDims.from_config(cfg.model)
        lib = None
    else:
        model = MODELS.build(cfg.model)  # random weights; counting needs shapes only
        dims = DToPCostDims.from_model(model)
        lib = count_flops_library(model, shape, backend=args.backend)
        del model
    shape = tuple(shape or dims.crop_size)
    ana = dense_flops(dims, shape)

    S = dims.num_stages
    rows = [('backbone (incl. patch embed)', 'backbone', None)]
    for s in range(S - 1):
        rows.append((f'auxiliary_head.{s}', 'heads', s))
    rows += [('decode_head + final upsample', 'final_head', None),
             ('backbone + final head  [README BASE convention]', 'backbone_final_head',
              None),
             ('backbone + all heads', 'backbone_all_heads', None)]

    def get(d, key, idx):
        return d[key][idx] if idx is not None else d[key]

    print(f'config: {args.config}')
    print(f'input: 1x{dims.in_channels}x{shape[0]}x{shape[1]} (one crop, batch 1), '
          f'{dims.grid_tokens(shape)} tokens; fvcore conventions (1 MAC = 1 FLOP, '
          'LN 5/elem, bilinear 4/out elem, elementwise free)')
    counter = f'{args.backend} (GFLOPs)'
    header = f"{'':<50}{counter:>22}{'analytic (GFLOPs)':>20}{'diff':>9}"
    print(header)
    print('-' * len(header))
    result = dict(config=args.config, shape=list(shape), backend=args.backend,
                  analytic={}, library={} if lib else None)
    for name, key, idx in rows:
        a = get(ana, key, idx) / 1e9
        result['analytic'][name] = a
        if lib is not None:
            v = get(lib, key, idx) / 1e9
            result['library'][name] = v
            print(f'{name:<50}{v:>22.2f}{a:>20.2f}{100 * (v / a - 1):>8.2f}%')
        else:
            print(f'{name:<50}{"-":>22}{a:>20.2f}{"":>9}')
    if lib is not None:
        ops = ', '.join(f'{k} {v / 1e9:.2f}' for k, v in lib['by_operator'].most_common())
        print(f'by operator (GFLOPs): {ops}')
    result['mmseg'] = None if args.no_mmseg else compare_mmseg(cfg, dims, shape, lib,
                                                               args)
    if args.out:
        with open(args.out, 'w') as f:
            json.dump(result, f, indent=2)
    return result


def compare_mmseg(cfg, dims, shape, lib, args) -> Optional[dict]:
    """Count mmseg's dense model of the same config and print it next to ours.

    Returns:
        dict or None: ``library`` / ``analytic`` numbers of mmseg's model and
        ``ours`` (ours, same rows), or None when the config has no mmseg
        counterpart (ATM decode head).
    """
    from mmseg.registry import MODELS

    from dtop.evaluation.flops import count_flops_mmseg, dense_flops, mmseg_dense_flops
    from dtop.models.mmseg_dense import mmseg_dense_model_cfg
    try:
        mm_cfg, kept = mmseg_dense_model_cfg(cfg.model)
    except ValueError as err:
        print(f'mmseg dense model: n/a ({err})')
        return None
    ana = mmseg_dense_flops(dims, shape)
    ours_ana = dense_flops(dims, shape)
    mm_lib = None
    if lib is not None:
        model = MODELS.build(mm_cfg)
        mm_lib = count_flops_mmseg(model, shape, backend=args.backend)
        del model
    ours = lib if lib is not None else ours_ana
    S = dims.num_stages
    rows = [('backbone (incl. patch embed)', 'backbone', None, None)]
    for i, s in enumerate(kept):
        rows.append((f'auxiliary_head.{s} (forward)', 'heads', s, i))
    rows += [('decode_head + resize to the crop', 'final_head', None, None),
             ('backbone + final head  [inference at p0 = 1]', 'backbone_final_head',
              None, None),
             ('backbone + all heads  [training]', 'backbone_all_heads', None, None)]
    print(f"\nmmseg's dense {mm_cfg['type']} ({mm_cfg['backbone']['type']} + "
          f"{mm_cfg['decode_head']['type']}), same config, one crop:")
    header = (f"{'':<46}{'ours':>12}{'mmseg (counter)':>17}{'mmseg (analytic)':>18}"
              f"{'ours - mmseg':>14}")
    print(header)
    print('-' * len(header))
    out = dict(library={} if mm_lib else None, analytic={}, ours={}, config=mm_cfg['type'])
    for name, key, ours_idx, mm_idx in rows:
        if mm_idx is not None:
            a, o = ana['heads'][ours_idx], ours['heads'][ours_idx]
            m = mm_lib['heads'][mm_idx] if mm_lib else None
        else:
            a, o = ana[key], ours[key]
            m = mm_lib[key] if mm_lib else None
        a, o = a / 1e9, o / 1e9
        out['analytic'][name] = a
        out['ours'][name] = o
        ref = a
        if m is not None:
            m /= 1e9
            out['library'][name] = m
            ref = m
        m_txt = f'{m:>17.3f}' if m is not None else f"{'-':>17}"
        print(f'{name:<46}{o:>12.3f}{m_txt}{a:>18.3f}{o - ref:>+14.3f}')
    for note in dict.fromkeys(h.note for h in dims.heads if h.note):  # the heads' own
        print(f'({note})')
    return out


if __name__ == '__main__':
    from dtop.utils.errors import run_cli
    run_cli(main)
