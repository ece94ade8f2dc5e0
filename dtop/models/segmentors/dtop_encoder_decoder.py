"""DToP encoder-decoder: runs the stages, prunes between them, assembles the map.

Data flow (spec §2), one loop for every supported model: ``backbone.embed_packed``
→ for each stage ``s``: backbone layers of ``s`` over the packed active tokens →
head ``s`` on the stage's patch tokens (auxiliary heads first, the decode head
last) → canvas update at the active positions → pruning rule on the head's
per-token class probabilities → the still-active tokens are re-packed.

Active tokens are carried *packed* (:mod:`dtop.models.packing`): ``x`` ``(T, C)``
holds the active tokens of all images, image after image, ``pos`` ``(T,)`` the grid
index of each (``-1`` for a cls token, which never exits) and :class:`Segments` the
image boundaries. Token-wise work therefore costs the sum of active tokens; the
boundaries change once per stage (one host sync), never per layer.

Heads are used through the stage-head contract
(:mod:`dtop.models.decode_heads.stage_head`), so SegViT (ATM heads), SETR and
Segmenter prune with this loop. The canvas keeps, for every token, the values of
the stage it exited at; the final head turns it into the final map (ATM: the final
head's class presence times ``sigmoid(canvas)``; softmax heads: the canvas of
per-token log-probabilities).
"""
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Set, Tuple, Union

import torch
from mmengine.config import ConfigDict
from mmengine.model import ModuleList
from mmseg.models.segmentors import EncoderDecoder
from mmseg.registry import MODELS
from mmseg.utils import OptSampleList, SampleList
from torch import Tensor

from ..backbones.dtop_vit import CLS_POS
from ..decode_heads.stage_head import HeadOutput, is_stage_head
from ..packing import Segments
from ..pruning.options import validate_prune_threshold
from ..pruning.rule import select_exits_packed
from ..utils import grid_to_pixels

PRECISIONS = {'fp32': None, 'bf16': torch.bfloat16, 'fp16': torch.float16}


@dataclass
class StageOutputs:
    """What one stage-wise pass returns (no state is kept on the modules).

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


def _grid_view(flat: Tensor, B: int, h: int, w: int) -> Tensor:
    """``(B * h * w, C)`` → ``(B, C, h, w)`` (a view)."""
    return flat.view(B, h, w, -1).permute(0, 3, 1, 2)


@MODELS.register_module()
class DToPEncoderDecoder(EncoderDecoder):
    """Encoder-decoder with dynamic token pruning between stages.

    Args:
        backbone (dict): a :class:`DToPVisionTransformer` config.
        decode_head (dict): the final-stage head (any stage head: ATM, SETR,
            Segmenter; see :mod:`dtop.models.decode_heads.stage_head`).
        auxiliary_head (list[dict]): one stage head per earlier stage, in stage
            order (``len(out_indices) - 1`` of them).
        prune_threshold (float | list | None): ``p0`` per auxiliary stage (a
            single number applies to all). A value ``>= 1`` or ``None`` disables
            pruning at that stage. A list may also carry the final stage's value
            (ignored: nothing follows the final head).
        keep_topk_per_class (int): ``k``, the confident tokens kept per class.
        train_cfg, test_cfg, data_preprocessor, pretrained, init_cfg: as mmseg.
            ``test_cfg`` may set ``crop_batch_size`` (slide mode: crops run
            together per forward, default 4) and ``precision`` (``'fp32'``,
            ``'bf16'`` or ``'fp16'``: autocast at inference; the pruning decision
            is always made in fp32).
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
            if not is_stage_head(head):
                raise TypeError(f'head {i} ({type(head).__name__}) does not implement the '
                                'stage-head contract (dtop.models.decode_heads.stage_head); '
                                'use ATMPruneHead, DToPSETRUPHead or DToPSegmenterMaskHead.')
            if head.in_channels != embed_dims:
                raise ValueError(f'head {i} has in_channels={head.in_channels} but the '
                                 f'backbone width is {embed_dims}.')
            if head.num_classes != self.decode_head.num_classes:
                raise ValueError('all heads need the same num_classes; head '
                                 f'{i} has {head.num_classes}, the decode head '
                                 f'{self.decode_head.num_classes}.')
        self.prune_threshold = validate_prune_threshold(prune_threshold, num_stages)
        if not isinstance(keep_topk_per_class, int) or keep_topk_per_class < 0:
            raise ValueError(f'keep_topk_per_class must be an int >= 0, got '
                             f'{keep_topk_per_class!r}.')
        self.keep_topk_per_class = keep_topk_per_class
        heads = self.stage_heads
        for i, head in enumerate(heads):
            for space in self._live_spaces(i):
                if space not in head.supported_spaces:
                    raise ValueError(
                        f'head {i} ({type(head).__name__}) cannot write the {space!r} '
                        f'canvas that a later head needs (the final '
                        f'{type(heads[-1]).__name__} combines a {heads[-1].canvas_space!r} '
                        'canvas); pick auxiliary heads that support it.')
        precision = self.test_cfg.get('precision', 'fp32')
        if precision not in PRECISIONS:
            raise ValueError(f'test_cfg.precision must be one of {sorted(PRECISIONS)}, '
                             f'got {precision!r}.')

    def _init_auxiliary_head(self, auxiliary_head) -> None:
        """Like mmseg's, but in an mmengine ``ModuleList`` so that
        ``init_weights`` reaches the auxiliary heads (mmseg's ``nn.ModuleList``
        silently skips them, leaving PyTorch's default init)."""
        if auxiliary_head:
            self.auxiliary_head = ModuleList(MODELS.build(cfg) for cfg in auxiliary_head)

    @property
    def stage_heads(self) -> list:
        """Heads in stage order: auxiliary heads, then the decode head."""
        aux = list(self.auxiliary_head) if self.with_auxiliary_head else []
        return aux + [self.decode_head]

    def _live_spaces(self, stage: int) -> Set[str]:
        """Canvas spaces head ``stage`` must write: its own, those of later heads'
        losses and the final head's."""
        heads = self.stage_heads
        return {h.canvas_space for h in heads[stage:]}

    @property
    def prunes(self) -> bool:
        """Whether any stage can prune."""
        return any(t is not None for t in self.prune_threshold)

    # ------------------------------------------------------------------ core
    def run_stages(self, inputs: Tensor, with_features: bool = False,
                   all_heads: bool = False) -> StageOutputs:
        """The stage loop: backbone stage → head → canvas → pruning → re-packing.

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
            StageOutputs: head outputs, final map, statistics, optional features.
        """
        bb = self.backbone
        x, pos, segs, (h, w) = bb.embed_packed(inputs)
        B, N = inputs.shape[0], h * w
        heads = self.stage_heads
        S = len(heads)
        canvases: Dict[str, Tensor] = {}
        exit_stage = torch.full((B * N,), S - 1, dtype=torch.long, device=x.device)
        dense_feats: Optional[Tensor] = None
        counts, head_outputs, features, heads_run = [], [], [], []
        skip_idle = not (all_heads or self.training
                         or not self.test_cfg.get('skip_idle_aux_heads', True))
        for s, (start, end) in enumerate(bb.stage_ranges):
            final = s == S - 1
            x = bb.forward_layers_packed(x, segs, start, end)
            tokens, tok_pos, tok_segs = bb.head_tokens(x, pos, segs, final)
            counts.append(tok_segs.counts)
            flat = tok_segs.batch_index * N + tok_pos  # canvas row of each token
            threshold = None if final else self.prune_threshold[s]
            run_head = not (skip_idle and not final and threshold is None)
            heads_run.append(run_head)
            out = None
            if run_head:
                out = heads[s].forward_tokens(tokens, tok_segs)
                for space in self._live_spaces(s):
                    values = heads[s].canvas_values(out, tok_segs, space)
                    canvas = canvases.get(space)
                    if canvas is None:
                        canvas = values.new_zeros(B * N, values.shape[-1], dtype=torch.float32)
                    canvases[space] = canvas.index_put((flat,), values.to(canvas.dtype))
                own = _grid_view(canvases[heads[s].canvas_space], B, h, w)
                head_outputs.append((out, own))
            else:
                head_outputs.append(None)
            if with_features:
                if dense_feats is None:
                    dense_feats = tokens.new_zeros(B * N, tokens.shape[-1])
                dense_feats = dense_feats.index_put((flat,), tokens)
                features.append(_grid_view(dense_feats, B, h, w).contiguous())
            if threshold is None:
                continue
            with torch.no_grad(), self._no_autocast(inputs):
                scores = heads[s].token_probs(out.float(), tok_segs)
                exits = self.select_stage_exits(s, scores, tok_segs, threshold)
            keep = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
            if bb.num_prefix_tokens:
                keep[pos != CLS_POS] = ~exits
            else:
                keep = ~exits
            lengths = torch.bincount(segs.batch_index[keep], minlength=B).tolist()
            if sum(lengths) == x.shape[0]:
                continue  # nothing exited
            exit_stage[flat[exits]] = s
            x, pos = x[keep], pos[keep]
            segs = Segments.from_lengths(lengths, x.device)
        final_out, final_canvas = head_outputs[-1]
        final_map = heads[-1].final_map(
            final_out, _grid_view(canvases[heads[-1].canvas_space], B, h, w))
        return StageOutputs(head_outputs=head_outputs, final_map=final_map, grid=(h, w),
                            active_counts=torch.stack(counts, dim=1),
                            exit_stage=exit_stage.view(B, h, w),
                            features=features, heads_run=tuple(heads_run))

    def select_stage_exits(self, stage: int, scores: Tensor, segments: Segments,
                           threshold: float) -> Tensor:
        """Which active tokens exit after ``stage`` (the DToP rule, spec §2.2).

        The one place the stage loop asks for the pruning decision; override it
        to change the rule (e.g. the benchmark's fixed keep ratio). Called under
        ``torch.no_grad()``, in fp32, for stages whose threshold is not None.

        Args:
            stage (int): index of the auxiliary stage that just ran.
            scores (Tensor): ``(T, Q)`` per-token class probabilities of its head
                (packed active patch tokens).
            segments (Segments): image boundaries of the packed tokens.
            threshold (float): ``p0`` of this stage.

        Returns:
            Tensor: ``(T,)`` bool, True for tokens that exit now.
        """
        return select_exits_packed(scores, segments, threshold, self.keep_topk_per_class)

    @staticmethod
    def _no_autocast(inputs: Tensor):
        if torch.is_autocast_enabled(inputs.device.type):
            return torch.autocast(inputs.device.type, enabled=False)
        return nullcontext()

    def _autocast(self, inputs: Tensor):
        """Autocast context of ``test_cfg.precision`` (inference only)."""
        dtype = PRECISIONS[self.test_cfg.get('precision', 'fp32')]
        if dtype is None:
            return nullcontext()
        return torch.autocast(inputs.device.type, dtype=dtype)

    # ---------------------------------------------------------- mmseg API
    def extract_feat(self, inputs: Tensor) -> List[Tensor]:
        """Dense per-stage features ``(B, C, h, w)`` (pruning applied)."""
        return self.run_stages(inputs, with_features=True).features

    def encode_decode(self, inputs: Tensor, batch_img_metas: List[dict]) -> Tensor:
        """Final map ``(B, Q, H, W)`` at the input size: class probabilities (ATM
        final head) or log-probabilities (softmax final heads)."""
        return self._encode_decode_with_stats(inputs)[0]

    def _encode_decode_with_stats(self, inputs: Tensor) -> Tuple[Tensor, StageOutputs]:
        out = self.run_stages(inputs)
        seg = self.decode_head.to_pixels(out.final_map.float(), inputs.shape[-2:],
                                         self.backbone.patch_size)
        return seg, out

    def _forward(self, inputs: Tensor, data_samples: OptSampleList = None) -> Tensor:
        """Tensor mode: the final map ``(B, Q, H, W)`` (see :meth:`encode_decode`)."""
        return self.encode_decode(inputs, [])

    def loss(self, inputs: Tensor, data_samples: SampleList) -> Dict[str, Tensor]:
        """Losses of all heads (``aux_{i}.*`` and ``decode.*``) and keep ratios."""
        out = self.run_stages(inputs)
        losses = {}
        heads = self.stage_heads
        for s, head in enumerate(heads):
            prefix = 'decode' if s == len(heads) - 1 else f'aux_{s}'
            head_out, canvas = out.head_outputs[s]
            head_losses = head.loss_by_canvas(head_out, canvas, data_samples,
                                              self.backbone.patch_size)
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
        """Whole or slide inference returning the final map and statistics.

        Runs under autocast when ``test_cfg.precision`` is ``'bf16'``/``'fp16'``;
        the returned map is fp32.
        """
        mode = self.test_cfg.get('mode', 'whole')
        if mode not in ('whole', 'slide'):
            raise ValueError(f'test_cfg.mode must be "whole" or "slide", got {mode!r}.')
        with self._autocast(inputs):
            if mode == 'slide':
                return self._slide_inference(inputs)
            seg, out = self._encode_decode_with_stats(inputs)
        exit_map = self._exit_pixels(out, inputs.shape[-2:])[:, 0]
        N = out.grid[0] * out.grid[1]
        stats = [dict(token_counts=out.active_counts[b:b + 1].cpu(),
                      grid_tokens=N, crop_shape=tuple(inputs.shape[-2:]),
                      heads_run=out.heads_run,
                      exit_map=exit_map[b].round().to(torch.uint8).cpu())
                 for b in range(inputs.shape[0])]
        return seg, stats

    def _exit_pixels(self, out: StageOutputs, size: Sequence[int]) -> Tensor:
        """``(B, 1, H, W)`` float exit stage of each pixel's token."""
        return grid_to_pixels(out.exit_stage[:, None].float(), size,
                              self.backbone.patch_size, mode='nearest')

    def slide_inference(self, inputs: Tensor, batch_img_metas: List[dict]) -> Tensor:
        return self._slide_inference(inputs)[0]

    def whole_inference(self, inputs: Tensor, batch_img_metas: List[dict]) -> Tensor:
        return self.encode_decode(inputs, batch_img_metas)

    def _slide_inference(self, inputs: Tensor) -> Tuple[Tensor, List[dict]]:
        """mmseg's sliding-window inference with crops batched together.

        Windows are placed exactly as in mmseg's ``slide_inference``; the crops of
        all images run ``crop_batch_size`` at a time (each crop prunes on its own)
        and are accumulated as soon as they are computed, so peak memory holds one
        crop batch's maps, not every window's.
        """
        h_stride, w_stride = self.test_cfg.stride
        h_crop, w_crop = self.test_cfg.crop_size
        crop_batch = int(self.test_cfg.get('crop_batch_size', 4))
        if crop_batch < 1:
            raise ValueError(f'test_cfg.crop_batch_size must be >= 1, got {crop_batch}.')
        B, _, H, W = inputs.shape
        h_grids = max(H - h_crop + h_stride - 1, 0) // h_stride + 1
        w_grids = max(W - w_crop + w_stride - 1, 0) // w_stride + 1
        windows = []
        for hi in range(h_grids):
            for wi in range(w_grids):
                y2 = min(hi * h_stride + h_crop, H)
                x2 = min(wi * w_stride + w_crop, W)
                windows.append((max(y2 - h_crop, 0), max(x2 - w_crop, 0), y2, x2))
        n_win = len(windows)
        # Crops are numbered image-major: crop i is window i % n_win of image i // n_win.
        jobs = [(b, j) for b in range(B) for j in range(n_win)]
        preds = None
        # Where crops overlap, a pixel shows the latest stage any crop kept its
        # token to (an average would show stages that no crop used).
        exit_max = inputs.new_zeros((B, 1, H, W))
        count_mat = inputs.new_zeros((B, 1, H, W))
        counts = [[None] * n_win for _ in range(B)]
        heads_run = ()
        crop_shape = None
        for i in range(0, len(jobs), crop_batch):
            chunk = jobs[i:i + crop_batch]
            crops = torch.stack([inputs[b, :, y1:y2, x1:x2] for b, j in chunk
                                 for y1, x1, y2, x2 in [windows[j]]])
            crop_shape = tuple(crops.shape[-2:])
            seg, out = self._encode_decode_with_stats(crops)
            exits = self._exit_pixels(out, crop_shape)
            heads_run = out.heads_run
            if preds is None:
                preds = inputs.new_zeros((B, seg.shape[1], H, W), dtype=torch.float32)
            for c, (b, j) in enumerate(chunk):
                y1, x1, y2, x2 = windows[j]
                preds[b, :, y1:y2, x1:x2] += seg[c]
                exit_max[b, :, y1:y2, x1:x2] = torch.maximum(exit_max[b, :, y1:y2, x1:x2],
                                                             exits[c])
                count_mat[b, :, y1:y2, x1:x2] += 1
                counts[b][j] = out.active_counts[c]
        seg = preds / count_mat
        exit_map = exit_max[:, 0]
        p = self.backbone.patch_size
        grid_tokens = -(-crop_shape[0] // p) * -(-crop_shape[1] // p)
        stats = [dict(token_counts=torch.stack(counts[b]).cpu(), grid_tokens=grid_tokens,
                      crop_shape=crop_shape, heads_run=heads_run,
                      exit_map=exit_map[b].round().to(torch.uint8).cpu())
                 for b in range(B)]
        return seg, stats
