"""What every stage-wise DToP backbone shares: stages cut at ``out_indices``,
prefix tokens (cls, registers) marked by negative grid positions, and the dense
forward built from the stage API (``embed_packed``, ``forward_layers_packed``,
``head_tokens``)."""
from typing import List, Sequence, Tuple, Union

from torch import Tensor


def resolve_out_indices(out_indices: Union[int, Sequence[int]], num_layers: int) -> List[int]:
    """0-based layer indices closing each stage (negative ones count from the end).

    Raises:
        ValueError: not strictly increasing, or the last is not the last layer.
    """
    indices = [out_indices] if isinstance(out_indices, int) else list(out_indices)
    resolved = [i % num_layers for i in indices] if num_layers > 0 else []
    if not resolved or sorted(set(resolved)) != resolved or resolved[-1] != num_layers - 1:
        raise ValueError(f'out_indices must be strictly increasing and end at the '
                         f'last layer ({num_layers - 1}); got {out_indices}.')
    return resolved


class StagesMixin:
    """``stage_ranges``, ``num_stages``, ``prefix_mask`` from ``self.out_indices``, and
    the dense ``forward``."""

    out_indices: List[int]

    @property
    def stage_ranges(self) -> List[Tuple[int, int]]:
        """``[(start, end), ...]`` layer ranges of the stages."""
        starts = [0] + [i + 1 for i in self.out_indices[:-1]]
        return [(s, e + 1) for s, e in zip(starts, self.out_indices)]

    @property
    def num_stages(self) -> int:
        return len(self.out_indices)

    @staticmethod
    def prefix_mask(pos: Tensor) -> Tensor:
        """``(T,)`` bool, True for prefix tokens (cls, registers), which never exit."""
        return pos < 0

    def forward(self, inputs: Tensor) -> Tuple[Tensor, ...]:
        """Dense forward, as mmseg's backbones: features ``(B, C, h, w)`` at
        ``out_indices`` (the last one after the final norm, if the backbone has one)."""
        x, pos, segments, (h, w) = self.embed_packed(inputs)
        B = inputs.shape[0]
        outs = []
        for s, (start, end) in enumerate(self.stage_ranges):
            x = self.forward_layers_packed(x, segments, start, end)
            feats, _, _ = self.head_tokens(x, pos, segments, final=s == self.num_stages - 1)
            outs.append(feats.view(B, h * w, -1).transpose(1, 2)
                        .reshape(B, -1, h, w).contiguous())
        return tuple(outs)
