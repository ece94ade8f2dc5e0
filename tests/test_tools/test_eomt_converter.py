"""tools/model_converters/eomt_to_dtop.py: a transformers EoMT saved with
``save_pretrained`` converts, loads strictly into the DToP model (auxiliary heads
aside) and predicts what transformers predicts."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip('transformers')

from mmseg.registry import MODELS  # noqa: E402

from tests.utils.tiny_models import tiny_model_cfg  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TOOL = ROOT / 'tools' / 'model_converters' / 'eomt_to_dtop.py'


def _run(*args):
    return subprocess.run([sys.executable, str(TOOL), *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def test_saved_transformers_eomt_converts_and_loads_strictly(tmp_path):
    torch.manual_seed(int.from_bytes(__import__('os').urandom(2), 'little'))
    cfg = transformers.EomtConfig(hidden_size=64, num_hidden_layers=6,
                                  num_attention_heads=4, image_size=64, patch_size=16,
                                  num_queries=8, num_register_tokens=2, num_labels=5,
                                  num_blocks=2)
    hf = transformers.EomtForUniversalSegmentation(cfg).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.1)
        hf.attn_mask_probs.zero_()
    hf.save_pretrained(tmp_path / 'hf')
    result = _run(tmp_path / 'hf', tmp_path / 'eomt.pth', '--num-heads', 4)
    assert result.returncode == 0, result.stderr
    assert '4 blocks + 2 query blocks' in result.stdout
    ckpt = torch.load(tmp_path / 'eomt.pth', weights_only=True)
    model = MODELS.build(tiny_model_cfg('eomt', num_layers=4, out_indices=(1, 3),
                                        num_blocks=2, num_queries=8))
    model.init_weights()
    missing, unexpected = model.load_state_dict(ckpt['state_dict'], strict=False)
    assert not unexpected
    assert missing and all(k.startswith('auxiliary_head.') for k in missing)
    model.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = hf(pixel_values=x)
        out = model.run_stages(x).head_outputs[-1][0]
    torch.testing.assert_close(out.mask_logits[-1], ref.masks_queries_logits,
                               rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out.image_values, ref.class_queries_logits,
                               rtol=1e-4, atol=1e-4)


def test_not_an_eomt_checkpoint_is_one_error_line(tmp_path):
    torch.save({'state_dict': {'w': torch.randn(2)}}, tmp_path / 'x.pth')
    result = _run(tmp_path / 'x.pth', tmp_path / 'out.pth')
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith('error: ') and 'EoMT' in lines[-1]
    assert not (tmp_path / 'out.pth').exists()
