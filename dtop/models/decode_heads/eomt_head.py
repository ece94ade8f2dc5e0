"""EoMT (encoder-only mask transformer) as the final DToP stage head.

EoMT (Kerssies et al., "Your ViT is Secretly an Image Segmentation Model", CVPR
2025) appends ``Q`` learned queries to the tokens of a DINOv2 ViT for its last
``num_blocks`` blocks. After the last block (and, in training, before each query
block) it predicts from the normalised tokens:

* class logits ``(B, Q, K + 1)`` — a linear layer on the queries;
* mask logits ``(B, Q, 4h, 4w)`` — a 3-layer MLP on the queries dotted with the
  patch tokens laid on their grid and upscaled 4x by two scale layers
  (transposed conv 2x2 / GELU / depthwise conv 3x3 / LayerNorm);

and the semantic map is ``sum_q softmax(class_q)[:K] * sigmoid(mask_q)``, the mask
logits being resized to the image first.

Here the backbone (:class:`~dtop.models.backbones.dinov2.DToPDinov2`) runs the
blocks before the queries join and this head owns the query blocks. Each image's
sequence in the query blocks is ``[queries; prefix tokens; active patch tokens]``,
packed for the batch (attention within each image), so tokens that exited at an
earlier stage take no part: the queries attend only to the tokens still active.

Exited tokens (docs/eomt.md):

* the upscaling convolutions see, at an exited position, the token's hidden state
  when it exited (normalised by the head's final norm) — every grid cell holds a
  feature, so the mask logits are defined everywhere;
* the final map takes, at pixels of exited tokens, the frozen per-class scores of
  the head they exited at (ATM: ``P_c * sigmoid(mask logit)``, the canvas of space
  ``'probs'``, resized bilinearly), and EoMT's own semantic scores at pixels of
  active tokens. With nothing exited this is EoMT's semantic map exactly.

Masked attention: before query block ``i`` the queries attend only to patch tokens
inside the previous prediction's masks (``> 0`` after a bilinear resize to the
grid), except a random ``1 - attn_mask_probs[i]`` fraction of queries;
:class:`~dtop.engine.hooks.MaskAnnealingHook` anneals the probabilities to 0 during
training. A block whose probability is 0 at inference skips the prediction and
runs packed.
"""
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.model import BaseModule
from mmseg.registry import MODELS
from torch import Tensor

from ..cost import CROP, HeadCost, ResizeStep, layer_norm_flops, vit_layer_coeffs
from ..dinov2_layers import Dinov2Block, swiglu_hidden
from ..eomt_layers import MaskMLP, ScaleLayer
from ..packing import Segments
from .stage_head import HeadOutput, TokenGrid


@dataclass
class EoMTOutput(HeadOutput):
    """:class:`HeadOutput` of :class:`EoMTHead`.

    Attributes:
        token_values (Tensor): ``(T, K)`` per-token semantic scores (from the mask
            logits averaged over each token's 4x4 cell): the head's canvas values.
        image_values (Tensor): ``(B, Q, K + 1)`` final class logits.
        mask_logits (list[Tensor]): ``(B, Q, 4h, 4w)`` per prediction, the
            intermediate ones (before masked query blocks) first, the final last.
        class_logits (list[Tensor]): ``(B, Q, K + 1)``, aligned with ``mask_logits``.
        active (Tensor): ``(B, h, w)`` bool, the tokens the head saw.
    """
    mask_logits: List[Tensor] = field(default_factory=list)
    class_logits: List[Tensor] = field(default_factory=list)
    active: Optional[Tensor] = None


@dataclass
class _Layout:
    """Where queries, prefix tokens and patch tokens lie in the packed joint sequence."""
    joint: Segments
    query_dest: Tensor   # (B, Q)
    prefix_dest: Tensor  # (B, P)
    token_dest: Tensor   # (T,)
    flat: Tensor         # (T,) canvas row b * h * w + pos of each patch token


@MODELS.register_module()
class EoMTHead(BaseModule):
    """EoMT's query blocks and mask/class prediction on the packed active tokens.

    Args:
        in_channels (int): token width (the backbone's).
        num_classes (int): ``K`` (the class head has ``K + 1`` outputs).
        num_heads (int): attention heads of the query blocks.
        num_blocks (int): query blocks. Default 4.
        num_queries (int): learned queries. Default 100.
        mlp_ratio (float): FFN width ratio of the blocks.
        ffn_type (str): ``'mlp'`` or ``'swiglu'``.
        layer_scale_init (float, optional): layer-scale init of the blocks.
        num_upscale_layers (int): 2x scale layers (2 → masks at stride 4).
        drop_path_rates (Sequence[float], optional): per block.
        eps (float): LayerNorm epsilon.
        loss_decode (dict): the mask-classification loss config.
        ignore_index (int): label of unlabelled pixels.
        attention_backend (str): packed attention backend.
        init_cfg (dict, optional): mmengine init config.
    """

    canvas_space = 'probs'
    supported_spaces = ('probs',)
    reads_grid = True
    align_corners = False
    threshold = None

    def __init__(self, in_channels: int, num_classes: int, num_heads: int,
                 num_blocks: int = 4, num_queries: int = 100, mlp_ratio: float = 4.0,
                 ffn_type: str = 'mlp', layer_scale_init: Optional[float] = 1.0,
                 num_upscale_layers: int = 2,
                 drop_path_rates: Optional[Sequence[float]] = None, eps: float = 1e-6,
                 loss_decode: Optional[dict] = None, ignore_index: int = 255,
                 attention_backend: str = 'auto', init_cfg: Optional[dict] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        C = in_channels
        self.in_channels, self.num_classes, self.out_channels = C, num_classes, num_classes
        self.num_queries, self.ignore_index = num_queries, ignore_index
        self.attention_backend = attention_backend
        rates = list(drop_path_rates) if drop_path_rates is not None else [0.0] * num_blocks
        if len(rates) != num_blocks:
            raise ValueError(f'drop_path_rates has {len(rates)} values for {num_blocks} blocks')
        self.blocks = nn.ModuleList(
            Dinov2Block(C, num_heads, mlp_ratio, ffn_type, layer_scale_init, eps=eps,
                        drop_path=r) for r in rates)
        self.norm = nn.LayerNorm(C, eps=eps)
        self.query = nn.Embedding(num_queries, C)
        self.upscale = nn.ModuleList(ScaleLayer(C, eps) for _ in range(num_upscale_layers))
        self.mask_head = MaskMLP(C)
        self.class_predictor = nn.Linear(C, num_classes + 1)
        self.register_buffer('attn_mask_probs', torch.ones(num_blocks))
        loss_decode = dict(type='MaskClassificationLoss') if loss_decode is None \
            else dict(loss_decode)
        loss_decode.setdefault('num_classes', num_classes)
        loss_decode.setdefault('ignore_index', ignore_index)
        self.loss_decode = MODELS.build(loss_decode)

    def init_weights(self) -> None:
        """mmengine's init; with ``init_cfg=dict(type='Pretrained', checkpoint=...,
        vit_block_offset=L)`` the query blocks and the norm come from ViT blocks
        ``L..`` and the final norm of a converted DINOv2 checkpoint (see
        :func:`dtop.models.converters.eomt.load_vit_blocks`)."""
        cfg = self.init_cfg
        if isinstance(cfg, dict) and cfg.get('type') == 'Pretrained' \
                and 'vit_block_offset' in cfg:
            from ..converters.eomt import load_vit_blocks
            load_vit_blocks(self, cfg['checkpoint'], int(cfg['vit_block_offset']))
            self._is_init = True
            return
        super().init_weights()

    @property
    def upscale_factor(self) -> int:
        return 2 ** len(self.upscale)

    # ------------------------------------------------------------ forward
    def _layout(self, segments: Segments, grid: TokenGrid) -> _Layout:
        Q, P = self.num_queries, grid.prefix.shape[1]
        dev = grid.pos.device
        joint = Segments.from_lengths([n + Q + P for n in segments.lengths], dev)
        start = joint.cu_seqlens[:-1].long()
        h, w = grid.size
        return _Layout(joint=joint,
                       query_dest=start[:, None] + torch.arange(Q, device=dev),
                       prefix_dest=start[:, None] + Q + torch.arange(P, device=dev),
                       token_dest=start[segments.batch_index] + Q + P + segments.slot,
                       flat=segments.batch_index * (h * w) + grid.pos)

    def _grid_base(self, tokens: Tensor, segments: Segments, grid: TokenGrid) -> Tensor:
        """``(B * h * w, C)`` rows of the feature grid before the active tokens are
        written in: the exited tokens' normalised hidden states at exit (zeros when
        every token is active: every row is overwritten). The same for every
        prediction of one forward, so computed once."""
        if grid.frozen is not None:
            return self.norm(grid.frozen).to(tokens.dtype)
        h, w = grid.size
        return tokens.new_zeros(segments.batch_size * h * w, tokens.shape[-1])

    def predict(self, z: Tensor, lay: _Layout, grid: TokenGrid,
                base: Tensor) -> Tuple[Tensor, Tensor]:
        """Mask logits ``(B, Q, 4h, 4w)`` and class logits ``(B, Q, K + 1)`` from the
        normalised packed joint sequence ``z`` and the grid rows ``base``
        (:meth:`_grid_base`)."""
        B, Q = lay.query_dest.shape
        h, w = grid.size
        queries = z[lay.query_dest]  # (B, Q, C)
        class_logits = self.class_predictor(queries)
        feat = base.to(z.dtype).index_put((lay.flat,), z[lay.token_dest])
        fmap = feat.view(B, h, w, -1).permute(0, 3, 1, 2)
        for layer in self.upscale:
            fmap = layer(fmap)
        mask_logits = torch.einsum('bqc,bchw->bqhw', self.mask_head(queries), fmap)
        return mask_logits, class_logits

    def _attention_mask(self, mask_logits: Tensor, prob: Tensor, lay: _Layout,
                        segments: Segments, grid: TokenGrid) -> Tensor:
        """``(B, 1, L, L)`` bool mask of a masked query block (padded layout)."""
        B, Q = lay.query_dest.shape
        P = grid.prefix.shape[1]
        inside = F.interpolate(mask_logits, size=grid.size, mode='bilinear').flatten(2) > 0
        tok_pos = segments.pad(grid.pos, value=0)  # (B, n_max)
        inside = inside.gather(2, tok_pos[:, None, :].expand(-1, Q, -1))  # (B, Q, n_max)
        free = torch.rand(B, Q, device=inside.device) > prob  # queries not masked
        inside = inside | free[..., None]
        valid = lay.joint.valid_mask()  # (B, L)
        L = valid.shape[1]
        mask = valid[:, None, :].expand(B, L, L).clone()
        mask[:, :Q, Q + P:] &= inside
        return mask[:, None]

    def forward_tokens(self, tokens: Tensor, segments: Segments,
                       grid: Optional[TokenGrid] = None) -> EoMTOutput:
        """Query blocks + predictions on the packed active tokens.

        Args:
            tokens (Tensor): ``(T, C)`` packed active patch tokens.
            segments (Segments): their image boundaries.
            grid (TokenGrid): positions, grid size, prefix tokens and the hidden
                states of exited tokens (the stage loop passes it).

        Returns:
            EoMTOutput: per-token scores, class and mask logits of every prediction.
        """
        if grid is None:
            raise ValueError('EoMTHead needs grid= (a TokenGrid): run it through the '
                             'DToP stage loop (DToPEncoderDecoder)')
        B = segments.batch_size
        lay = self._layout(segments, grid)
        query = self.query.weight.to(tokens.dtype)[None].expand(B, -1, -1)
        prefix = grid.prefix.to(tokens.dtype)
        z = tokens.new_zeros(lay.joint.total, tokens.shape[-1]).index_put(
            (torch.cat([lay.query_dest.reshape(-1), lay.prefix_dest.reshape(-1),
                        lay.token_dest]),),
            torch.cat([query.reshape(-1, query.shape[-1]),
                       prefix.reshape(-1, prefix.shape[-1]), tokens]))
        base = self._grid_base(tokens, segments, grid)
        masks, classes = [], []
        probs = self.attn_mask_probs.tolist()
        for i, block in enumerate(self.blocks):
            if self.training or probs[i] > 0:
                mask_logits, class_logits = self.predict(self.norm(z), lay, grid, base)
                masks.append(mask_logits)
                classes.append(class_logits)
                attn = self._attention_mask(mask_logits.detach(), self.attn_mask_probs[i],
                                            lay, segments, grid)
                z = lay.joint.unpad(block(lay.joint.pad(z), attn))
            else:
                z = block.forward_packed(z, lay.joint, self.attention_backend)
        mask_logits, class_logits = self.predict(self.norm(z), lay, grid, base)
        masks.append(mask_logits)
        classes.append(class_logits)
        h, w = grid.size
        active = torch.zeros(B * h * w, dtype=torch.bool, device=tokens.device)
        active[lay.flat] = True
        cell = F.avg_pool2d(mask_logits, self.upscale_factor)  # (B, Q, h, w)
        scores = self._scores(class_logits, cell).flatten(2)  # (B, K, h*w)
        per_token = scores.transpose(1, 2).reshape(B * h * w, -1)[lay.flat]  # (T, K)
        return EoMTOutput(per_token, class_logits, mask_logits=masks,
                          class_logits=classes, active=active.view(B, h, w))

    @staticmethod
    def _scores(class_logits: Tensor, mask_logits: Tensor) -> Tensor:
        """``sum_q softmax(class_q)[:K] * sigmoid(mask_q)``: class logits
        ``(..., Q, K + 1)``, mask logits ``(..., Q, *S)`` → ``(..., K, *S)``."""
        p = class_logits.softmax(-1)[..., :-1]
        spatial = mask_logits.shape[class_logits.dim() - 1:]
        m = mask_logits.sigmoid().flatten(class_logits.dim() - 1)
        out = torch.einsum('...qk,...qs->...ks', p, m)
        return out.reshape(out.shape[:-1] + spatial)

    # ------------------------------------------------------ stage contract
    def token_probs(self, out: HeadOutput, segments: Segments) -> Tensor:
        """``(T, K)`` per-token semantic scores in ``[0, 1]``."""
        return out.token_values

    def canvas_values(self, out: HeadOutput, segments: Segments, space: str) -> Tensor:
        if space != 'probs':
            raise ValueError(f'EoMTHead cannot write a {space!r} canvas')
        return out.token_values

    def final_map(self, out: HeadOutput, canvas: Tensor) -> Tensor:
        """``(B, K, h, w)``: the score canvas (EoMT's scores at active tokens, the
        frozen scores of the exit heads elsewhere); :meth:`final_pixels` refines
        active pixels with EoMT's full-resolution masks."""
        return canvas

    def to_pixels(self, seg_map: Tensor, size: Sequence[int],
                  patch_size: Optional[int] = None) -> Tensor:
        """A bilinear resize of a token-grid map to ``size``."""
        return F.interpolate(seg_map, size=tuple(int(s) for s in size), mode='bilinear',
                             align_corners=False)

    def final_pixels(self, out: EoMTOutput, final_map: Tensor, size: Sequence[int],
                     patch_size: int) -> Tensor:
        """The final ``(B, K, H, W)`` map: EoMT's semantic scores (mask logits
        resized to the pixels, then ``softmax(class)[:K] * sigmoid``) at pixels of
        active tokens, the resized score canvas at pixels of exited tokens."""
        size = tuple(int(s) for s in size)
        dtype = torch.promote_types(final_map.dtype, torch.float32)  # fp32 or better
        # in fp32 under autocast too, like the other heads' final maps
        with torch.autocast(final_map.device.type, enabled=False):
            masks = F.interpolate(out.mask_logits[-1].to(dtype), size=size, mode='bilinear',
                                  align_corners=False)
            seg = self._scores(out.image_values.to(dtype), masks)
            if bool(out.active.all()):
                return seg
            active = F.interpolate(out.active[:, None].float(), size=size,
                                   mode='nearest') > 0
            return torch.where(active, seg, self.to_pixels(final_map.to(dtype), size))

    def loss_by_canvas(self, out: EoMTOutput, canvas: Tensor, batch_data_samples,
                       patch_size: int) -> Dict[str, Tensor]:
        """Mask-classification losses of every prediction (intermediate ones as
        ``block{i}.loss_*``), against the ground truth at label resolution."""
        seg_label = torch.stack([s.gt_sem_seg.data for s in batch_data_samples]).squeeze(1)
        losses: Dict[str, Tensor] = {}
        last = len(out.mask_logits) - 1
        for i, (masks, classes) in enumerate(zip(out.mask_logits, out.class_logits)):
            prefix = '' if i == last else f'block{i}.'
            for k, v in self.loss_decode(masks, classes, seg_label).items():
                losses[prefix + k] = v
        return losses

    # ------------------------------------------------------------- cost
    def cost(self) -> HeadCost:
        """FLOPs of :meth:`forward_tokens` and :meth:`final_pixels` at inference (see
        :meth:`cost_of`), read from the built modules."""
        mlp = self.blocks[0].mlp
        return self.cost_of(self.in_channels, self.num_classes, len(self.blocks),
                            self.num_queries, mlp.hidden_features, mlp.ffn_type,
                            len(self.upscale))

    @classmethod
    def cost_of(cls, in_channels: int, num_classes: int, num_blocks: int = 4,
                num_queries: int = 100, ffn_channels: Optional[int] = None,
                ffn_type: str = 'mlp', num_upscale_layers: int = 2) -> HeadCost:
        """:class:`HeadCost` of an EoMT head of these dims at inference (masked
        attention annealed off: one prediction, after the last block).

        The polynomial is in ``m = n + P``: the ``P`` prefix tokens are the
        backbone's, so the head declares ``with_prefix_tokens`` and the cost model
        adds the backbone's count. With width ``C``, ``Q`` queries, ``K`` classes:

        * each of the ``num_blocks`` blocks is a pre-norm ViT layer on ``Q + m``
          tokens (FFN ``2 C F``, SwiGLU ``3 C F``; layer scale is free);
        * the prediction: ``norm`` ``5 C (Q + m)``, class head ``Q C (K + 1)``, mask
          MLP ``3 Q C^2``;
        * per cell of the full ``h x w`` grid (:attr:`HeadCost.per_grid_token`):
          scale layer ``i`` at ``4^i`` pixels per cell (transposed conv ``C^2``,
          depthwise conv ``9 C``, LayerNorm ``5 C`` each), the mask einsum
          ``Q C`` per pixel at stride 4, the token scores ``Q K`` (the 4x4
          average pool is free);
        * pixel steps: the ``Q`` mask logits resized to the crop, ``Q K`` per pixel
          for the semantic scores;
        * once tokens exited (:attr:`HeadCost.if_exited`): ``norm`` on every grid
          cell of the frozen states (``5 C``), and at the crop a nearest resize of
          the active mask (1 per pixel) and the bilinear resize of the ``K`` canvas
          maps. (In a batch, every image pays these once any image has an exit;
          the cost model, per image, charges them to images with exits.)

        No mmseg counterpart.
        """
        C, K, Q, L = in_channels, num_classes, num_queries, num_blocks
        hidden = ffn_channels if ffn_channels is not None else (
            swiglu_hidden(C, 4.0) if ffn_type == 'swiglu' else 4 * C)
        block = vit_layer_coeffs(C, hidden, extra_tokens=Q, ffn_type=ffn_type)
        grid = sum(4 ** i * (C * C + 9 * C + layer_norm_flops(1, C))
                   for i in range(1, num_upscale_layers + 1))
        grid += 4 ** num_upscale_layers * Q * C + Q * K
        exited = HeadCost(num_classes=K, per_grid_token=layer_norm_flops(1, C),
                          pixel_steps=(ResizeStep(0, CROP, per_pixel=1), ResizeStep(K, CROP)),
                          name=cls.__name__)
        return HeadCost(num_classes=K,
                        per_image=(L * block[0] + layer_norm_flops(Q, C) + Q * C * (K + 1)
                                   + 3 * Q * C * C),
                        per_token=L * block[1] + layer_norm_flops(1, C),
                        per_token_sq=L * block[2],
                        pixel_steps=(ResizeStep(Q, CROP, per_pixel=Q * K), ),
                        name=cls.__name__, with_prefix_tokens=True, per_grid_token=grid,
                        if_exited=exited)
