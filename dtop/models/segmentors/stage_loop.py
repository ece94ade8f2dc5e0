"""The DToP stage loop (docs/method.md §1-4), as one function.

``backbone.embed_packed`` → for each stage ``s``: backbone layers of ``s`` over the
packed active tokens → head ``s`` on the stage's patch tokens → canvas update at
the active positions → exit policy on the head's per-token class probabilities →
the still-active tokens are re-packed (:meth:`Segments.select`).

Active tokens are carried *packed* (:mod:`dtop.models.packing`): ``x`` ``(T, C)``
holds the active tokens of all images, image after image, ``pos`` ``(T,)`` the grid
index of each (negative for prefix tokens such as a cls token, which never exit)
and :class:`Segments` the image boundaries. Token-wise work therefore costs the sum
of active tokens; the boundaries change once per stage (one host sync), never per
layer.

Heads are used through the stage-head contract
(:mod:`dtop.models.decode_heads.stage_head`) only. The canvas keeps, for every
token, the values of the stage it exited at; the final head turns it into the
final map.
"""
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Set, Tuple

import torch
from torch import Tensor

from ..decode_heads.stage_head import HeadOutput, TokenGrid
from ..utils import profile_region


@dataclass
class StageOutputs:
    """What one pass of the stage loop returns (no state is kept on the modules).

    Attributes:
        head_outputs: per stage, ``(HeadOutput, canvas (B, Q, h, w))`` — the
            head's output and the canvas of the head's own space right after the
            head wrote into it — or ``None`` where the head was skipped.
        final_map: ``(B, Q, h, w)`` the final map at token resolution (ATM:
            probabilities; softmax heads: log-probabilities).
        grid: token grid ``(h, w)``.
        active_counts: ``(B, S)`` patch tokens processed by each stage's layers
            and head.
        exit_stage: ``(B, h, w)`` stage whose head gave each token's final values
            (``S - 1`` for tokens that never exited).
        features: per stage, dense ``(B, C, h, w)`` features (only if asked for;
            an exited token keeps its feature from its exit stage).
        heads_run: per stage, whether its head ran.
    """
    head_outputs: List[Optional[Tuple[HeadOutput, Tensor]]]
    final_map: Tensor
    grid: Tuple[int, int]
    active_counts: Tensor
    exit_stage: Tensor
    features: List[Tensor] = field(default_factory=list)
    heads_run: Tuple[bool, ...] = ()

    def stats(self, crop_shape: Sequence[int]) -> List[dict]:
        """Per-image statistics (without the exit map), as ``predict`` reports them."""
        N = self.grid[0] * self.grid[1]
        counts = self.active_counts.cpu()
        return [dict(token_counts=counts[b:b + 1], grid_tokens=N,
                     crop_shape=tuple(int(s) for s in crop_shape), heads_run=self.heads_run)
                for b in range(counts.shape[0])]


def grid_view(flat: Tensor, B: int, h: int, w: int) -> Tensor:
    """``(B * h * w, C)`` → ``(B, C, h, w)`` (a view)."""
    return flat.view(B, h, w, -1).permute(0, 3, 1, 2)


def live_spaces(heads: Sequence, stage: int) -> Set[str]:
    """Canvas spaces head ``stage`` must write: its own, and those of every later
    head (their losses and the final map read the canvas it leaves behind)."""
    return {h.canvas_space for h in heads[stage:]}


def no_autocast(device_type: str):
    """A context that turns autocast off if it is on (decisions are made in fp32)."""
    if torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return nullcontext()


def run_stage_loop(backbone, heads: Sequence, exit_policy, inputs: Tensor, *,
                   with_features: bool = False, all_heads: bool = False,
                   skip_idle: bool = True) -> StageOutputs:
    """Backbone stage → head → canvas → exit policy → re-packing, for every stage.

    An auxiliary head whose stage cannot prune (``exit_policy.prunes_at(s)`` is
    False) is skipped when ``skip_idle`` is set and ``all_heads`` is not: nothing
    exits there, so the next head overwrites every canvas column it would write
    and the output is unchanged. A BASE model therefore costs exactly backbone +
    final head.

    Args:
        backbone: a stage-wise backbone (``embed_packed``, ``stage_ranges``,
            ``forward_layers_packed``, ``head_tokens``, ``prefix_mask``).
        heads (Sequence): one stage head per stage (auxiliary heads, then the
            decode head).
        exit_policy (ExitPolicy): decides the exits (bound to ``len(heads)``).
        inputs (Tensor): ``(B, 3, H, W)`` normalised images.
        with_features (bool): also return dense per-stage features.
        all_heads (bool): run every head even where it cannot change the output.
        skip_idle (bool): skip the heads of stages that cannot prune.

    Returns:
        StageOutputs: head outputs, final map, statistics, optional features.
    """
    bb = backbone
    with profile_region('dtop.patch_embed'):
        x, pos, segs, (h, w) = bb.embed_packed(inputs)
    B, N = inputs.shape[0], h * w
    S = len(heads)
    canvases: Dict[str, Tensor] = {}
    exit_stage = torch.full((B * N,), S - 1, dtype=torch.long, device=x.device)
    dense_feats: Optional[Tensor] = None
    counts, head_outputs, features, heads_run = [], [], [], []
    all_active = True  # no token has exited yet: canvas rows are the packed rows
    # hidden states of exited tokens, for heads that read the token grid (EoMT)
    track_frozen = any(getattr(head, 'reads_grid', False) for head in heads)
    frozen: Optional[Tensor] = None
    for s, (start, end) in enumerate(bb.stage_ranges):
        final = s == S - 1
        with profile_region(f'dtop.backbone.stage{s}'):
            x = bb.forward_layers_packed(x, segs, start, end)
        tokens, tok_pos, tok_segs = bb.head_tokens(x, pos, segs, final)
        counts.append(tok_segs.counts)
        flat = tok_segs.batch_index * N + tok_pos  # canvas row of each token
        prunes = not final and exit_policy.prunes_at(s)
        run_head = final or prunes or all_heads or not skip_idle
        heads_run.append(run_head)
        out = None
        if run_head:
            region = 'dtop.final_head' if final else f'dtop.aux_head{s}'
            with profile_region(region):
                if getattr(heads[s], 'reads_grid', False):
                    prefix = x[bb.prefix_mask(pos)].view(B, -1, x.shape[-1])
                    out = heads[s].forward_tokens(tokens, tok_segs, grid=TokenGrid(
                        tok_pos, (h, w), prefix, frozen))
                else:
                    out = heads[s].forward_tokens(tokens, tok_segs)
            with profile_region('dtop.canvas'):
                for space in live_spaces(heads, s):
                    values = heads[s].canvas_values(out, tok_segs, space)
                    canvas = canvases.get(space)
                    if all_active:  # every row is written: no scatter needed
                        canvases[space] = values.to(torch.float32)
                        continue
                    if canvas is None:
                        canvas = values.new_zeros(B * N, values.shape[-1],
                                                  dtype=torch.float32)
                    canvases[space] = canvas.index_put((flat,), values.to(canvas.dtype))
                own = grid_view(canvases[heads[s].canvas_space], B, h, w)
            head_outputs.append((out, own))
        else:
            head_outputs.append(None)
        if with_features:
            if dense_feats is None:
                dense_feats = tokens.new_zeros(B * N, tokens.shape[-1])
            dense_feats = dense_feats.index_put((flat,), tokens)
            features.append(grid_view(dense_feats, B, h, w).contiguous())
        if not prunes:
            continue
        with profile_region('dtop.exit_rule'), torch.no_grad(), \
                no_autocast(inputs.device.type):
            scores = heads[s].token_probs(out.float(), tok_segs)
            exits = exit_policy(s, scores, tok_segs)
            keep = bb.prefix_mask(pos)
            keep[~keep] = ~exits  # patch tokens stay unless they exit
            new_segs = segs.select(keep)
        if new_segs.total == x.shape[0]:
            continue  # nothing exited
        exit_stage[flat[exits]] = s
        if track_frozen:
            if frozen is None:
                frozen = tokens.new_zeros(B * N, tokens.shape[-1])
            frozen = frozen.index_put((flat[exits],), tokens[exits])
        x, pos, segs = x[keep], pos[keep], new_segs
        all_active = False
    final_out, _ = head_outputs[-1]
    final_map = heads[-1].final_map(
        final_out, grid_view(canvases[heads[-1].canvas_space], B, h, w))
    return StageOutputs(head_outputs=head_outputs, final_map=final_map, grid=(h, w),
                        active_counts=torch.stack(counts, dim=1),
                        exit_stage=exit_stage.view(B, h, w),
                        features=features, heads_run=tuple(heads_run))
