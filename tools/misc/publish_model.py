"""Make a checkpoint ready to share: weights and meta only, hash in the file name.

Drops the training state (optimizer, lr schedulers, message hub: about two thirds
of an AdamW checkpoint), keeps ``state_dict`` and ``meta`` (config, dataset classes
and palette, iteration), writes the result and renames it to
``<out stem>-<first 8 hex digits of its sha256>.pth``, the OpenMMLab model-zoo
convention (the hash lets users verify a download).

The input is read by the safe loader (nothing its pickle carries runs; NaN/Inf
weights are refused) and the output holds plain data only (objects the loader did
not rebuild are dropped and listed), so it loads with
``torch.load(weights_only=True)``.

Examples::

    python tools/misc/publish_model.py work_dirs/dtop_b16_ade/iter_40000.pth \\
        dtop_segvit_vit-b16_ade20k-512x512.pth
    # also check that it loads exactly into the config it is published for:
    python tools/misc/publish_model.py IN.pth OUT.pth \\
        --config configs/dtop/dtop_segvit_vit-b16_4xb4-40k_ade20k-512x512.py
"""
import argparse
import hashlib
import os
import os.path as osp
import sys
from typing import List, Optional

ROOT = osp.abspath(osp.join(osp.dirname(__file__), '..', '..'))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

#: Top-level checkpoint entries that are kept; everything else is training state.
KEEP = ('state_dict', 'meta')


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    from dtop.utils.cli import add_trust_checkpoint_arg, tool_parser
    parser = tool_parser('Strip the training state from a checkpoint and put its sha256 '
                         'prefix in the file name.', __doc__)
    parser.add_argument('in_file', help='checkpoint written by training (iter_*.pth)')
    parser.add_argument('out_file', help='output name; "-<hash8>" is added before .pth')
    parser.add_argument('--config', help='check that the weights load exactly (no missing '
                        'or unexpected key, no shape mismatch) into the model of this '
                        'config before publishing')
    add_trust_checkpoint_arg(parser)
    return parser.parse_args(argv)


def sha256_of(path: str, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(chunk), b''):
            h.update(block)
    return h.hexdigest()


def strip_training_state(ckpt: dict) -> dict:
    """The checkpoint without optimizer/scheduler/message-hub state.

    A bare state dict (no ``state_dict`` key) is wrapped as ``{'state_dict': ...}``.

    Returns:
        dict: ``state_dict`` and, when present, ``meta``.
    """
    if 'state_dict' not in ckpt:
        return dict(state_dict=ckpt)
    return {k: ckpt[k] for k in KEEP if k in ckpt}


def main(argv: Optional[List[str]] = None) -> str:
    import torch

    from dtop.utils.checkpoint import read_checkpoint, to_plain_checkpoint
    from dtop.utils.safe_pickle import strip_untrusted
    args = parse_args(argv)
    # safe loading (nothing the file carries runs), NaN/Inf weights refused
    ckpt = read_checkpoint(args.in_file, trust=args.trust_checkpoint or None)
    dropped = sorted(k for k in ckpt if k not in KEEP) if 'state_dict' in ckpt else []
    out, untrusted = strip_untrusted(to_plain_checkpoint(strip_training_state(ckpt)))
    if untrusted:
        print(f'dropped objects the safe loader does not rebuild: {", ".join(untrusted)}')
    if args.config:
        check_fits(out, args.config, args.in_file)
    stem = args.out_file[:-4] if args.out_file.endswith('.pth') else args.out_file
    if osp.dirname(stem):
        os.makedirs(osp.dirname(stem), exist_ok=True)
    tmp = f'{stem}.tmp.pth'
    torch.save(out, tmp)
    final = f'{stem}-{sha256_of(tmp)[:8]}.pth'
    os.replace(tmp, final)
    size_in, size_out = osp.getsize(args.in_file), osp.getsize(final)
    print(f'dropped: {", ".join(dropped) or "nothing (no training state)"}')
    print(f'{args.in_file} ({size_in / 2**20:.1f} MiB) -> {final} '
          f'({size_out / 2**20:.1f} MiB), sha256 {sha256_of(final)}')
    return final


def check_fits(ckpt: dict, config: str, source: str) -> None:
    """Raise unless ``ckpt`` loads exactly into the model of ``config``."""
    from dtop.apis import build_model, load_config
    from dtop.utils.checkpoint import check_checkpoint_fits
    model = build_model(load_config(config))  # no ImageNet download for a key check
    check_checkpoint_fits(model, ckpt, source, strict=True)
    print(f'checked: the weights load exactly into the model of {config}')


if __name__ == '__main__':
    from dtop.utils.errors import run_cli
    run_cli(main)
