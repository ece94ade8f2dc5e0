"""Token exit maps: which stage finalised each token (the paper's Fig. 1 view).

Pure numpy/OpenCV helpers; :class:`~dtop.visualization.DToPVisualizer` uses them
to add an exit-map panel next to the ground truth and the prediction.

Stage ``s`` (0-based) in an exit map means the token's mask logits were frozen
by the head closing stage ``s``; ``S - 1`` (the final stage) means the token was
never pruned and went through the whole backbone.
"""
from typing import List, Optional, Sequence, Tuple

import cv2
import numpy as np

#: Colours (RGB) for 3 stages: early exit green, middle amber, never exited red.
DEFAULT_STAGE_COLORS: Tuple[Tuple[int, int, int], ...] = (
    (39, 174, 96), (243, 156, 18), (192, 57, 43))

Color = Tuple[int, int, int]


def stage_colors(num_stages: int) -> List[Color]:
    """One distinct RGB colour per stage, from green (early) to red (final).

    Args:
        num_stages (int): number of stages ``S`` (>= 1).

    Returns:
        list[tuple]: ``S`` RGB tuples; the 3-stage case uses
        :data:`DEFAULT_STAGE_COLORS`.
    """
    if num_stages < 1:
        raise ValueError(f'num_stages must be >= 1, got {num_stages}')
    if num_stages == len(DEFAULT_STAGE_COLORS):
        return [tuple(c) for c in DEFAULT_STAGE_COLORS]
    if num_stages == 1:
        return [DEFAULT_STAGE_COLORS[-1]]
    # Hue from 120 (green) to 0 (red) in OpenCV's 0..180 hue scale.
    hues = np.linspace(60, 0, num_stages)
    hsv = np.stack([hues, np.full(num_stages, 200), np.full(num_stages, 220)], 1)
    rgb = cv2.cvtColor(hsv.astype(np.uint8)[None], cv2.COLOR_HSV2RGB)[0]
    return [tuple(int(v) for v in c) for c in rgb]


def exit_map_to_original(exit_map, img_meta: Optional[dict] = None) -> np.ndarray:
    """Bring an exit map from the model-input size to the original image size.

    Mirrors mmseg's ``postprocess_result``: remove the padding, undo a flip,
    resize (nearest) to ``ori_shape``.

    Args:
        exit_map (np.ndarray | Tensor): ``(H, W)`` integer stage indices at the
            padded model-input size.
        img_meta (dict, optional): a data sample's metainfo (``padding_size`` or
            ``img_padding_size``, ``flip``, ``flip_direction``, ``ori_shape``).
            ``None`` returns the map unchanged.

    Returns:
        np.ndarray: ``(H_ori, W_ori)`` uint8.
    """
    if hasattr(exit_map, 'detach'):
        exit_map = exit_map.detach().cpu().numpy()
    m = np.asarray(exit_map)
    if m.ndim == 3 and m.shape[0] == 1:
        m = m[0]
    if m.ndim != 2:
        raise ValueError(f'exit_map must be (H, W), got shape {m.shape}')
    m = m.astype(np.uint8)
    if not img_meta:
        return m
    pad = img_meta.get('img_padding_size', img_meta.get('padding_size', [0] * 4))
    left, right, top, bottom = (int(v) for v in pad)
    H, W = m.shape
    m = m[top:H - bottom, left:W - right]
    if img_meta.get('flip', False):
        direction = img_meta.get('flip_direction', 'horizontal')
        m = m[:, ::-1] if direction == 'horizontal' else m[::-1, :]
    ori = img_meta.get('ori_shape')
    if ori is not None and tuple(m.shape) != tuple(ori[:2]):
        m = cv2.resize(np.ascontiguousarray(m), (int(ori[1]), int(ori[0])),
                       interpolation=cv2.INTER_NEAREST)
    return np.ascontiguousarray(m)


def colorize_exit_map(exit_map: np.ndarray, num_stages: int,
                      colors: Optional[Sequence[Color]] = None) -> np.ndarray:
    """Colour an exit map, one colour per stage.

    Args:
        exit_map (np.ndarray): ``(H, W)`` stage indices in ``[0, S)``.
        num_stages (int): ``S``.
        colors (Sequence[tuple], optional): RGB per stage; default
            :func:`stage_colors`.

    Returns:
        np.ndarray: ``(H, W, 3)`` uint8 RGB.
    """
    colors = list(colors) if colors is not None else stage_colors(num_stages)
    if len(colors) < num_stages:
        raise ValueError(f'{num_stages} stages need {num_stages} colours, got {len(colors)}')
    exit_map = np.asarray(exit_map)
    if exit_map.size and (exit_map.min() < 0 or exit_map.max() >= num_stages):
        raise ValueError(f'exit_map values must be in [0, {num_stages}), got '
                         f'[{exit_map.min()}, {exit_map.max()}]')
    lut = np.asarray(colors[:num_stages], dtype=np.uint8)
    return lut[exit_map.astype(np.int64)]


def render_exit_map(image: np.ndarray,
                    exit_map: np.ndarray,
                    num_stages: int,
                    alpha: float = 0.55,
                    colors: Optional[Sequence[Color]] = None,
                    draw_borders: bool = True) -> np.ndarray:
    """Overlay the per-token exit stage on an image.

    Args:
        image (np.ndarray): ``(H, W, 3)`` uint8 RGB.
        exit_map (np.ndarray): ``(H, W)`` stage indices (same size as ``image``).
        num_stages (int): ``S``.
        alpha (float): weight of the stage colour (0 = image only).
        colors (Sequence[tuple], optional): RGB per stage.
        draw_borders (bool): draw thin dark lines where the exit stage changes,
            which outlines the token blocks.

    Returns:
        np.ndarray: ``(H, W, 3)`` uint8 RGB.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f'image must be (H, W, 3), got {image.shape}')
    if tuple(exit_map.shape) != tuple(image.shape[:2]):
        raise ValueError(f'exit_map {tuple(exit_map.shape)} and image '
                         f'{tuple(image.shape[:2])} sizes differ; use '
                         'exit_map_to_original first')
    color = colorize_exit_map(exit_map, num_stages, colors).astype(np.float32)
    out = image.astype(np.float32) * (1 - alpha) + color * alpha
    if draw_borders:
        em = exit_map.astype(np.int16)
        edge = np.zeros(em.shape, bool)
        edge[:, 1:] |= em[:, 1:] != em[:, :-1]
        edge[1:, :] |= em[1:, :] != em[:-1, :]
        out[edge] *= 0.3
    return np.clip(out, 0, 255).astype(np.uint8)


def exit_fractions(token_counts, grid_tokens: int) -> np.ndarray:
    """Fraction of tokens finalised at each stage.

    Args:
        token_counts (array-like): ``(num_crops, S)`` active tokens entering
            each stage (``dtop_stats['token_counts']``).
        grid_tokens (int): tokens of a full grid per crop.

    Returns:
        np.ndarray: ``(S,)`` fractions summing to 1: exited after stage ``s``
        for ``s < S - 1``, and never exited for ``s = S - 1``.
    """
    if hasattr(token_counts, 'detach'):
        token_counts = token_counts.detach().cpu().numpy()
    c = np.asarray(token_counts, dtype=np.float64)
    if c.ndim == 1:
        c = c[None]
    if c.ndim != 2 or grid_tokens <= 0:
        raise ValueError(f'token_counts must be (num_crops, S) and grid_tokens > 0, got '
                         f'{c.shape} and {grid_tokens}')
    total = grid_tokens * c.shape[0]
    counts = c.sum(0)
    exited = np.append(counts[:-1] - counts[1:], counts[-1])
    return exited / total


def stage_legend(width: int,
                 num_stages: int,
                 fractions: Optional[Sequence[float]] = None,
                 colors: Optional[Sequence[Color]] = None,
                 height: int = 22,
                 title: str = 'exit stage:') -> np.ndarray:
    """A legend strip: a colour box and a label per stage.

    Args:
        width (int): strip width in pixels.
        num_stages (int): ``S``.
        fractions (Sequence[float], optional): per-stage token fractions
            (see :func:`exit_fractions`), printed as percentages.
        colors (Sequence[tuple], optional): RGB per stage.
        height (int): strip height.
        title (str): text before the boxes.

    Returns:
        np.ndarray: ``(height, width, 3)`` uint8 RGB.
    """
    colors = list(colors) if colors is not None else stage_colors(num_stages)
    strip = np.full((height, max(int(width), 1), 3), 255, np.uint8)
    font, scale, thick = cv2.FONT_HERSHEY_SIMPLEX, 0.38 * height / 22, 1
    base = int(height * 0.7)
    x = 4
    cv2.putText(strip, title, (x, base), font, scale, (0, 0, 0), thick, cv2.LINE_AA)
    x += cv2.getTextSize(title, font, scale, thick)[0][0] + 6
    box = height - 8
    for s in range(num_stages):
        name = 'final' if s == num_stages - 1 else f'after s{s + 1}'
        if fractions is not None:
            name += f' {100 * float(fractions[s]):.0f}%'
        cv2.rectangle(strip, (x, 4), (x + box, 4 + box), tuple(int(v) for v in colors[s]), -1)
        cv2.rectangle(strip, (x, 4), (x + box, 4 + box), (0, 0, 0), 1)
        x += box + 3
        cv2.putText(strip, name, (x, base), font, scale, (0, 0, 0), thick, cv2.LINE_AA)
        x += cv2.getTextSize(name, font, scale, thick)[0][0] + 8
    return strip
