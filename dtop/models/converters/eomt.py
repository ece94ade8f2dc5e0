"""Convert a ``transformers`` EoMT checkpoint (``EomtForUniversalSegmentation``).

transformers keeps EoMT as one module: ``embeddings`` (patch conv, cls token,
registers, a position per patch and none for cls/registers), ``layers.0 ..
layers.{L-1}``, ``layernorm``, ``query``, ``upscale_block``, ``mask_head``,
``class_predictor``, the annealing buffer ``attn_mask_probs`` and the loss's
``criterion.empty_weight``. DToP splits it where the queries join: the first
``L - num_blocks`` layers become the :class:`~dtop.models.backbones.DToPDinov2`
backbone (``backbone.*``, no final norm), the last ``num_blocks`` layers and
everything after them the :class:`~dtop.models.decode_heads.EoMTHead`
(``decode_head.*``). ``criterion.empty_weight`` (a constant of the loss) is dropped.
"""
import re
from typing import Dict, List, Mapping, Optional

from torch import Tensor

from .dinov2 import ConversionError, convert_hf_layer

StateDict = Dict[str, Tensor]

_HEAD_RENAMES = (('layernorm.', 'norm.'), ('query.', 'query.'),
                 ('mask_head.', 'mask_head.'), ('class_predictor.', 'class_predictor.'))
_UPSCALE = re.compile(r'upscale_block\.block\.(\d+)\.(conv1|conv2|layernorm2d)\.(\w+)$')


def convert_hf_eomt(state_dict: Mapping[str, Tensor],
                    dropped: Optional[List[str]] = None) -> StateDict:
    """A transformers EoMT state dict → DToP segmentor keys.

    Args:
        state_dict (Mapping): ``EomtForUniversalSegmentation.state_dict()`` (an
            optional ``model.``-style prefix in front of ``embeddings.`` is removed).
        dropped (list, optional): receives the source keys left out.

    Returns:
        dict: ``backbone.*`` (:class:`DToPDinov2` with ``pos_embed_cls=False``,
        ``final_norm=False``, ``L - num_blocks`` layers) and ``decode_head.*``
        (:class:`EoMTHead` with ``num_blocks`` blocks); ``num_blocks`` is the
        length of ``attn_mask_probs``.

    Raises:
        ConversionError: a key is missing or not understood.
    """
    anchor = 'embeddings.patch_embeddings.projection.weight'
    prefix = next((k[:-len(anchor)] for k in state_dict if k.endswith(anchor)), None)
    if prefix is None:
        raise ConversionError(f'no "{anchor}": not a transformers EoMT state dict')
    sd = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    if 'attn_mask_probs' not in sd:
        raise ConversionError('no "attn_mask_probs": not a transformers EoMT state dict')
    num_blocks = int(sd['attn_mask_probs'].numel())
    layer_ids = sorted({int(m.group(1)) for k in sd for m in [re.match(r'layers\.(\d+)\.', k)]
                        if m})
    if layer_ids != list(range(len(layer_ids))) or len(layer_ids) <= num_blocks:
        raise ConversionError(f'EoMT layers {layer_ids} do not form 0..L-1 with L > '
                              f'{num_blocks} (the query blocks)')
    first_query = len(layer_ids) - num_blocks
    out: StateDict = {}
    used = set()
    emb = {'embeddings.cls_token': 'cls_token',
           'embeddings.patch_embeddings.projection.weight': 'patch_embed.proj.weight',
           'embeddings.patch_embeddings.projection.bias': 'patch_embed.proj.bias'}
    for src, dst in emb.items():
        if src not in sd:
            raise ConversionError(f'missing "{prefix}{src}"')
        out['backbone.' + dst] = sd[src]
        used.add(src)
    pos = sd.get('embeddings.position_embeddings.weight')
    if pos is None:
        raise ConversionError(f'missing "{prefix}embeddings.position_embeddings.weight"')
    out['backbone.pos_embed'] = pos[None]  # (N, C) -> (1, N, C): no cls position
    used.add('embeddings.position_embeddings.weight')
    regs = sd.get('embeddings.register_tokens')
    if regs is not None:
        used.add('embeddings.register_tokens')
        if regs.shape[1]:
            out['backbone.register_tokens'] = regs
    for i in layer_ids:
        src = f'layers.{i}.'
        dst = f'backbone.layers.{i}.' if i < first_query \
            else f'decode_head.blocks.{i - first_query}.'
        out.update(convert_hf_layer(sd, src, dst))
        used.update(k for k in sd if k.startswith(src))
    for k, v in sd.items():
        for src, dst in _HEAD_RENAMES:
            if k.startswith(src):
                out['decode_head.' + dst + k[len(src):]] = v
                used.add(k)
        m = _UPSCALE.match(k)
        if m:
            part = 'norm' if m.group(2) == 'layernorm2d' else m.group(2)
            out[f'decode_head.upscale.{m.group(1)}.{part}.{m.group(3)}'] = v
            used.add(k)
    out['decode_head.attn_mask_probs'] = sd['attn_mask_probs']
    used.add('attn_mask_probs')
    skipped = ['criterion.empty_weight'] if 'criterion.empty_weight' in sd else []
    left = sorted(set(sd) - used - set(skipped))
    if left:
        raise ConversionError(f'keys not understood in the EoMT state dict: '
                              f'{[prefix + k for k in left[:5]]}')
    if dropped is not None:
        dropped += [prefix + k for k in skipped] + \
            [k for k in state_dict if not k.startswith(prefix)]
    return out


def eomt_arch(sd: Mapping[str, Tensor], num_heads: Optional[int]) -> dict:
    """Backbone / head arguments that fit an EoMT state dict converted by
    :func:`convert_hf_eomt` (for tests and the converter's printout): width,
    layers, registers, queries, classes (``num_heads`` is not in the weights)."""
    C = sd['backbone.cls_token'].shape[-1]
    num_backbone = len({k.split('.')[2] for k in sd if k.startswith('backbone.layers.')})
    num_blocks = len({k.split('.')[2] for k in sd if k.startswith('decode_head.blocks.')})
    regs = sd.get('backbone.register_tokens')
    return dict(embed_dims=C, num_layers=num_backbone, num_blocks=num_blocks,
                num_heads=num_heads,
                num_register_tokens=0 if regs is None else int(regs.shape[1]),
                patch_size=int(sd['backbone.patch_embed.proj.weight'].shape[-1]),
                num_patches=int(sd['backbone.pos_embed'].shape[1]),
                num_queries=int(sd['decode_head.query.weight'].shape[0]),
                num_classes=int(sd['decode_head.class_predictor.weight'].shape[0]) - 1,
                ffn_hidden=int(sd['backbone.layers.0.mlp.fc2.weight'].shape[1]))


def load_vit_blocks(head, checkpoint: str, offset: int) -> None:
    """Initialise an :class:`EoMTHead`'s query blocks and norm from a converted
    DINOv2 checkpoint (``tools/model_converters/dinov2_to_dtop.py``): ViT block
    ``offset + j`` → ``blocks.j``, the ViT's final ``norm`` → ``norm``.

    Args:
        head (EoMTHead): the head to initialise (in place).
        checkpoint (str): path or URL of the converted checkpoint.
        offset (int): index of the ViT block the first query block is
            (``backbone.num_layers``).

    Raises:
        CheckpointMismatchError: the checkpoint lacks one of those blocks (or the
            norm), or a shape differs.
    """
    from dtop.utils.checkpoint import read_checkpoint
    from dtop.utils.errors import CheckpointMismatchError
    ckpt = read_checkpoint(checkpoint)  # safe loader; NaN/Inf weights refused
    sd = ckpt.get('state_dict', ckpt)
    own = head.state_dict()
    wanted = {}
    for name in own:
        if name.startswith('blocks.'):
            j, rest = name[len('blocks.'):].split('.', 1)
            wanted[name] = f'layers.{offset + int(j)}.{rest}'
        elif name.startswith('norm.'):
            wanted[name] = name
    missing = [src for src in wanted.values() if src not in sd]
    if missing:
        raise CheckpointMismatchError(
            f'{checkpoint} lacks {len(missing)} weight(s) the EoMT query blocks need '
            f'(first: {missing[0]}); the head takes ViT blocks {offset}.. of a converted '
            'DINOv2 checkpoint with as many blocks as backbone.num_layers + num_blocks')
    bad = [f'{src} {tuple(sd[src].shape)} vs {dst} {tuple(own[dst].shape)}'
           for dst, src in wanted.items() if sd[src].shape != own[dst].shape]
    if bad:
        raise CheckpointMismatchError(f'{checkpoint} does not fit the EoMT head: {bad[0]}')
    head.load_state_dict({dst: sd[src] for dst, src in wanted.items()}, strict=False)
