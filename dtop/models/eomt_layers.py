"""EoMT's prediction layers: the 2x scale layer of its mask upscaling and its mask MLP
(used by :class:`~dtop.models.decode_heads.EoMTHead`)."""
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a ``(B, C, H, W)`` map."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ScaleLayer(nn.Module):
    """2x upscaling: transposed conv 2x2 → GELU → depthwise conv 3x3 → LayerNorm."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.conv1 = nn.ConvTranspose2d(dim, dim, kernel_size=2, stride=2)
        self.conv2 = nn.Conv2d(dim, dim, kernel_size=3, padding=1, groups=dim, bias=False)
        self.norm = LayerNorm2d(dim, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.conv2(F.gelu(self.conv1(x))))


class MaskMLP(nn.Module):
    """Three linear layers with GELU between them (EoMT's mask head)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, dim)
        self.fc2 = nn.Linear(dim, dim)
        self.fc3 = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc3(F.gelu(self.fc2(F.gelu(self.fc1(x)))))
