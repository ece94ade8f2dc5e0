"""DToP encoder-decoder: a stage-wise backbone, one stage head per stage, an exit policy.

The segmentor builds its modules, runs the stage loop
(:func:`~dtop.models.segmentors.stage_loop.run_stage_loop`), turns the final map
into pixels, and implements mmseg's ``loss`` / ``predict`` / tensor modes on top.
It derives from mmseg's :class:`BaseSegmentor` (``forward`` dispatch and
``postprocess_result``), not from ``EncoderDecoder``, whose dense feature path it
does not use.

Who decides what:

* which tokens exit: the exit policy (``exit_policy``, a registered module from
  :mod:`dtop.models.pruning.policies`; default the paper's
  :class:`ConfidenceThreshold` built from ``prune_threshold`` and
  ``keep_topk_per_class``);
* what a head computes, writes into the canvas and costs: the head, through the
  stage-head contract (:mod:`dtop.models.decode_heads.stage_head`);
* how tokens are packed and re-packed: :mod:`dtop.models.packing`.
"""
from contextlib import nullcontext
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from mmengine.config import ConfigDict
from mmengine.model import ModuleList
from mmseg.models.segmentors.base import BaseSegmentor
from mmseg.registry import MODELS
from mmseg.utils import OptSampleList, SampleList
from torch import Tensor

from ...utils.errors import OptionError
from ..decode_heads.stage_head import is_stage_head
from ..pruning.policies import ConfidenceThreshold, ExitPolicy, build_exit_policy
from ..utils import grid_to_pixels, profile_region
from .slide import slide_windows
from .stage_loop import StageOutputs, live_spaces, run_stage_loop

PRECISIONS = {'fp32': None, 'bf16': torch.bfloat16, 'fp16': torch.float16}


@MODELS.register_module()
class DToPEncoderDecoder(BaseSegmentor):
    """Encoder-decoder with dynamic token pruning between stages.

    Args:
        backbone (dict): a stage-wise backbone config (:class:`DToPVisionTransformer`).
        decode_head (dict): the final-stage head (any stage head: ATM, SETR,
            Segmenter; see :mod:`dtop.models.decode_heads.stage_head`).
        auxiliary_head (list[dict]): one stage head per earlier stage, in stage
            order (``len(out_indices) - 1`` of them).
        prune_threshold (float | list | None): ``p0`` per auxiliary stage of the
            default exit policy (a single number applies to all). ``>= 1`` or
            ``None`` disables pruning at that stage. A list may also carry the
            final stage's value (ignored: nothing follows the final head).
        keep_topk_per_class (int): ``k`` of the default exit policy.
        exit_policy (dict, optional): another exit policy, e.g.
            ``dict(type='FixedKeepRatio', ratio=0.6)``; replaces the two keys above.
        train_cfg, test_cfg, data_preprocessor, pretrained, init_cfg: as mmseg.
            ``test_cfg``: ``mode`` (``'whole'`` or ``'slide'`` with ``crop_size``
            and ``stride``), ``crop_batch_size`` (slide crops per forward, default
            4), ``precision`` (``'fp32'``, ``'bf16'``, ``'fp16'``: autocast at
            inference; exit decisions are always made in fp32) and
            ``skip_idle_aux_heads`` (default True).
    """

    def __init__(self,
                 backbone: dict,
                 decode_head: dict,
                 auxiliary_head: Optional[Sequence[dict]] = None,
                 prune_threshold: Union[float, Sequence[Optional[float]], None] = 1.0,
                 keep_topk_per_class: int = 5,
                 exit_policy: Optional[dict] = None,
                 neck: Optional[dict] = None,
                 train_cfg: Optional[dict] = None,
                 test_cfg: Optional[dict] = None,
                 data_preprocessor: Optional[dict] = None,
                 pretrained: Optional[str] = None,
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        if neck is not None:
            raise OptionError('DToPEncoderDecoder does not support a neck: heads read '
                              'the active backbone tokens directly (remove model.neck).')
        if pretrained is not None:
            backbone = dict(backbone, init_cfg=dict(type='Pretrained', checkpoint=pretrained))
        self.backbone = MODELS.build(backbone)
        if not hasattr(self.backbone, 'stage_ranges'):
            raise TypeError('DToPEncoderDecoder needs a stage-wise backbone such as '
                            f'DToPVisionTransformer, got {type(self.backbone).__name__}.')
        self.decode_head = MODELS.build(decode_head)
        self.align_corners = self.decode_head.align_corners
        self.num_classes = self.decode_head.num_classes
        self.out_channels = self.decode_head.out_channels
        if isinstance(auxiliary_head, dict):
            auxiliary_head = [auxiliary_head]
        # mmengine's ModuleList, so that init_weights reaches the auxiliary heads
        self.auxiliary_head = ModuleList(MODELS.build(c) for c in auxiliary_head or []) \
            if auxiliary_head else None
        self.train_cfg = train_cfg
        self.test_cfg = ConfigDict(test_cfg or dict(mode='whole'))
        self._check_heads()
        if exit_policy is None:
            exit_policy = ConfidenceThreshold(prune_threshold, keep_topk_per_class)
        self.exit_policy = build_exit_policy(exit_policy, self.backbone.num_stages)
        self._check_test_cfg()

    def _check_heads(self) -> None:
        num_stages = self.backbone.num_stages
        num_aux = len(self.auxiliary_head) if self.with_auxiliary_head else 0
        if num_aux != num_stages - 1:
            raise OptionError(
                f'backbone out_indices {self.backbone.out_indices} define {num_stages} '
                f'stages, so {num_stages - 1} auxiliary heads are needed; got {num_aux}.')
        embed_dims = self.backbone.pos_embed.shape[-1]
        heads = self.stage_heads
        for i, head in enumerate(heads):
            if not is_stage_head(head):
                raise TypeError(f'head {i} ({type(head).__name__}) does not implement the '
                                'stage-head contract (dtop.models.decode_heads.stage_head); '
                                'use ATMPruneHead, DToPSETRUPHead or DToPSegmenterMaskHead.')
            if head.in_channels != embed_dims:
                raise OptionError(f'head {i} has in_channels={head.in_channels} but the '
                                  f'backbone width is {embed_dims}.')
            if head.num_classes != self.num_classes:
                raise OptionError(f'all heads need the same num_classes; head {i} has '
                                  f'{head.num_classes}, the decode head {self.num_classes}.')
            for space in live_spaces(heads, i):
                if space not in head.supported_spaces:
                    raise OptionError(
                        f'head {i} ({type(head).__name__}) cannot write the {space!r} '
                        f'canvas that a later head needs (the final '
                        f'{type(heads[-1]).__name__} combines a {heads[-1].canvas_space!r} '
                        'canvas); pick auxiliary heads that support it.')

    def _check_test_cfg(self) -> None:
        cfg = self.test_cfg
        precision = cfg.get('precision', 'fp32')
        if precision not in PRECISIONS:
            raise OptionError(f'test_cfg.precision must be one of {sorted(PRECISIONS)}, '
                              f'got {precision!r}.')
        mode = cfg.get('mode', 'whole')
        if mode not in ('whole', 'slide'):
            raise OptionError(f'test_cfg.mode must be "whole" or "slide", got {mode!r}.')
        crop_batch = cfg.get('crop_batch_size', 4)
        if isinstance(crop_batch, bool) or not isinstance(crop_batch, int) or crop_batch < 1:
            raise OptionError(f'test_cfg.crop_batch_size must be an int >= 1, got '
                              f'{crop_batch!r}.')
        if mode == 'slide':
            for key in ('crop_size', 'stride'):
                value = cfg.get(key)
                ok = isinstance(value, (list, tuple)) and len(value) == 2 and all(
                    isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
                if not ok:
                    raise OptionError(f'test_cfg.{key} must be two positive ints (h, w) in '
                                      f'slide mode, got {value!r}; e.g. '
                                      f'--cfg-options model.test_cfg.{key}="(512,512)".')

    # ------------------------------------------------------------ structure
    @property
    def stage_heads(self) -> list:
        """Heads in stage order: auxiliary heads, then the decode head."""
        aux = list(self.auxiliary_head) if self.with_auxiliary_head else []
        return aux + [self.decode_head]

    def set_exit_policy(self, policy: Union[dict, ExitPolicy]) -> ExitPolicy:
        """Replace the exit policy (a config dict or an :class:`ExitPolicy`).

        Returns:
            ExitPolicy: the new policy, bound to this model.
        """
        self.exit_policy = build_exit_policy(policy, self.backbone.num_stages)
        return self.exit_policy

    @property
    def prune_threshold(self) -> List[Optional[float]]:
        """``p0`` per auxiliary stage of a :class:`ConfidenceThreshold` policy
        (``None`` where the stage does not prune). Setting it installs a
        :class:`ConfidenceThreshold` with the current ``k``."""
        policy = self.exit_policy
        if isinstance(policy, ConfidenceThreshold):
            return list(policy.thresholds)
        raise AttributeError(f'the exit policy {policy!r} has no prune_threshold')

    @prune_threshold.setter
    def prune_threshold(self, value) -> None:
        self.set_exit_policy(ConfidenceThreshold(value, self.keep_topk_per_class))

    @property
    def keep_topk_per_class(self) -> int:
        """``k`` of a :class:`ConfidenceThreshold` policy (5 for other policies)."""
        return getattr(self.exit_policy, 'topk', 5)

    @property
    def prunes(self) -> bool:
        """Whether any stage can prune."""
        return self.exit_policy.prunes

    def unused_parameters_in_training(self) -> List[str]:
        """Names of trainable parameters that no training step uses (for DDP's
        ``find_unused_parameters``, :func:`dtop.utils.launch.ddp_wrapper_cfg`).

        A training step runs every stage's layers and every head (``loss`` sums
        all heads' losses), and a stage whose tokens have all exited still keeps
        its layers in the autograd graph (empty tensors, zero gradients), so the
        parameters used are those of the embedding, the layers of the stages, the
        final norm and the stage heads. Anything else the model holds (backbone
        layers past the last stage, extra modules) is reported.
        """
        bb = self.backbone
        used = [bb.patch_embed, *bb.layers[:bb.stage_ranges[-1][1]], *self.stage_heads]
        for name in ('pre_ln', 'ln1', 'norm'):  # mmseg ViT / DINOv2 norms
            if getattr(bb, name, None) is not None:
                used.append(getattr(bb, name))
        used_ids = {id(p) for m in used for p in m.parameters()}
        used_ids |= {id(p) for p in (getattr(bb, name, None) for name in (
            'cls_token', 'pos_embed', 'register_tokens')) if p is not None}
        return [n for n, p in self.named_parameters()
                if p.requires_grad and id(p) not in used_ids]

    # ------------------------------------------------------------------ core
    def run_stages(self, inputs: Tensor, with_features: bool = False,
                   all_heads: bool = False) -> StageOutputs:
        """One pass of the stage loop (see :func:`run_stage_loop`).

        Args:
            inputs (Tensor): ``(B, 3, H, W)`` normalised images.
            with_features (bool): also return dense per-stage features (an exited
                token keeps its feature from its exit stage).
            all_heads (bool): run every head even where it cannot change the
                output (training always does; so does
                ``test_cfg.skip_idle_aux_heads=False``).

        Returns:
            StageOutputs: head outputs, final map, statistics, optional features.
        """
        skip_idle = not self.training and self.test_cfg.get('skip_idle_aux_heads', True)
        return run_stage_loop(self.backbone, self.stage_heads, self.exit_policy, inputs,
                              with_features=with_features, all_heads=all_heads,
                              skip_idle=skip_idle)

    def _autocast(self, inputs: Tensor):
        """Autocast context of ``test_cfg.precision`` (inference only)."""
        dtype = PRECISIONS[self.test_cfg.get('precision', 'fp32')]
        if dtype is None:
            return nullcontext()
        return torch.autocast(inputs.device.type, dtype=dtype)

    def encode_decode_with_stats(self, inputs: Tensor) -> Tuple[Tensor, StageOutputs]:
        """Final map at the input size and the stage loop's outputs.

        Returns:
            tuple: ``(B, Q, H, W)`` fp32 map — class probabilities (ATM final
            head) or log-probabilities (softmax final heads) — and
            :class:`StageOutputs`.
        """
        out = self.run_stages(inputs)
        with profile_region('dtop.to_pixels'):
            seg = self.decode_head.final_pixels(out.head_outputs[-1][0], out.final_map.float(),
                                                inputs.shape[-2:], self.backbone.patch_size)
        return seg, out

    # ---------------------------------------------------------- mmseg API
    def extract_feat(self, inputs: Tensor) -> Tuple[Tensor, ...]:
        """The backbone's dense features ``(B, C, h, w)`` at ``out_indices``, no
        pruning (as mmseg's). Pruned per-stage features:
        ``run_stages(inputs, with_features=True).features``."""
        return self.backbone(inputs)

    def encode_decode(self, inputs: Tensor, batch_img_metas: Optional[List[dict]] = None
                      ) -> Tensor:
        """Final map ``(B, Q, H, W)`` at the input size (see
        :meth:`encode_decode_with_stats`)."""
        return self.encode_decode_with_stats(inputs)[0]

    def _forward(self, inputs: Tensor, data_samples: OptSampleList = None) -> Tensor:
        """Tensor mode: the final map ``(B, Q, H, W)``."""
        return self.encode_decode(inputs)

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
        grid per crop), ``crop_shape``, ``heads_run`` and ``exit_map`` ``(H, W)``
        uint8, the stage each input pixel's token exited at (the latest over
        overlapping slide crops, at the padded input size).
        """
        if data_samples is not None:
            batch_img_metas = [ds.metainfo for ds in data_samples]
        else:
            batch_img_metas = [dict(ori_shape=inputs.shape[2:], img_shape=inputs.shape[2:],
                                    pad_shape=inputs.shape[2:], padding_size=[0, 0, 0, 0])
                               ] * inputs.shape[0]
        seg_logits, stats = self.inference(inputs, batch_img_metas, return_stats=True)
        results = self.postprocess_result(seg_logits, data_samples)
        for ds, st in zip(results, stats):
            ds.set_metainfo(dict(dtop_stats=st))
        return results

    def inference(self, inputs: Tensor, batch_img_metas: List[dict],
                  return_stats: bool = False):
        """Whole or slide inference (``test_cfg.mode``) under ``test_cfg.precision``.

        Args:
            inputs (Tensor): ``(B, 3, H, W)``.
            batch_img_metas (list[dict]): image metas (unused by the model itself).
            return_stats (bool): also return the per-image statistics.

        Returns:
            Tensor | tuple: the fp32 map ``(B, Q, H, W)``, and with
            ``return_stats`` the list of per-image ``dtop_stats`` dicts.
        """
        with self._autocast(inputs):
            if self.test_cfg.get('mode', 'whole') == 'slide':
                seg, stats = self.slide_inference(inputs, batch_img_metas, True)
            else:
                seg, out = self.encode_decode_with_stats(inputs)
                exit_map = self._exit_pixels(out, inputs.shape[-2:])[:, 0]
                stats = out.stats(inputs.shape[-2:])
                for b, st in enumerate(stats):
                    st['exit_map'] = exit_map[b].round().to(torch.uint8).cpu()
        return (seg, stats) if return_stats else seg

    def _exit_pixels(self, out: StageOutputs, size: Sequence[int]) -> Tensor:
        """``(B, 1, H, W)`` float exit stage of each pixel's token."""
        return grid_to_pixels(out.exit_stage[:, None].float(), size,
                              self.backbone.patch_size, mode='nearest')

    def slide_inference(self, inputs: Tensor, batch_img_metas: List[dict],
                        return_stats: bool = False):
        """mmseg's sliding-window inference with crops batched together.

        Windows are placed exactly as in mmseg's ``slide_inference``; the crops of
        all images run ``crop_batch_size`` at a time (each crop prunes on its own)
        and are accumulated as soon as they are computed, so peak memory holds one
        crop batch's maps, not every window's. Where crops overlap, a pixel's exit
        stage is the latest any crop kept its token to.

        Returns:
            Tensor | tuple: as :meth:`inference`.
        """
        crop_batch = int(self.test_cfg.get('crop_batch_size', 4))
        B, _, H, W = inputs.shape
        windows = slide_windows((H, W), self.test_cfg.crop_size, self.test_cfg.stride)
        n_win = len(windows)
        jobs = [(b, j) for b in range(B) for j in range(n_win)]  # image-major
        preds = None
        exit_max = inputs.new_zeros((B, 1, H, W))
        count_mat = inputs.new_zeros((B, 1, H, W))
        counts = [[None] * n_win for _ in range(B)]
        out = crop_shape = None
        for i in range(0, len(jobs), crop_batch):
            chunk = jobs[i:i + crop_batch]
            crops = torch.stack([inputs[b, :, y1:y2, x1:x2] for b, j in chunk
                                 for y1, x1, y2, x2 in [windows[j]]])
            crop_shape = tuple(crops.shape[-2:])
            seg, out = self.encode_decode_with_stats(crops)
            exits = self._exit_pixels(out, crop_shape)
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
        if not return_stats:
            return seg
        common = out.stats(crop_shape)[0]  # grid_tokens, crop_shape, heads_run
        stats = [dict(common, token_counts=torch.stack(counts[b]).cpu(),
                      exit_map=exit_max[b, 0].round().to(torch.uint8).cpu())
                 for b in range(B)]
        return seg, stats
