"""Print the fully resolved config: every ``_base_`` merged, ``--cfg-options`` applied.

What the tools and the Runner will actually use, so you can check a change before
spending GPU time on it.

Examples::

    python tools/misc/print_config.py configs/dtop/dtop_segvit_vit-b16_4xb4-40k_ade20k-512x512.py
    # one part only, with an override, as JSON:
    python tools/misc/print_config.py CONFIG --key model.decode_head --format json \\
        --cfg-options model.prune_threshold=0.95
    # save the resolved config (a standalone .py/.json/.yaml without _base_):
    python tools/misc/print_config.py CONFIG --out resolved.py
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
    from dtop.utils.cli import add_cfg_options_arg, tool_parser
    parser = tool_parser('Print the resolved config (all _base_ files merged, --cfg-options '
                         'applied).', __doc__)
    parser.add_argument('config', help='config file')
    parser.add_argument('--key', help='print only this part, a dotted path '
                        '(e.g. model.backbone, param_scheduler, train_dataloader.dataset)')
    parser.add_argument('--format', choices=['py', 'json'], default='py',
                        help='py: the config as Python (default); json: as JSON')
    parser.add_argument('--out', help='also write the whole resolved config to this file '
                        '(.py, .json or .yaml)')
    add_cfg_options_arg(parser, 'override settings, mmengine syntax: key=value, '
                        'a.b.c=value, list values as key="[a,b]"')
    return parser.parse_args(argv)


def select(cfg, key: str):
    """The part of ``cfg`` (a plain dict) at dotted ``key`` (list items by index, e.g.
    ``param_scheduler.1``).

    Raises:
        KeyError: naming the first missing component and the keys that exist there.
    """
    node = cfg
    done = []
    for part in key.split('.'):
        if isinstance(node, (list, tuple)) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            where = '.'.join(done) or 'the config'
            have = (list(node.keys()) if isinstance(node, dict)
                    else f'{len(node)} list items' if isinstance(node, (list, tuple))
                    else type(node).__name__)
            raise KeyError(f'--key {key}: no "{part}" in {where} (it has: {have})')
        done.append(part)
    return node


def main(argv: Optional[List[str]] = None) -> str:
    from mmengine.config import Config, ConfigDict

    from dtop.apis import load_config
    args = parse_args(argv)
    try:  # the pruning options are checked too, with the messages the tools give
        cfg = load_config(args.config, args.cfg_options)
    except (FileNotFoundError, ValueError) as exc:
        sys.exit(f'error: {exc}')
    if args.key:
        try:
            part = select(cfg.to_dict(), args.key)
        except KeyError as e:
            sys.exit(f'error: {e.args[0]}')
        plain = part.to_dict() if isinstance(part, ConfigDict) else part
        if args.format == 'json':
            text = json.dumps(plain, indent=2, default=str)
        else:
            text = f'{args.key} = {Config(dict(x=plain)).pretty_text.strip()[4:]}' \
                if isinstance(plain, dict) else f'{args.key} = {plain!r}'
    elif args.format == 'json':
        text = json.dumps(cfg.to_dict(), indent=2, default=str)
    else:
        text = cfg.pretty_text
    print(text)
    if args.out:
        cfg.dump(args.out)
        print(f'resolved config written to {args.out}', file=sys.stderr)
    return text


if __name__ == '__main__':
    from dtop.utils.errors import run_cli
    run_cli(main)
