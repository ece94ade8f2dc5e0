"""Packed ragged token batches and variable-length attention.

After pruning, every image of a batch keeps a different number of tokens. Instead of
padding the batch to its largest count, the active tokens of all images are *packed*
into one ``(T, C)`` tensor, ``T = sum_b n_b``, image after image. Token-wise work
(LayerNorm, linears, MLP, residuals, the heads' token projections) then costs
``T``, not ``B * max n_b``; only attention needs to know where one image ends and
the next begins, which :class:`Segments` records (one host sync per stage, when the
active set changes — never per layer).

Attention over packed tokens has several backends (:func:`packed_attention`):

* ``'dense'``  — all images have the same length: a plain batched SDPA (no mask);
* ``'varlen'`` — CUDA variable-length FlashAttention (``torch.nn.attention.varlen``);
* ``'nested'`` — CUDA nested-jagged SDPA, where varlen is missing;
* ``'loop'``   — one SDPA per image (CPU default for ≤ 2 images or long sequences);
* ``'padded'`` — scatter q/k/v into ``(B, max n)`` with a key-padding mask (CPU
  default for many short sequences: one kernel, the padding waste is limited to the
  attention products).

:func:`select_attention_backend` picks one from the device, dtype and what the
installed torch provides; it is a small pure function with its own tests.
"""
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

ATTENTION_BACKENDS = ('auto', 'dense', 'varlen', 'nested', 'loop', 'padded')
#: on CPU, images with at least this many tokens run one attention kernel each
LOOP_MIN_TOKENS = 256


@dataclass
class Segments:
    """Where each image's tokens lie in a packed ``(T, ...)`` tensor.

    Attributes:
        lengths (list[int]): tokens per image (host copy; may contain 0).
        cu_seqlens (Tensor): ``(B + 1,)`` int32 cumulative offsets (device).
        batch_index (Tensor): ``(T,)`` long, the image of each packed token.
        slot (Tensor): ``(T,)`` long, the position of each token within its image.
    """
    lengths: List[int]
    cu_seqlens: Tensor
    batch_index: Tensor
    slot: Tensor

    @classmethod
    def from_lengths(cls, lengths: Sequence[int], device) -> 'Segments':
        """Build from per-image lengths (host ints)."""
        lengths = [int(n) for n in lengths]
        counts = torch.tensor(lengths, dtype=torch.long, device=device)
        cu = torch.zeros(len(lengths) + 1, dtype=torch.int32, device=device)
        cu[1:] = counts.cumsum(0)
        T = sum(lengths)
        batch_index = torch.repeat_interleave(
            torch.arange(len(lengths), device=device), counts, output_size=T)
        slot = torch.arange(T, device=device) - cu[:-1].long()[batch_index]
        return cls(lengths=lengths, cu_seqlens=cu, batch_index=batch_index, slot=slot)

    @classmethod
    def uniform(cls, batch_size: int, length: int, device) -> 'Segments':
        """``batch_size`` images of ``length`` tokens each."""
        return cls.from_lengths([length] * batch_size, device)

    @property
    def batch_size(self) -> int:
        return len(self.lengths)

    @property
    def total(self) -> int:
        return sum(self.lengths)

    @property
    def max_len(self) -> int:
        return max(self.lengths) if self.lengths else 0

    @property
    def is_uniform(self) -> bool:
        """All images have the same length (the batch is a plain ``(B, n)`` batch)."""
        return len(set(self.lengths)) <= 1

    @property
    def counts(self) -> Tensor:
        """``(B,)`` long lengths on the device."""
        return (self.cu_seqlens[1:] - self.cu_seqlens[:-1]).long()

    def pad(self, x: Tensor, value: float = 0.0) -> Tensor:
        """``(T, *rest)`` packed → ``(B, max_len, *rest)`` padded with ``value``."""
        if self.is_uniform:
            return x.view((self.batch_size, self.max_len) + tuple(x.shape[1:]))
        out = x.new_full((self.batch_size, self.max_len) + tuple(x.shape[1:]), value)
        return out.index_put((self.batch_index, self.slot), x)

    def unpad(self, x: Tensor) -> Tensor:
        """``(B, max_len, *rest)`` → ``(T, *rest)`` (inverse of :meth:`pad`)."""
        if self.is_uniform:
            return x.reshape((self.total,) + tuple(x.shape[2:]))
        return x[self.batch_index, self.slot]

    def valid_mask(self) -> Tensor:
        """``(B, max_len)`` bool, True for real (non-padding) slots."""
        return torch.arange(self.max_len, device=self.cu_seqlens.device)[None] < \
            self.counts[:, None]

    def split(self, x: Tensor) -> List[Tensor]:
        """Per-image views of a packed tensor."""
        return list(torch.split(x, self.lengths, dim=0))

    def select(self, mask: Tensor, lengths: Optional[Sequence[int]] = None) -> 'Segments':
        """Segments of the tokens a boolean mask keeps (``x[mask]`` of a packed ``x``).

        Args:
            mask (Tensor): ``(T,)`` bool, True for the tokens that stay.
            lengths (Sequence[int], optional): the kept tokens per image when the
                caller knows them (saves the one host sync of counting them).

        Returns:
            Segments: the packing of the kept tokens (same images, same order).
        """
        if lengths is None:
            lengths = torch.bincount(self.batch_index[mask],
                                     minlength=self.batch_size).tolist()
        return Segments.from_lengths(lengths, mask.device)

    def append(self, extra: int) -> Tuple['Segments', Tensor, Tensor]:
        """Packing of each image's tokens followed by ``extra`` appended tokens.

        Args:
            extra (int): tokens appended after each image's tokens (e.g. ``Q``
                class embeddings).

        Returns:
            tuple: joint :class:`Segments` (lengths ``n_b + extra``), ``token_dest``
            ``(T,)`` long position of each original token in the joint packing and
            ``extra_dest`` ``(B, extra)`` long positions of the appended tokens.
        """
        B = self.batch_size
        device = self.cu_seqlens.device
        shift = torch.arange(B + 1, device=device, dtype=torch.int32) * extra
        cu = self.cu_seqlens + shift
        starts = cu[:-1].long()
        token_dest = starts[self.batch_index] + self.slot
        extra_dest = (starts + self.counts)[:, None] + torch.arange(extra, device=device)
        total = self.total + B * extra
        counts = self.counts + extra
        batch_index = torch.repeat_interleave(torch.arange(B, device=device), counts,
                                              output_size=total)
        slot = torch.arange(total, device=device) - starts[batch_index]
        joint = Segments(lengths=[n + extra for n in self.lengths], cu_seqlens=cu,
                         batch_index=batch_index, slot=slot)
        return joint, token_dest, extra_dest


def _has_varlen() -> bool:
    try:
        from torch.nn.attention import varlen  # noqa: F401
    except ImportError:
        return False
    return hasattr(varlen, 'varlen_attn')


def select_attention_backend(device_type: str, dtype: torch.dtype, segments: Segments,
                             requested: str = 'auto', has_varlen: Optional[bool] = None,
                             dropout: float = 0.0) -> str:
    """Choose how to run attention over a packed batch.

    Args:
        device_type (str): ``'cuda'``, ``'cpu'``, ...
        dtype (torch.dtype): dtype of q/k/v.
        segments (Segments): the packing.
        requested (str): one of :data:`ATTENTION_BACKENDS`; anything but ``'auto'``
            is honoured when it can run (``'dense'`` needs equal lengths, the CUDA
            backends need CUDA), else the automatic choice applies.
        has_varlen (bool, optional): whether ``torch.nn.attention.varlen`` exists
            (default: look it up).
        dropout (float): attention dropout probability in effect (the varlen and
            nested paths are used without dropout only).

    Returns:
        str: ``'dense'``, ``'varlen'``, ``'nested'``, ``'loop'`` or ``'padded'``.
    """
    if requested not in ATTENTION_BACKENDS:
        raise ValueError(f'attention backend must be one of {ATTENTION_BACKENDS}, '
                         f'got {requested!r}')
    uniform = segments.is_uniform
    if has_varlen is None:
        has_varlen = _has_varlen()
    cuda = device_type == 'cuda'
    half = dtype in (torch.float16, torch.bfloat16)
    if requested != 'auto':
        if requested == 'dense' and not uniform:
            requested = 'auto'
        elif requested in ('varlen', 'nested') and not cuda:
            requested = 'auto'
        elif requested == 'varlen' and not (has_varlen and half):
            requested = 'auto'
        if requested != 'auto':
            return requested
    if uniform:
        return 'dense'
    if cuda:
        if has_varlen and half and dropout == 0.0:
            return 'varlen'
        return 'nested' if dropout == 0.0 else 'padded'
    # CPU: a few images, or images long enough that one kernel per image costs
    # nothing extra → exact per-image kernels; many short images → one padded
    # kernel (fewer dispatches; the padding only touches the attention products).
    if segments.batch_size <= 2 or segments.max_len >= LOOP_MIN_TOKENS:
        return 'loop'
    return 'padded'


def packed_attention(q: Tensor, k: Tensor, v: Tensor, segments: Segments,
                     dropout_p: float = 0.0, backend: str = 'auto') -> Tensor:
    """Scaled dot-product attention within each image of a packed batch.

    Args:
        q (Tensor): ``(T, H, d)`` queries.
        k (Tensor): ``(T, H, d)`` keys.
        v (Tensor): ``(T, H, d)`` values.
        segments (Segments): image boundaries.
        dropout_p (float): attention dropout (training only).
        backend (str): see :func:`select_attention_backend`.

    Returns:
        Tensor: ``(T, H, d)``; token ``t`` attended only to tokens of its image.
    """
    backend = select_attention_backend(q.device.type, q.dtype, segments, backend,
                                       dropout=dropout_p)
    T, H, d = q.shape
    if T == 0:
        # Empty, but still a function of q, k, v: the projections that made them
        # stay in the autograd graph when every token has exited, so DDP without
        # find_unused_parameters sees (zero) gradients for them.
        return q * 0 + k * 0 + v * 0
    if backend == 'dense':
        B, n = segments.batch_size, segments.lengths[0]

        def to_b(t):
            return t.view(B, n, H, d).transpose(1, 2)
        out = F.scaled_dot_product_attention(to_b(q), to_b(k), to_b(v), dropout_p=dropout_p)
        return out.transpose(1, 2).reshape(T, H, d)
    if backend == 'varlen':
        from torch.nn.attention.varlen import varlen_attn
        cu, m = segments.cu_seqlens, segments.max_len
        return varlen_attn(q, k, v, cu, cu, m, m)
    if backend == 'nested':
        lengths = segments.lengths
        offsets = segments.cu_seqlens.long()

        def nest(t):
            return torch.nested.nested_tensor_from_jagged(
                t, offsets=offsets, max_seqlen=max(lengths)).transpose(1, 2)
        out = F.scaled_dot_product_attention(nest(q), nest(k), nest(v), dropout_p=dropout_p)
        return out.transpose(1, 2).values()
    if backend == 'loop':
        outs = []
        for qi, ki, vi in zip(segments.split(q), segments.split(k), segments.split(v)):
            if qi.shape[0] == 0:
                outs.append(qi)
                continue
            o = F.scaled_dot_product_attention(qi.transpose(0, 1)[None], ki.transpose(0, 1)[None],
                                               vi.transpose(0, 1)[None], dropout_p=dropout_p)
            outs.append(o[0].transpose(0, 1))
        return torch.cat(outs, dim=0)
    if backend == 'padded':
        mask = segments.valid_mask()[:, None, None, :]  # (B, 1, 1, n)
        # Rows of empty images would be all -inf: let them attend to slot 0 (garbage
        # that is never gathered back).
        mask = mask | ~mask.any(-1, keepdim=True)

        def to_b(t):
            return segments.pad(t).transpose(1, 2)  # (B, H, n, d)
        out = F.scaled_dot_product_attention(to_b(q), to_b(k), to_b(v), attn_mask=mask,
                                             dropout_p=dropout_p)
        return segments.unpad(out.transpose(1, 2))
    raise ValueError(f'unknown attention backend {backend!r}')


def drop_path_packed(x: Tensor, drop_prob: float, training: bool,
                     segments: Segments) -> Tensor:
    """Stochastic depth with one draw per *image* (as on a ``(B, n, C)`` batch).

    Args:
        x (Tensor): ``(T, C)`` packed residual branch.
        drop_prob (float): probability of dropping an image's branch.
        training (bool): only active in training.
        segments (Segments): image of each token.

    Returns:
        Tensor: ``x`` scaled by ``keep / (1 - p)`` per image.
    """
    if drop_prob == 0.0 or not training:
        return x
    keep = 1.0 - drop_prob
    mask = x.new_empty(segments.batch_size).bernoulli_(keep).div_(keep)
    return x * mask[segments.batch_index].unsqueeze(-1)
