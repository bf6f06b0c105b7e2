"""ResNet-18/34/50/101 with torchvision's parameter names, and the multi-scale wrapper.

torchvision cannot be imported on our machines, so the network is written here; its
state_dict keys (`conv1`, `bn1`, `layer1.0.conv1`, `layer2.0.downsample.0`, ...) equal
torchvision's, so ImageNet weights saved by torchvision load from a local file.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple, Type, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgedet.nn.frozen_bn import FrozenBatchNorm2d
from edgedet.registry import BACKBONES

NormLayer = Callable[[int], nn.Module]


def _conv3x3(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int, downsample: Optional[nn.Module], norm: NormLayer, dilation: int = 1):
        super().__init__()
        self.conv1 = _conv3x3(cin, planes, stride)
        self.bn1 = norm(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes, dilation=dilation)
        self.bn2 = norm(planes)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """ResNet v1.5: the stride sits on the 3x3 convolution."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int, downsample: Optional[nn.Module], norm: NormLayer, dilation: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = norm(planes)
        self.conv2 = _conv3x3(planes, planes, stride, dilation)
        self.bn2 = norm(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = norm(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """ResNet body without the classifier (no `fc`, no `avgpool`)."""

    def __init__(
        self,
        block: Type[Union[BasicBlock, Bottleneck]],
        layers: Sequence[int],
        norm: NormLayer,
        dilate_last: bool = False,
        base_width: int = 64,
    ):
        super().__init__()
        w = base_width
        self.conv1 = nn.Conv2d(3, w, 7, stride=2, padding=3, bias=False)
        self.bn1 = norm(w)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self._cin = w
        self.layer1 = self._make_layer(block, w, layers[0], 1, norm)
        self.layer2 = self._make_layer(block, 2 * w, layers[1], 2, norm)
        self.layer3 = self._make_layer(block, 4 * w, layers[2], 2, norm)
        self.layer4 = self._make_layer(block, 8 * w, layers[3], 1 if dilate_last else 2, norm, 2 if dilate_last else 1)
        self.channels = [k * w * block.expansion for k in (1, 2, 4, 8)]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _make_layer(self, block, planes: int, blocks: int, stride: int, norm: NormLayer, dilation: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self._cin != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self._cin, planes * block.expansion, 1, stride=stride, bias=False), norm(planes * block.expansion)
            )
        mods = [block(self._cin, planes, stride, downsample, norm)]
        self._cin = planes * block.expansion
        mods += [block(self._cin, planes, 1, None, norm, dilation) for _ in range(1, blocks)]
        return nn.Sequential(*mods)

    def forward_features(self, x: Tensor) -> List[Tensor]:
        """[B, 3, H, W] -> [layer1, layer2, layer3, layer4] outputs (strides 4, 8, 16, 32)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        outs = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            outs.append(x)
        return outs


# name -> (block, blocks per stage, base width). The torchvision ResNets load ImageNet weights;
# `resnet10_slim` (one block per stage, half width, ~1.2 M parameters) is for tiny models
# trained from scratch, such as the embedded demo detector.
_SPECS = {
    "resnet18": (BasicBlock, [2, 2, 2, 2], 64),
    "resnet34": (BasicBlock, [3, 4, 6, 3], 64),
    "resnet50": (Bottleneck, [3, 4, 6, 3], 64),
    "resnet101": (Bottleneck, [3, 4, 23, 3], 64),
    "resnet10_slim": (BasicBlock, [1, 1, 1, 1], 32),
}


def _make_resnet(name: str) -> Callable[..., ResNet]:
    def build(frozen_bn: bool = True, dilation: bool = False) -> ResNet:
        block, layers, width = _SPECS[name]
        norm = FrozenBatchNorm2d if frozen_bn else nn.BatchNorm2d
        return ResNet(block, layers, norm, dilate_last=dilation, base_width=width)

    build.__name__ = name
    return build


for _name in _SPECS:
    BACKBONES.register(_name)(_make_resnet(_name))


def check_shapes(own: dict, state: dict, source: str, hint: str) -> None:
    """One line for tensors whose shape differs (torch's load_state_dict prints one line per tensor)."""
    shape = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if shape:
        k = shape[0]
        raise ValueError(f"{source} does not fit: {len(shape)} tensors have another shape (e.g. {k}: file "
                         f"{list(state[k].shape)}, model {list(own[k].shape)}); {hint}")


def load_torchvision_weights(resnet: ResNet, path: Union[str, Path]) -> None:
    """Load an ImageNet state_dict saved by torchvision (`fc.*` ignored) from a local file."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(
            f"backbone weights not found: {p}. Pass a local torchvision-format .pth file (nothing is downloaded)."
        )
    from edgedet.checkpoints.safe_load import safe_torch_load

    state = safe_torch_load(p)  # never runs a pickle's code; one-line errors for empty, truncated, foreign files
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{p} holds no state_dict of tensors; pass a torchvision-format ImageNet ResNet .pth")
    own = resnet.state_dict()
    # fc is the ImageNet classifier; BatchNorm step counters are absent from a frozen-BN model.
    state = {k: v for k, v in state.items() if not k.startswith("fc.")
             and not (k.endswith("num_batches_tracked") and k not in own)}
    check_shapes(own, state, f"{p}", "a ResNet of another depth or width: pass the ImageNet weights of this backbone")
    missing, unexpected = resnet.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ValueError(
            f"{p} is not a torchvision-format weight file for this ResNet: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
        )


class Backbone(nn.Module):
    """ResNet returning selected stages with their downsampled padding masks.

    `return_layers` indexes layer1..layer4 as 1..4 (e.g. (2, 3, 4) = strides 8/16/32).
    Parameters live under `body.` (`backbone.body.layer1...` in a model).
    """

    def __init__(
        self,
        name: str = "resnet50",
        return_layers: Sequence[int] = (4,),
        train_backbone: bool = True,
        frozen_bn: bool = True,
        dilation: bool = False,
        weights: Optional[str] = None,
    ):
        super().__init__()
        self.body: ResNet = BACKBONES.get(name)(frozen_bn=frozen_bn, dilation=dilation)
        if weights:
            load_torchvision_weights(self.body, weights)
        self.return_layers = tuple(return_layers)
        self.num_channels = [self.body.channels[i - 1] for i in self.return_layers]
        self.strides = [4 * 2 ** (i - 1) for i in self.return_layers]
        if dilation and 4 in self.return_layers:
            self.strides[-1] //= 2
        # With ImageNet weights the stem and layer1 stay frozen, as in every DETR recipe; a
        # randomly initialised backbone (trained from scratch) must train all of its layers.
        for pname, param in self.body.named_parameters():
            frozen_stem = weights is not None and not any(pname.startswith(f"layer{i}") for i in (2, 3, 4))
            if not train_backbone or frozen_stem:
                param.requires_grad_(False)

    def forward(self, images: Tensor, mask: Optional[Tensor] = None) -> List[Tuple[Tensor, Tensor]]:
        """images [B, 3, H, W], mask [B, H, W] True at padding -> [(features [B, C, h, w], mask [B, h, w])]."""
        if mask is None:
            mask = torch.zeros(images.shape[0], images.shape[2], images.shape[3], dtype=torch.bool, device=images.device)
        feats = self.body.forward_features(images)
        out = []
        for i in self.return_layers:
            f = feats[i - 1]
            m = F.interpolate(mask[None].float(), size=f.shape[-2:]).to(torch.bool)[0]
            out.append((f, m))
        return out
