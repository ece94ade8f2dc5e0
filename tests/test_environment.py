"""The stack imports as the README promises and DToP registers into mmseg."""
import subprocess
import sys


def test_stack_imports_in_a_fresh_interpreter():
    code = ('import torch, torchvision, mmcv.ops, mmseg.models, mmpretrain, dtop; '
            'from mmseg.registry import MODELS; '
            'names = ["DToPVisionTransformer", "ATMPruneHead", "DToPEncoderDecoder", '
            '"ATMLoss"]; missing = [n for n in names if MODELS.get(n) is None]; '
            'assert not missing, missing; '
            'import mmcv; assert mmcv.__version__ == "2.1.0"; '
            'from mmcv.ops import nms; print("ok")')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith('ok')


def test_mmcv_compiled_ops_run_on_cpu():
    import torch
    from mmcv.ops import nms
    boxes = torch.tensor([[0., 0., 10., 10.], [1., 1., 10., 10.], [20., 20., 30., 30.]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    _, keep = nms(boxes, scores, iou_threshold=0.5)
    assert keep.tolist() == [0, 2]
