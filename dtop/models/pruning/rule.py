"""The DToP exit rule as pure tensor functions (docs/method.md §3).

After each auxiliary head every still-active token gets a confidence
``max_c P_c(t)`` (for an ATM head ``P_c(t) = presence_c * sigmoid(A(c, t))``, see
:meth:`ATMPruneHead.token_probs`). Tokens whose confidence is *strictly* greater
than ``p0`` are exit candidates. For every class that is the argmax of at least
one candidate, the ``min(k, count)`` highest-scoring candidates of that class stay
active (they keep context); every other candidate exits, permanently.

Everything here is batched: no Python loop over images or classes.
"""
from typing import Optional

import torch
from torch import Tensor


@torch.no_grad()
def select_exits(scores: Tensor,
                 threshold: float,
                 keep_topk: int = 5,
                 valid: Optional[Tensor] = None) -> Tensor:
    """Decide which tokens exit at this stage.

    Args:
        scores (Tensor): ``(B, Q, N)`` per-class token scores (probabilities).
        threshold (float): ``p0``; a token is a candidate iff its max score is
            strictly greater than it.
        keep_topk (int): ``k``; per image and argmax class, the ``min(k, count)``
            highest-scoring candidates stay active. ``0`` lets all exit.
        valid (Tensor, optional): ``(B, N)`` bool, False for padding slots,
            which never exit. ``None`` means all slots are real tokens.

    Returns:
        Tensor: ``(B, N)`` bool, True for tokens that exit now.
    """
    conf, cls_idx = scores.max(dim=1)  # (B, N)
    cand = conf > threshold
    if valid is not None:
        cand &= valid
    if keep_topk <= 0 or not bool(cand.any()):
        return cand
    num_classes = scores.shape[1]
    # Per (image, class): candidates' confidences, -inf elsewhere.
    onehot = torch.nn.functional.one_hot(cls_idx, num_classes).transpose(1, 2).bool()
    per_class = torch.where(onehot & cand.unsqueeze(1), conf.unsqueeze(1),
                            conf.new_tensor(float('-inf')))  # (B, Q, N)
    k = min(keep_topk, per_class.shape[-1])
    top_val, top_idx = per_class.topk(k, dim=-1)  # (B, Q, k)
    # Only real candidates (finite value) are spared; the -inf fillers are not.
    spared = torch.zeros(per_class.shape, dtype=torch.bool, device=scores.device)
    spared.scatter_(-1, top_idx, torch.isfinite(top_val))
    keep = spared.any(dim=1)
    return cand & ~keep


@torch.no_grad()
def select_exits_packed(scores: Tensor, segments, threshold: float,
                        keep_topk: int = 5) -> Tensor:
    """:func:`select_exits` for the packed active tokens of a batch.

    Args:
        scores (Tensor): ``(T, Q)`` per-token class scores (packed, image after
            image as described by ``segments``).
        segments (Segments): image boundaries.
        threshold (float): ``p0``.
        keep_topk (int): ``k``.

    Returns:
        Tensor: ``(T,)`` bool, True for tokens that exit now.
    """
    if scores.shape[0] == 0:
        return torch.zeros(0, dtype=torch.bool, device=scores.device)
    padded = segments.pad(scores, value=float('-inf')).transpose(1, 2)  # (B, Q, n)
    valid = None if segments.is_uniform else segments.valid_mask()
    return segments.unpad(select_exits(padded, threshold, keep_topk, valid))
