"""Worker for test_ddp_find_unused.py (run by torchrun, 2 gloo processes).

Builds a tiny DToP model with pruning live, wraps it in mmengine's
``MMDistributedDataParallel`` with ``find_unused_parameters`` False and True, and
runs a few training steps through ``train_step`` (the Runner's path) for each of
three exit regimes:

* ``threshold``: the paper's rule with a low ``p0`` (0.3): some tokens exit;
* ``one_image_empty``: on rank 1 every token of the first image exits after stage
  1 (the other image and rank 0 keep all theirs);
* ``all_exit``: ``p0=0, k=0``: every token of every image exits after stage 1, so
  the later stages run on no token at all.

Rank 0 writes a JSON summary to argv[1]: per case, the losses, everyone's keep
ratios and checksums of the final parameters; a step that fails is recorded with
its error.
"""
import json
import logging
from datetime import timedelta
import os
import sys
import traceback

import torch
import torch.distributed as dist

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from mmengine.logging import MMLogger  # noqa: E402
from mmengine.model import MMDistributedDataParallel  # noqa: E402
from mmengine.optim import OptimWrapper  # noqa: E402
from mmengine.structures import PixelData  # noqa: E402
from mmseg.registry import MODELS  # noqa: E402
from mmseg.structures import SegDataSample  # noqa: E402
from mmseg.utils import register_all_modules  # noqa: E402

import dtop  # noqa: E402,F401
from dtop.models.pruning.policies import ExitPolicy  # noqa: E402
from dtop.utils.launch import resolve_find_unused_parameters  # noqa: E402
from tests.utils.tiny_models import tiny_model_cfg  # noqa: E402

NUM_CLASSES = 5
STEPS = 3


def batch(rank, step, size=64):
    g = torch.Generator().manual_seed(1000 * rank + step)
    inputs, samples = [], []
    for _ in range(2):
        inputs.append(torch.randint(0, 256, (3, size, size), generator=g, dtype=torch.uint8))
        label = torch.randint(0, NUM_CLASSES, (1, size, size), generator=g)
        ds = SegDataSample(gt_sem_seg=PixelData(data=label))
        ds.set_metainfo(dict(img_shape=(size, size), ori_shape=(size, size),
                             pad_shape=(size, size)))
        samples.append(ds)
    return dict(inputs=inputs, data_samples=samples)


class ImagesExit(ExitPolicy):
    """Every token of the given images exits after the first stage."""

    def __init__(self, images):
        self.images = list(images)

    def prunes_at(self, stage):
        return stage == 0

    def __call__(self, stage, scores, segments):
        exits = torch.zeros(scores.shape[0], dtype=torch.bool, device=scores.device)
        for b in self.images:
            exits |= segments.batch_index == b
        return exits


def build(case, rank):
    torch.manual_seed(0)
    threshold, topk = dict(threshold=(0.3, 5), all_exit=(0.0, 0)).get(case, (1.0, 5))
    cfg = tiny_model_cfg('segvit', num_classes=NUM_CLASSES, prune_threshold=threshold,
                         keep_topk_per_class=topk)
    cfg['data_preprocessor']['size'] = (64, 64)  # training batches are padded to it
    model = MODELS.build(cfg)
    model.init_weights()
    with torch.no_grad():  # confident heads: tokens exit from the first step
        for head in model.stage_heads:
            head.class_embed.bias.copy_(torch.tensor([2.5, -2.5]))
    if case == 'one_image_empty':
        model.set_exit_policy(ImagesExit([0] if rank == 1 else []))
    return model


def run_case(rank, case, find_unused):
    model = build(case, rank)
    decided = resolve_find_unused_parameters(None, model)
    ddp = MMDistributedDataParallel(module=model, device_ids=None, broadcast_buffers=False,
                                    find_unused_parameters=find_unused)
    optim = OptimWrapper(torch.optim.SGD(ddp.parameters(), lr=0.1))
    losses, ratios = [], []
    try:
        for step in range(STEPS):
            log = ddp.train_step(batch(rank, step), optim)
            losses.append(float(log['loss']))
            ratios.append([float(log.get(f'prune.keep_ratio_s{s}', 1.0)) for s in (1, 2)])
    except Exception as exc:  # noqa: BLE001 (recorded for the test)
        return dict(error=f'{type(exc).__name__}: {exc}'[:500],
                    trace=traceback.format_exc()[-2000:])
    params = torch.cat([p.detach().flatten() for p in model.parameters()])
    # everyone's keep ratios, to know that an image lost all its tokens somewhere
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, ratios)
    return dict(losses=losses, ratios=gathered, decided=decided,
                checksum=float(params.double().sum()),
                abs_checksum=float(params.double().abs().sum()))


def main():
    out_path = sys.argv[1]
    register_all_modules(init_default_scope=True)
    MMLogger.get_current_instance().setLevel(logging.WARNING)  # no init_weights report
    # a short timeout: a DDP step that waits for a gradient that never comes fails
    # the test in a minute instead of hanging for half an hour
    dist.init_process_group('gloo', timeout=timedelta(seconds=60))
    rank = dist.get_rank()
    results = {}
    for case in ('threshold', 'one_image_empty', 'all_exit'):
        for find_unused in (False, True):
            results[f'{case}/find_unused={find_unused}'] = run_case(rank, case, find_unused)
            dist.barrier()
    if rank == 0:
        with open(out_path, 'w') as f:
            json.dump(results, f, indent=1)
    dist.destroy_process_group()


if __name__ == '__main__':
    main()
