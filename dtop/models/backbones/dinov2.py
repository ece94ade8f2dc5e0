"""DINOv2 ViT (register tokens, layer scale, optional SwiGLU) run stage by stage.

:class:`DToPDinov2` offers the stage API of :class:`DToPVisionTransformer`
(``embed_packed`` → ``forward_layers_packed`` per stage → ``head_tokens``), so
:func:`dtop.models.segmentors.stage_loop.run_stage_loop` and
``DToPEncoderDecoder`` run it unchanged over the packed active tokens.

Token order per image: ``[cls, registers..., patches...]``. The cls token and the
registers are *prefix tokens*: they attend and are attended to in every layer and
are never pruned; heads read the patch tokens only. The registers get no position
embedding; the cls token gets one when ``pos_embed_cls`` (DINOv2, transformers) and
none otherwise (timm's ``*_reg4_dinov2`` models, EoMT).

The position embedding covers the grid ``img_size // patch_size`` and is resized
to every input grid as DINOv2 does (:func:`interpolate_pos_embed`). Weights of
transformers / timm DINOv2 models: ``tools/model_converters/dinov2_to_dtop.py``.
"""
import math
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from mmengine.model import BaseModule
from mmseg.registry import MODELS
from torch import Tensor

from ..dinov2_layers import Dinov2Block
from ..packing import Segments
from .stages import StagesMixin, resolve_out_indices

Size = Union[int, Sequence[int]]


def _pair(size: Size) -> Tuple[int, int]:
    if isinstance(size, int):
        return size, size
    size = tuple(int(s) for s in size)
    if len(size) != 2:
        raise ValueError(f'expected an int or (H, W), got {size}')
    return size


def interpolate_pos_embed(pos_embed: Tensor, src_grid: Tuple[int, int],
                          dst_grid: Tuple[int, int], num_prefix: int,
                          antialias: bool = True) -> Tensor:
    """Resize a position embedding to another patch grid, as DINOv2 does.

    The patch positions are resampled bicubically (``align_corners=False``) in
    float32 and cast back to their dtype; the first ``num_prefix`` entries (the cls
    position) are kept as they are. Nothing is resampled when the grids are equal.
    This is what transformers' ``Dinov2WithRegistersEmbeddings`` and timm's
    ``resample_abs_pos_embed`` compute (``antialias=True``); transformers'
    ``Dinov2Embeddings`` uses ``antialias=False``.

    Args:
        pos_embed (Tensor): ``(1, num_prefix + gh * gw, C)``.
        src_grid (tuple[int, int]): ``(gh, gw)`` the embedding covers.
        dst_grid (tuple[int, int]): ``(h, w)`` wanted.
        num_prefix (int): leading entries that are not patch positions (0 or 1).
        antialias (bool): antialiased bicubic kernel (see above).

    Returns:
        Tensor: ``(1, num_prefix + h * w, C)``.
    """
    src_grid, dst_grid = tuple(src_grid), tuple(dst_grid)
    if src_grid == dst_grid:
        return pos_embed
    C = pos_embed.shape[-1]
    prefix, patches = pos_embed[:, :num_prefix], pos_embed[:, num_prefix:]
    grid = patches.reshape(1, src_grid[0], src_grid[1], C).permute(0, 3, 1, 2)
    grid = F.interpolate(grid.float(), size=dst_grid, mode='bicubic', align_corners=False,
                         antialias=antialias).to(pos_embed.dtype)
    patches = grid.permute(0, 2, 3, 1).reshape(1, dst_grid[0] * dst_grid[1], C)
    return torch.cat((prefix, patches), dim=1)


class PatchEmbed(nn.Module):
    """Non-overlapping patch projection; sides that are not multiples of the patch
    size are zero-padded at the bottom / right first (mmseg's ``'corner'`` padding).

    Args:
        in_channels (int): image channels.
        embed_dims (int): token width.
        patch_size (int): patch side (kernel = stride).
    """

    def __init__(self, in_channels: int, embed_dims: int, patch_size: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_channels, embed_dims, patch_size, stride=patch_size, bias=True)

    def forward(self, x: Tensor) -> Tuple[Tensor, Tuple[int, int]]:
        """``(B, in, H, W)`` → tokens ``(B, h * w, C)`` (row-major) and ``(h, w)``."""
        p = self.patch_size
        pad_h, pad_w = -x.shape[-2] % p, -x.shape[-1] % p
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        x = self.proj(x.to(self.proj.weight.dtype))
        h, w = x.shape[-2:]
        return x.flatten(2).transpose(1, 2), (int(h), int(w))


@MODELS.register_module()
class DToPDinov2(StagesMixin, BaseModule):
    """DINOv2 ViT with stage-wise execution over packed active tokens.

    Args:
        img_size (int | tuple[int, int]): image size the stored position embedding
            covers (``img_size // patch_size`` patches per side). Default 518.
        patch_size (int): patch side. Default 14.
        in_channels (int): image channels. Default 3.
        embed_dims (int): token width. Default 768.
        num_layers (int): transformer layers. Default 12.
        num_heads (int): attention heads. Default 12.
        mlp_ratio (float): FFN ratio (SwiGLU: see
            :func:`dtop.models.dinov2_layers.swiglu_hidden`). Default 4.
        ffn_type (str): ``'mlp'`` (GELU) or ``'swiglu'`` (DINOv2-g).
        layer_scale_init (float, optional): initial layer-scale ``gamma``; None: no
            layer scale. Default 1.0.
        qkv_bias (bool): bias of the qkv projection. Default True.
        num_register_tokens (int): register tokens (0: none). Default 0.
        pos_embed_cls (bool): the position embedding has a cls entry (DINOv2,
            transformers). False: the cls token gets no position (timm's reg4
            DINOv2, EoMT). Default True.
        interpolate_antialias (bool): antialiased bicubic resizing of the position
            embedding (transformers' DINOv2-with-registers and timm: True;
            transformers' plain ``Dinov2Model``: False). Default True.
        out_indices (Sequence[int] | int): 0-based layer indices closing a stage
            (negative ones count from the end); strictly increasing, the last one is
            the last layer. Default ``(-1,)``.
        final_norm (bool): LayerNorm ``norm`` (eps 1e-6) after the last layer,
            applied to the tokens the final head reads. Default True.
        drop_path_rate (float): stochastic depth, rising linearly to this value
            over the layers. Default 0.
        attention_backend (str): see :func:`dtop.models.packing.packed_attention`.
        with_cp (bool): gradient checkpointing of every layer in training.
        init_cfg (dict, optional): ``dict(type='Pretrained', checkpoint=...)`` loads
            converted DINOv2 weights (position embedding resized to this grid;
            ``prefix='backbone.'`` picks the backbone of a segmentor checkpoint).
    """

    def __init__(self,
                 img_size: Size = 518,
                 patch_size: int = 14,
                 in_channels: int = 3,
                 embed_dims: int = 768,
                 num_layers: int = 12,
                 num_heads: int = 12,
                 mlp_ratio: float = 4.0,
                 ffn_type: str = 'mlp',
                 layer_scale_init: Optional[float] = 1.0,
                 qkv_bias: bool = True,
                 num_register_tokens: int = 0,
                 pos_embed_cls: bool = True,
                 interpolate_antialias: bool = True,
                 out_indices: Union[int, Sequence[int]] = (-1, ),
                 final_norm: bool = True,
                 drop_path_rate: float = 0.0,
                 attention_backend: str = 'auto',
                 with_cp: bool = False,
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        if not isinstance(patch_size, int) or patch_size < 1:
            raise ValueError(f'patch_size must be a positive int, got {patch_size!r}')
        if num_register_tokens < 0:
            raise ValueError(f'num_register_tokens must be >= 0, got {num_register_tokens}')
        self.img_size = _pair(img_size)
        self.patch_size = patch_size
        self.grid_size = (self.img_size[0] // patch_size, self.img_size[1] // patch_size)
        if min(self.grid_size) < 1:
            raise ValueError(f'img_size {self.img_size} is smaller than one patch '
                             f'({patch_size})')
        self.embed_dims = embed_dims
        self.num_register_tokens = int(num_register_tokens)
        self.pos_embed_cls = bool(pos_embed_cls)
        self.interpolate_antialias = bool(interpolate_antialias)
        self.final_norm = bool(final_norm)
        self.attention_backend = attention_backend
        self.with_cp = bool(with_cp)

        self.patch_embed = PatchEmbed(in_channels, embed_dims, patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dims))
        self.register_tokens = nn.Parameter(
            torch.zeros(1, num_register_tokens, embed_dims)) if num_register_tokens else None
        num_pos = int(self.pos_embed_cls) + self.grid_size[0] * self.grid_size[1]
        self.pos_embed = nn.Parameter(torch.zeros(1, num_pos, embed_dims))
        rates = [drop_path_rate * i / max(1, num_layers - 1) for i in range(num_layers)]
        self.layers = nn.ModuleList([
            Dinov2Block(embed_dims, num_heads, mlp_ratio, ffn_type, layer_scale_init, qkv_bias,
                        eps=1e-6, drop_path=rate) for rate in rates])
        self.norm = nn.LayerNorm(embed_dims, eps=1e-6) if final_norm else None

        self.out_indices = resolve_out_indices(out_indices, num_layers)

    # ------------------------------------------------------------------ weights
    def init_weights(self) -> None:
        """Random init (trunc-normal 0.02 for ``pos_embed`` / ``cls_token``, near-zero distinct
        registers, trunc-normal linears), or ``init_cfg=Pretrained`` weights written
        by ``tools/model_converters/dinov2_to_dtop.py`` (read by the safe loader,
        refused when not finite, position embedding resized to this grid; what does
        not load is summarised in one log line)."""
        cfg = self.init_cfg
        if not (isinstance(cfg, dict) and cfg.get('type') == 'Pretrained'):
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
            nn.init.trunc_normal_(self.cls_token, std=0.02)
            if self.register_tokens is not None:  # DINOv2's: tiny but distinct (zeros
                nn.init.normal_(self.register_tokens, std=1e-6)  # would stay equal)
            for m in self.modules():
                if isinstance(m, nn.Linear):
                    nn.init.trunc_normal_(m.weight, std=0.02)
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
            if cfg is not None:  # any other init_cfg applies on top
                super().init_weights()
            return
        from dtop.utils.checkpoint import read_checkpoint, summarize_partial_load

        # the safe loader (nothing in the file runs); NaN/Inf weights refused
        ckpt = read_checkpoint(cfg['checkpoint'])
        meta = ckpt.get('meta') if isinstance(ckpt.get('meta'), dict) else {}
        state_dict = dict(ckpt.get('state_dict', ckpt))
        prefix = cfg.get('prefix')  # as mmengine's: e.g. 'backbone.' of a segmentor
        if prefix:
            state_dict = {k[len(prefix):]: v for k, v in state_dict.items()
                          if k.startswith(prefix)}
        if 'pos_embed' in state_dict:
            state_dict['pos_embed'] = self._fit_pos_embed(state_dict['pos_embed'],
                                                          meta.get('arch', {}))
        self._check_shapes(state_dict, cfg['checkpoint'])
        summarize_partial_load(self, state_dict, f'DINOv2 weights {cfg["checkpoint"]}')
        self.load_state_dict(state_dict, strict=False)
        self._is_init = True

    def _fit_pos_embed(self, pos: Tensor, arch: dict) -> Tensor:
        """A checkpoint's position embedding on this model's grid and cls layout."""
        if pos.dim() == 2:
            pos = pos[None]
        length = pos.shape[1]
        if 'pos_embed_cls' in arch:
            has_cls = bool(arch['pos_embed_cls'])
        else:  # a square grid (+ 1 for a cls entry)
            has_cls = math.isqrt(length) ** 2 != length
        num_prefix = int(has_cls)
        grid = tuple(arch['pos_grid']) if 'pos_grid' in arch else \
            (math.isqrt(length - num_prefix),) * 2
        if grid[0] * grid[1] != length - num_prefix:
            raise ValueError(f'the checkpoint\'s pos_embed {tuple(pos.shape)} is not a '
                             f'{grid[0]}x{grid[1]} grid (+ a cls entry: {has_cls})')
        pos = interpolate_pos_embed(pos, grid, self.grid_size, num_prefix,
                                    self.interpolate_antialias)
        if has_cls and not self.pos_embed_cls:
            pos = pos[:, 1:]  # this model gives the cls token no position
        elif self.pos_embed_cls and not has_cls:  # keep this model's own cls entry
            pos = torch.cat((self.pos_embed.detach()[:, :1].to(pos), pos), dim=1)
        return pos

    def _check_shapes(self, state_dict: dict, source: str) -> None:
        """Refuse weights whose shapes do not fit (``load_state_dict`` would fail
        with a long message) with one line naming them and the fix."""
        from dtop.utils.errors import CheckpointMismatchError
        own = self.state_dict()
        bad = [(k, tuple(v.shape), tuple(own[k].shape)) for k, v in state_dict.items()
               if k in own and tuple(v.shape) != tuple(own[k].shape)]
        if not bad:
            return
        hint = ''
        if any(k == 'patch_embed.proj.weight' for k, _, _ in bad):
            hint = (f' The patch size differs: convert with tools/model_converters/'
                    f'dinov2_to_dtop.py --patch-size {self.patch_size}.')
        shown = ', '.join(f'{k} {list(a)} vs {list(b)}' for k, a, b in bad[:5])
        raise CheckpointMismatchError(
            f'DINOv2 weights {source} do not fit the backbone: {len(bad)} shape '
            f'mismatches (checkpoint vs model): {shown}.{hint} Otherwise build the '
            'backbone with the architecture of the checkpoint (embed_dims, mlp_ratio, '
            'ffn_type, num_register_tokens).')

    # ------------------------------------------------------------------ stage API
    @property
    def num_prefix_tokens(self) -> int:
        """Tokens per image that are not patches: the cls token and the registers."""
        return 1 + self.num_register_tokens

    def resized_pos_embed(self, grid: Tuple[int, int]) -> Tensor:
        """The position embedding for a ``(h, w)`` patch grid
        (:func:`interpolate_pos_embed`)."""
        return interpolate_pos_embed(self.pos_embed, self.grid_size, grid,
                                     int(self.pos_embed_cls), self.interpolate_antialias)

    def embed(self, inputs: Tensor) -> Tuple[Tensor, Tuple[int, int]]:
        """Patch embedding, position embedding, cls token and registers.

        Args:
            inputs (Tensor): ``(B, in_channels, H, W)`` images (any H, W; sides that
                are not multiples of the patch size are zero-padded bottom/right).

        Returns:
            tuple: tokens ``(B, P + h*w, C)`` (``P`` = :attr:`num_prefix_tokens`:
            cls, then registers, then patches row-major) and the grid ``(h, w)``.
        """
        if inputs.dim() != 4:
            raise ValueError(f'expected images of shape (B, C, H, W), got {tuple(inputs.shape)}')
        x, (h, w) = self.patch_embed(inputs)
        B = x.shape[0]
        pos = self.resized_pos_embed((h, w))
        cls = self.cls_token
        if self.pos_embed_cls:
            cls, pos = cls + pos[:, :1], pos[:, 1:]
        x = x + pos
        parts = [cls.expand(B, -1, -1)]
        if self.register_tokens is not None:
            parts.append(self.register_tokens.expand(B, -1, -1))
        return torch.cat([t.to(x.dtype) for t in parts] + [x], dim=1), (h, w)

    def embed_packed(self, inputs: Tensor) -> Tuple[Tensor, Tensor, Segments, Tuple[int, int]]:
        """:meth:`embed`, packed.

        Returns:
            tuple: ``x`` ``(T, C)`` tokens, ``pos`` ``(T,)`` long grid index of each
            token (negative for the prefix tokens: ``-P`` for the cls token, then
            ``-P+1 .. -1`` for the registers), :class:`Segments` and ``(h, w)``.
        """
        x, (h, w) = self.embed(inputs)
        B, L, C = x.shape
        pos = torch.arange(-self.num_prefix_tokens, h * w, device=x.device)
        return x.reshape(B * L, C), pos.repeat(B), Segments.uniform(B, L, x.device), (h, w)

    def forward_layers_packed(self, x: Tensor, segments: Segments, start: int,
                              end: int) -> Tensor:
        """Run layers ``[start, end)`` on packed tokens ``(T, C)`` → ``(T, C)``
        (gradient checkpointing per layer with ``with_cp`` in training)."""
        for layer in self.layers[start:end]:
            if self.with_cp and self.training and x.requires_grad:
                x = cp.checkpoint(layer.forward_packed, x, segments, self.attention_backend,
                                  use_reentrant=False)
            else:
                x = layer.forward_packed(x, segments, self.attention_backend)
        return x

    def head_tokens(self, x: Tensor, pos: Tensor, segments: Segments,
                    final: bool) -> Tuple[Tensor, Tensor, Segments]:
        """The patch tokens a stage head reads: prefix tokens dropped, ``norm``
        applied on the final stage (``final_norm``).

        Args:
            x (Tensor): ``(T, C)`` packed tokens after the stage's last layer.
            pos (Tensor): ``(T,)`` grid index per token (negative: prefix).
            segments (Segments): image boundaries of ``x``.
            final (bool): whether the stage is the last one.

        Returns:
            tuple: patch tokens ``(T_p, C)``, their grid indices ``(T_p,)`` and
            their :class:`Segments`.
        """
        keep = ~self.prefix_mask(pos)
        P = self.num_prefix_tokens
        x, pos = x[keep], pos[keep]
        segments = segments.select(keep, [n - P for n in segments.lengths])
        if final and self.norm is not None:
            x = self.norm(x)
        return x, pos, segments
