"""Sliding-window placement, exactly as mmseg's ``EncoderDecoder.slide_inference``."""
from typing import List, Sequence, Tuple


def slide_windows(size: Sequence[int], crop_size: Sequence[int],
                  stride: Sequence[int]) -> List[Tuple[int, int, int, int]]:
    """Crop windows covering an image.

    Args:
        size (Sequence[int]): image ``(H, W)``.
        crop_size (Sequence[int]): crop ``(h, w)``.
        stride (Sequence[int]): stride ``(h, w)``.

    Returns:
        list[tuple]: ``(y1, x1, y2, x2)`` per window, row by row (crops are clipped
        to the image; an image smaller than the crop gets one window).
    """
    H, W = size
    h_crop, w_crop = crop_size
    h_stride, w_stride = stride
    h_grids = max(H - h_crop + h_stride - 1, 0) // h_stride + 1
    w_grids = max(W - w_crop + w_stride - 1, 0) // w_stride + 1
    windows = []
    for hi in range(h_grids):
        for wi in range(w_grids):
            y2 = min(hi * h_stride + h_crop, H)
            x2 = min(wi * w_stride + w_crop, W)
            windows.append((max(y2 - h_crop, 0), max(x2 - w_crop, 0), y2, x2))
    return windows
