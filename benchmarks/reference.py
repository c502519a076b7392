"""The reference implementation the speed goals are measured against.

Written from the paper's description (Johnson et al. 2016, supplementary material) and run the way
pytorch/examples' fast_neural_style runs it: fp32, eager, contiguous NCHW tensors, default threads,
reflection padding, nearest x2 upsampling with `scale_factor`, norm -> ReLU after every conv but the
last. Module names follow that example (conv1/in1, res1..res5, deconv1..3), not this project's, so
`load_project_weights` maps a project checkpoint onto it by position (and checks every shape).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from style_transfer.network import TransformerNet
from style_transfer.norms import get_norm_layer


class RefConv(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.pad = nn.ReflectionPad2d(kernel // 2)
        self.conv = nn.Conv2d(cin, cout, kernel, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.pad(x))


class RefUpsampleConv(RefConv):
    def __init__(self, cin: int, cout: int, kernel: int) -> None:
        super().__init__(cin, cout, kernel, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.interpolate(x, scale_factor=2, mode="nearest"))


class RefResidual(nn.Module):
    def __init__(self, channels: int, norm: str) -> None:
        super().__init__()
        layer = get_norm_layer(norm)
        self.conv1, self.in1 = RefConv(channels, channels, 3, 1), layer(channels)
        self.conv2, self.in2 = RefConv(channels, channels, 3, 1), layer(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.in2(self.conv2(F.relu(self.in1(self.conv1(x)))))


class ReferenceNet(nn.Module):
    """Johnson et al. 2016 for 3-channel images in [0, 1]; sizes must be multiples of 4."""

    def __init__(self, norm: str = "instance") -> None:
        super().__init__()
        layer = get_norm_layer(norm)
        self.conv1, self.in1 = RefConv(3, 32, 9, 1), layer(32)
        self.conv2, self.in2 = RefConv(32, 64, 3, 2), layer(64)
        self.conv3, self.in3 = RefConv(64, 128, 3, 2), layer(128)
        self.res = nn.Sequential(*(RefResidual(128, norm) for _ in range(5)))
        self.deconv1, self.in4 = RefUpsampleConv(128, 64, 3), layer(64)
        self.deconv2, self.in5 = RefUpsampleConv(64, 32, 3), layer(32)
        self.deconv3 = RefConv(32, 3, 9, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.in1(self.conv1(x)))
        y = F.relu(self.in2(self.conv2(y)))
        y = F.relu(self.in3(self.conv3(y)))
        y = self.res(y)
        y = F.relu(self.in4(self.deconv1(y)))
        y = F.relu(self.in5(self.deconv2(y)))
        return self.deconv3(y)


def load_project_weights(reference: ReferenceNet, model: TransformerNet) -> ReferenceNet:
    """Copy a default-config project network's weights into the reference (same order of layers)."""
    ours, theirs = model.state_dict(), reference.state_dict()
    if len(ours) != len(theirs):
        raise ValueError(f"layer count differs: project {len(ours)} tensors, reference {len(theirs)}")
    mapped = {}
    for (k_ref, v_ref), (k_ours, v_ours) in zip(theirs.items(), ours.items()):
        if v_ref.shape != v_ours.shape:
            raise ValueError(f"{k_ref} {tuple(v_ref.shape)} != {k_ours} {tuple(v_ours.shape)}")
        mapped[k_ref] = v_ours.clone()
    reference.load_state_dict(mapped)
    return reference.eval()


def bench_model(norm: str, seed: int = 0) -> TransformerNet:
    """A default-size project network with non-trivial norm parameters and batch-norm statistics
    (speed does not depend on the values, but a PSNR check needs realistic ones)."""
    from style_transfer.network import TransformerConfig

    torch.manual_seed(seed)
    model = TransformerNet(TransformerConfig(norm=norm))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1 and name.endswith("weight"):
                p.uniform_(0.5, 1.5)
        if norm == "batch":
            model.train()
            for _ in range(3):
                model(torch.rand(2, 3, 64, 64))
    return model.eval()
