"""DToP encoder-decoder: runs the stages, prunes between them, assembles the map.

Data flow (spec §2): ``backbone.embed`` → for each stage ``s``: backbone layers of
``s`` over the active tokens → head ``s`` (auxiliary heads first, the decode head
last) → canvas update at the active positions → pruning rule → compaction of the
still-active tokens. The final map is ``P_final(c) * sigmoid(canvas)`` for every
token, where an exited token keeps the mask logits of its exit stage.

Active tokens are carried as a padded batch: ``x`` ``(B, n, C)`` with ``valid``
``(B, n)`` (False = padding) and ``pos`` ``(B, n)`` (grid index of each slot; the
padding slots point at a scratch column ``N``). ``n`` is the largest active count
in the batch, so each later layer costs ∝ active tokens, not the full grid.
"""
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from mmengine.config import ConfigDict
from mmengine.model import ModuleList
from mmseg.models.segmentors import EncoderDecoder
from mmseg.registry import MODELS
from mmseg.utils import OptSampleList, SampleList
from torch import Tensor

from ..pruning.rule import class_presence, compact, select_exits, token_scores
from ..utils import grid_to_pixels


@dataclass
class StageOutputs:
    """What one stage-wise pass returns (no state is kept on the modules).

    Attributes:
        head_outputs: per stage, ``(cls_logits (B, Q, 2), canvas (B, Q, h, w))``,
            or ``None`` where the head was skipped (see ``heads_run``).
        grid: token grid ``(h, w)``.
        active_counts: ``(B, S)`` tokens processed by each stage's layers and head.
        exit_stage: ``(B, h, w)`` stage whose head gave each token's final mask
            logits (``S - 1`` for tokens that never exited).
        features: per stage, dense ``(B, C, h, w)`` features (only if asked for;
            an exited token keeps its feature from its exit stage).
    """
    head_outputs: List[Tuple[Tensor, Tensor]]
    grid: Tuple[int, int]
    active_counts: Tensor
    exit_stage: Tensor
    features: List[Tensor] = field(default_factory=list)
    heads_run: Tuple[bool, ...] = ()

    def final_probs(self) -> Tensor:
        """``(B, Q, h, w)``: final head's class presence times sigmoid(canvas)."""
        cls_logits, canvas = self.head_outputs[-1]
        return class_presence(cls_logits)[..., None, None] * canvas.sigmoid()


def _scatter_columns(canvas: Tensor, values: Tensor, pos: Tensor) -> Tensor:
    """Out-of-place ``canvas[b, :, pos[b, j]] = values[b, :, j]``.

    ``pos`` may point at column ``N`` (= ``canvas.shape[-1]``) for padding slots;
    those writes are dropped. Unwritten columns keep their autograd history.
    """
    B, Q, N = canvas.shape
    ext = torch.cat([canvas, canvas.new_zeros(B, Q, 1)], dim=2)
    ext = ext.scatter(2, pos.unsqueeze(1).expand(-1, Q, -1), values)
    return ext[..., :N]


@MODELS.register_module()
class DToPEncoderDecoder(EncoderDecoder):
    """Encoder-decoder with dynamic token pruning between stages.

    Args:
        backbone (dict): a :class:`DToPVisionTransformer` config.
        decode_head (dict): the final-stage :class:`ATMPruneHead`.
        auxiliary_head (list[dict]): one :class:`ATMPruneHead` per earlier stage,
            in stage order (``len(out_indices) - 1`` of them).
        prune_threshold (float | list | None): ``p0`` per auxiliary stage (a
            single number applies to all). A value ``>= 1`` or ``None`` disables
            pruning at that stage. A list may also carry the final stage's value
            (ignored: nothing follows the final head).
        keep_topk_per_class (int): ``k``, the confident tokens kept per class.
        train_cfg, test_cfg, data_preprocessor, pretrained, init_cfg: as mmseg.
            ``test_cfg`` may set ``crop_batch_size`` (slide mode: crops run
            together per forward, default 4).
    """

    def __init__(self,
                 backbone: dict,
                 decode_head: dict,
                 auxiliary_head: Optional[Sequence[dict]] = None,
                 prune_threshold: Union[float, Sequence[Optional[float]], None] = 1.0,
                 keep_topk_per_class: int = 5,
                 neck: Optional[dict] = None,
                 train_cfg: Optional[dict] = None,
                 test_cfg: Optional[dict] = None,
                 data_preprocessor: Optional[dict] = None,
                 pretrained: Optional[str] = None,
                 init_cfg: Optional[dict] = None) -> None:
        if neck is not None:
            raise ValueError('DToPEncoderDecoder does not support a neck: heads read '
                             'the active backbone tokens directly.')
        if isinstance(auxiliary_head, dict):
            auxiliary_head = [auxiliary_head]
        super().__init__(backbone=backbone, decode_head=decode_head,
                         auxiliary_head=list(auxiliary_head or []),
                         train_cfg=train_cfg, test_cfg=test_cfg,
                         data_preprocessor=data_preprocessor,
                         pretrained=pretrained, init_cfg=init_cfg)
        self.test_cfg = ConfigDict(test_cfg or dict(mode='whole'))
        if not hasattr(self.backbone, 'stage_ranges'):
            raise TypeError('DToPEncoderDecoder needs a stage-wise backbone such as '
                            f'DToPVisionTransformer, got {type(self.backbone).__name__}.')
        num_stages = self.backbone.num_stages
        num_aux = len(self.auxiliary_head) if self.with_auxiliary_head else 0
        if num_aux != num_stages - 1:
            raise ValueError(
                f'backbone out_indices {self.backbone.out_indices} define {num_stages} '
                f'stages, so {num_stages - 1} auxiliary heads are needed; got {num_aux}.')
        embed_dims = self.backbone.embed_dims if hasattr(self.backbone, 'embed_dims') \
            else self.backbone.pos_embed.shape[-1]
        for i, head in enumerate(self.stage_heads):
            if head.in_channels != embed_dims:
                raise ValueError(f'head {i} has in_channels={head.in_channels} but the '
                                 f'backbone width is {embed_dims}.')
            if head.num_classes != self.decode_head.num_classes:
                raise ValueError('all heads need the same num_classes; head '
                                 f'{i} has {head.num_classes}, the decode head '
                                 f'{self.decode_head.num_classes}.')
        self.prune_threshold = self._parse_thresholds(prune_threshold, num_stages)
        if not isinstance(keep_topk_per_class, int) or keep_topk_per_class < 0:
            raise ValueError(f'keep_topk_per_class must be an int >= 0, got '
                             f'{keep_topk_per_class!r}.')
        self.keep_topk_per_class = keep_topk_per_class

    def _init_auxiliary_head(self, auxiliary_head) -> None:
        """Like mmseg's, but in an mmengine ``ModuleList`` so that
        ``init_weights`` reaches the auxiliary heads (mmseg's ``nn.ModuleList``
        silently skips them, leaving PyTorch's default init)."""
        if auxiliary_head:
            self.auxiliary_head = ModuleList(MODELS.build(cfg) for cfg in auxiliary_head)

    @staticmethod
    def _parse_thresholds(value, num_stages: int) -> List[Optional[float]]:
        if value is None or isinstance(value, (int, float)):
            values = [value] * (num_stages - 1)
        else:
            values = list(value)
            if len(values) == num_stages:
                values = values[:-1]  # the final stage's threshold has no effect
            if len(values) != num_stages - 1:
                raise ValueError(f'prune_threshold needs {num_stages - 1} values (one per '
                                 f'auxiliary stage), got {list(value)}.')
        out = []
        for v in values:
            if v is not None and (not isinstance(v, (int, float)) or v < 0):
                raise ValueError(f'prune_threshold values must be numbers in [0, 1] '
                                 f'(>= 1 or None disables pruning), got {v!r}.')
            out.append(None if v is None or v >= 1 else float(v))
        return out

    @property
    def stage_heads(self) -> list:
        """Heads in stage order: auxiliary heads, then the decode head."""
        aux = list(self.auxiliary_head) if self.with_auxiliary_head else []
        return aux + [self.decode_head]

    @property
    def prunes(self) -> bool:
        """Whether any stage can prune."""
        return any(t is not None for t in self.prune_threshold)

    # ------------------------------------------------------------------ core
    def run_stages(self, inputs: Tensor, with_features: bool = False,
                   all_heads: bool = False) -> StageOutputs:
        """The stage loop: backbone stage → head → canvas → pruning → compaction.

        At inference an auxiliary head whose stage does not prune (threshold
        ``None``) is skipped: nothing exits there, so the next head overwrites
        every canvas column it would write, and the output is unchanged. A BASE
        model (``p0 = 1``) therefore costs exactly backbone + final head.

        Args:
            inputs (Tensor): ``(B, 3, H, W)`` normalised images.
            with_features (bool): also return dense per-stage features.
            all_heads (bool): run every head even where it cannot change the
                output (training always does; ``test_cfg.skip_idle_aux_heads=False``
                does it too).

        Returns:
            StageOutputs: head outputs, statistics and optional features.
        """
        x, (h, w) = self.backbone.embed(inputs)
        B, N, C = x.shape
        heads = self.stage_heads
        S = len(heads)
        pos: Optional[Tensor] = None  # (B, n) grid index per slot; None = identity
        valid: Optional[Tensor] = None  # (B, n) False = padding; None = all real
        canvas: Optional[Tensor] = None
        exit_stage = torch.full((B, N + 1), S - 1, dtype=torch.long, device=x.device)
        counts, head_outputs, features, heads_run = [], [], [], []
        dense = None
        skip_idle = not (all_heads or self.training
                         or not self.test_cfg.get('skip_idle_aux_heads', True))
        for s, (start, end) in enumerate(self.backbone.stage_ranges):
            x = self.backbone.forward_layers(x, start, end, valid)
            counts.append(valid.sum(1) if valid is not None else
                          torch.full((B,), x.shape[1], dtype=torch.long, device=x.device))
            threshold = self.prune_threshold[s] if s < S - 1 else None
            run_head = not (skip_idle and s < S - 1 and threshold is None)
            heads_run.append(run_head)
            if run_head:
                cls_logits, mask_logits = heads[s](x, valid)
                if pos is None:
                    canvas = mask_logits
                else:
                    canvas = _scatter_columns(canvas, mask_logits, pos)
                head_outputs.append((cls_logits, canvas.reshape(B, -1, h, w)))
            else:
                head_outputs.append(None)
            if with_features:
                # (B, C, N) layout: an exited token keeps its exit-stage feature.
                if pos is None:
                    dense = x.transpose(1, 2)
                else:
                    dense = _scatter_columns(dense, x.transpose(1, 2), pos)
                features.append(dense.reshape(B, C, h, w))
            if threshold is None:
                continue
            with torch.no_grad():
                exits = self.select_stage_exits(s, cls_logits, mask_logits, valid,
                                                threshold)
                if not bool(exits.any()):
                    continue
                slot_pos = pos if pos is not None else \
                    torch.arange(N, device=x.device).expand(B, N)
                exit_stage.scatter_(1, slot_pos, torch.where(
                    exits, s, exit_stage.gather(1, slot_pos)))
                keep = ~exits if valid is None else (valid & ~exits)
                order, new_valid = compact(keep)
                pos = torch.where(new_valid, slot_pos.gather(1, order), N)
            x = x.gather(1, order.unsqueeze(-1).expand(-1, -1, C))
            valid = None if bool(new_valid.all()) else new_valid
        return StageOutputs(head_outputs=head_outputs, grid=(h, w),
                            active_counts=torch.stack(counts, dim=1),
                            exit_stage=exit_stage[:, :N].reshape(B, h, w),
                            features=features, heads_run=tuple(heads_run))

    def select_stage_exits(self, stage: int, cls_logits: Tensor, mask_logits: Tensor,
                           valid: Optional[Tensor], threshold: float) -> Tensor:
        """Which active tokens exit after ``stage`` (the DToP rule, spec §2.2).

        The one place the stage loop asks for the pruning decision; override it
        to change the rule (e.g. the benchmark's fixed keep ratio). Called under
        ``torch.no_grad()`` for stages whose threshold is not None.

        Args:
            stage (int): index of the auxiliary stage that just ran.
            cls_logits (Tensor): ``(B, Q, 2)`` class logits of its head.
            mask_logits (Tensor): ``(B, Q, n)`` mask logits of the active slots.
            valid (Tensor, optional): ``(B, n)`` bool, False for padding slots.
            threshold (float): ``p0`` of this stage.

        Returns:
            Tensor: ``(B, n)`` bool, True for slots that exit now (never padding).
        """
        return select_exits(token_scores(cls_logits, mask_logits), threshold,
                            self.keep_topk_per_class, valid)

    # ---------------------------------------------------------- mmseg API
    def extract_feat(self, inputs: Tensor) -> List[Tensor]:
        """Dense per-stage features ``(B, C, h, w)`` (pruning applied)."""
        return self.run_stages(inputs, with_features=True).features

    def encode_decode(self, inputs: Tensor, batch_img_metas: List[dict]) -> Tensor:
        """Final class probabilities ``(B, Q, H, W)`` at the input size."""
        return self._encode_decode_with_stats(inputs)[0]

    def _encode_decode_with_stats(self, inputs: Tensor) -> Tuple[Tensor, StageOutputs]:
        out = self.run_stages(inputs)
        probs = grid_to_pixels(out.final_probs(), inputs.shape[-2:],
                               self.backbone.patch_size, self.align_corners)
        return probs, out

    def _forward(self, inputs: Tensor, data_samples: OptSampleList = None) -> Tensor:
        """Tensor mode: final probabilities ``(B, Q, H, W)``."""
        return self.encode_decode(inputs, [])

    def loss(self, inputs: Tensor, data_samples: SampleList) -> Dict[str, Tensor]:
        """Losses of all heads (``aux_{i}.*`` and ``decode.*``) and keep ratios."""
        out = self.run_stages(inputs)
        losses = {}
        heads = self.stage_heads
        for s, head in enumerate(heads):
            prefix = 'decode' if s == len(heads) - 1 else f'aux_{s}'
            head_losses = head.loss_by_feat(out.head_outputs[s], data_samples,
                                            patch_size=self.backbone.patch_size)
            for k, v in head_losses.items():
                losses[f'{prefix}.{k}'] = v
        if self.prunes:
            N = out.grid[0] * out.grid[1]
            ratios = out.active_counts.float().mean(0) / N
            for s in range(1, ratios.numel()):
                losses[f'prune.keep_ratio_s{s}'] = ratios[s].detach()
        return losses

    def predict(self, inputs: Tensor, data_samples: OptSampleList = None) -> SampleList:
        """Predict with slide or whole inference; attaches per-image statistics.

        Each returned sample carries metainfo ``dtop_stats``: ``token_counts``
        ``(num_crops, S)`` active tokens per stage and crop, ``grid_tokens`` (full
        grid per crop), ``crop_shape``, and ``exit_map`` ``(H, W)`` uint8, the
        stage each input pixel's token exited at (the latest over overlapping
        slide crops, at the padded input size).
        """
        if data_samples is not None:
            batch_img_metas = [ds.metainfo for ds in data_samples]
        else:
            batch_img_metas = [dict(ori_shape=inputs.shape[2:], img_shape=inputs.shape[2:],
                                    pad_shape=inputs.shape[2:], padding_size=[0, 0, 0, 0])
                               ] * inputs.shape[0]
        seg_logits, stats = self.inference_with_stats(inputs, batch_img_metas)
        results = self.postprocess_result(seg_logits, data_samples)
        for ds, st in zip(results, stats):
            ds.set_metainfo(dict(dtop_stats=st))
        return results

    def inference(self, inputs: Tensor, batch_img_metas: List[dict]) -> Tensor:
        return self.inference_with_stats(inputs, batch_img_metas)[0]

    def inference_with_stats(self, inputs: Tensor,
                             batch_img_metas: List[dict]) -> Tuple[Tensor, List[dict]]:
        """Whole or slide inference returning probabilities and statistics."""
        mode = self.test_cfg.get('mode', 'whole')
        if mode == 'slide':
            return self._slide_inference(inputs)
        if mode != 'whole':
            raise ValueError(f'test_cfg.mode must be "whole" or "slide", got {mode!r}.')
        probs, out = self._encode_decode_with_stats(inputs)
        exit_map = grid_to_pixels(out.exit_stage[:, None].float(), inputs.shape[-2:],
                                  self.backbone.patch_size, mode='nearest')[:, 0]
        N = out.grid[0] * out.grid[1]
        stats = [dict(token_counts=out.active_counts[b:b + 1].cpu(),
                      grid_tokens=N, crop_shape=tuple(inputs.shape[-2:]),
                      heads_run=out.heads_run,
                      exit_map=exit_map[b].round().to(torch.uint8).cpu())
                 for b in range(inputs.shape[0])]
        return probs, stats

    def slide_inference(self, inputs: Tensor, batch_img_metas: List[dict]) -> Tensor:
        return self._slide_inference(inputs)[0]

    def whole_inference(self, inputs: Tensor, batch_img_metas: List[dict]) -> Tensor:
        return self.encode_decode(inputs, batch_img_metas)

    def _slide_inference(self, inputs: Tensor) -> Tuple[Tensor, List[dict]]:
        """mmseg's sliding-window inference with crops batched together.

        Windows are placed exactly as in mmseg's ``slide_inference``; the crops of
        all images run ``crop_batch_size`` at a time (each crop prunes on its own).
        """
        h_stride, w_stride = self.test_cfg.stride
        h_crop, w_crop = self.test_cfg.crop_size
        crop_batch = int(self.test_cfg.get('crop_batch_size', 4))
        B, _, H, W = inputs.shape
        h_grids = max(H - h_crop + h_stride - 1, 0) // h_stride + 1
        w_grids = max(W - w_crop + w_stride - 1, 0) // w_stride + 1
        windows = []
        for hi in range(h_grids):
            for wi in range(w_grids):
                y2 = min(hi * h_stride + h_crop, H)
                x2 = min(wi * w_stride + w_crop, W)
                windows.append((max(y2 - h_crop, 0), max(x2 - w_crop, 0), y2, x2))
        crops = torch.stack([inputs[:, :, y1:y2, x1:x2] for y1, x1, y2, x2 in windows],
                            dim=1).flatten(0, 1)  # (B * n_win, 3, hc, wc), image-major
        probs, counts, exits = [], [], []
        heads_run = ()
        for i in range(0, crops.shape[0], crop_batch):
            p, out = self._encode_decode_with_stats(crops[i:i + crop_batch])
            heads_run = out.heads_run
            probs.append(p)
            counts.append(out.active_counts)
            exits.append(grid_to_pixels(out.exit_stage[:, None].float(), p.shape[-2:],
                                        self.backbone.patch_size, mode='nearest'))
        n_win = len(windows)
        probs = torch.cat(probs).unflatten(0, (B, n_win))
        exits = torch.cat(exits).unflatten(0, (B, n_win))
        counts = torch.cat(counts).unflatten(0, (B, n_win))
        preds = inputs.new_zeros((B, self.out_channels, H, W))
        # Where crops overlap, a pixel shows the latest stage any crop kept its
        # token to (an average would show stages that no crop used).
        exit_max = inputs.new_zeros((B, 1, H, W))
        count_mat = inputs.new_zeros((B, 1, H, W))
        for j, (y1, x1, y2, x2) in enumerate(windows):
            preds[:, :, y1:y2, x1:x2] += probs[:, j]
            exit_max[:, :, y1:y2, x1:x2] = torch.maximum(exit_max[:, :, y1:y2, x1:x2],
                                                         exits[:, j])
            count_mat[:, :, y1:y2, x1:x2] += 1
        seg = preds / count_mat
        exit_map = exit_max[:, 0]
        hc, wc = crops.shape[-2:]
        p = self.backbone.patch_size
        grid_tokens = -(-hc // p) * -(-wc // p)
        stats = [dict(token_counts=counts[b].cpu(), grid_tokens=grid_tokens,
                      crop_shape=(hc, wc), heads_run=heads_run,
                      exit_map=exit_map[b].round().to(torch.uint8).cpu())
                 for b in range(B)]
        return seg, stats
