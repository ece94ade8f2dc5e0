"""Small tensor helpers shared by the DToP model."""
from contextlib import contextmanager, nullcontext
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

_PROFILING = False


@contextmanager
def profiling(enabled: bool = True) -> Iterator[None]:
    """Turn on the model's profiler labels (:func:`profile_region`) inside the block.

    Use it around a ``torch.profiler.profile`` run; outside it the labels cost
    nothing (a plain ``nullcontext``).
    """
    global _PROFILING
    saved, _PROFILING = _PROFILING, enabled
    try:
        yield
    finally:
        _PROFILING = saved


def profile_region(name: str):
    """A ``torch.profiler.record_function(name)`` while :func:`profiling` is on,
    else a no-op context."""
    return torch.profiler.record_function(name) if _PROFILING else nullcontext()


def grid_to_pixels(t: Tensor, size: Sequence[int], patch_size: int,
                   align_corners: bool = False, mode: str = 'bilinear') -> Tensor:
    """Upsample a token-grid map to pixels.

    The ``(h, w)`` grid covers ``(h * p, w * p)`` pixels (sides that were not a
    multiple of the patch size were corner-padded, i.e. at the bottom/right), so
    the map is upsampled to that size and cropped to ``size``. When ``size`` is a
    multiple of the patch size this is a plain resize to ``size``, as the official
    implementation does for its square crops.

    Args:
        t (Tensor): ``(B, C, h, w)``.
        size (Sequence[int]): target ``(H, W)``.
        patch_size (int): pixels per token side.
        align_corners (bool): for bilinear mode.
        mode (str): ``'bilinear'`` or ``'nearest'``.

    Returns:
        Tensor: ``(B, C, H, W)``.
    """
    h, w = t.shape[-2:]
    H, W = int(size[0]), int(size[1])
    full = (h * patch_size, w * patch_size)
    if full[0] < H or full[1] < W:
        raise ValueError(f'a {h}x{w} token grid with patch {patch_size} cannot cover '
                         f'{H}x{W} pixels')
    if mode == 'nearest':
        out = F.interpolate(t, size=full, mode='nearest')
    else:
        out = F.interpolate(t, size=full, mode=mode, align_corners=align_corners)
    return out[..., :H, :W]
