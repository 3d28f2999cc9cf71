"""Building blocks shared by the architectures.

Backbones are written here because torchvision has no CPU wheel for this project's torch. Their
module and parameter names are exactly torchvision's (``conv1``, ``bn1``, ``layer1.0.conv1``,
``layer1.0.downsample.0``, ``fc``; VGG ``features.N`` / ``classifier.N`` with torchvision's
indices), so a torchvision ImageNet state dict loads by name with ``load_state_dict(strict=False)``;
truncated backbones simply report the keys of the parts they dropped as unexpected.

Everything here is ONNX-exportable (opset 17+): no in-place ops on views, no data-dependent
Python control flow.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# ---------------------------------------------------------------------------------- ResNet


def _conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)


def _conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """torchvision's ResNet basic block (ResNet18/34)."""

    expansion = 1

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """torchvision's ResNet V1.5 bottleneck (stride on the 3x3 conv; ResNet50/101/152)."""

    expansion = 4

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1 = _conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU()
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """torchvision-named ResNet, optionally truncated after ``num_stages`` residual stages.

    ``forward_features``: [N, 3, H, W] -> feature map [N, C, H/2^(stages+1), W/2^(stages+1)]
    (C = ``out_channels``). ``forward``: global average pool -> [N, C], then ``fc`` when
    ``num_classes`` is given. ``num_stages < 4`` drops ``layer4`` onwards (no pooling/fc needed
    by the caller); ``num_classes=None`` drops ``fc``.
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: tuple[int, ...],
        num_stages: int = 4,
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        if not 1 <= num_stages <= 4:
            raise ValueError(f"ResNet num_stages must be 1..4, got {num_stages}.")
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        widths = (64, 128, 256, 512)
        self.num_stages = num_stages
        for i in range(num_stages):
            stage = self._make_layer(block, widths[i], layers[i], stride=1 if i == 0 else 2)
            setattr(self, f"layer{i + 1}", stage)
        self.out_channels = widths[num_stages - 1] * block.expansion
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(self.out_channels, num_classes) if num_classes else None
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_layer(
        self, block: type[BasicBlock] | type[Bottleneck], planes: int, blocks: int, stride: int
    ) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                _conv1x1(self.inplanes, planes * block.expansion, stride),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """[N, 3, H, W] -> [N, out_channels, h, w]."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[N, 3, H, W] -> pooled [N, out_channels] (or logits [N, num_classes] with ``fc``)."""
        x = torch.flatten(self.avgpool(self.forward_features(x)), 1)
        return x if self.fc is None else self.fc(x)


def resnet18(num_stages: int = 4, num_classes: int | None = None) -> ResNet:
    """ResNet18 with torchvision's names; 112x112 input -> layer3 256x7x7, layer4 512x4x4."""
    return ResNet(BasicBlock, (2, 2, 2, 2), num_stages=num_stages, num_classes=num_classes)


def resnet50(num_stages: int = 4, num_classes: int | None = None) -> ResNet:
    """ResNet50 (V1.5) with torchvision's names; pooled output 2048-d."""
    return ResNet(Bottleneck, (3, 4, 6, 3), num_stages=num_stages, num_classes=num_classes)


# ---------------------------------------------------------------------------------- VGG


class ExportableAdaptiveAvgPool2d(nn.Module):
    """``nn.AdaptiveAvgPool2d`` that also exports to ONNX when the output is not a divisor of the
    input (e.g. VGG's 7x7 pool over the 3x3 map of a 112x112 face).

    torch's ONNX exporter only handles adaptive pooling when the input size is a multiple of the
    output size; otherwise this computes torch's exact bins (``[floor(i*H/h), ceil((i+1)*H/h))``)
    as two constant averaging matrices. The spatial size is static for a fixed crop, so the
    matrices become constants in the exported graph.
    """

    def __init__(self, output_size: int | tuple[int, int]) -> None:
        super().__init__()
        if isinstance(output_size, int):
            output_size = (output_size, output_size)
        self.output_size = tuple(output_size)

    @staticmethod
    def _matrix(n_in: int, n_out: int, like: torch.Tensor) -> torch.Tensor:
        rows = []
        for i in range(n_out):
            start = (i * n_in) // n_out
            end = -((-(i + 1) * n_in) // n_out)
            rows.append([1.0 / (end - start) if start <= j < end else 0.0 for j in range(n_in)])
        return torch.tensor(rows, dtype=like.dtype, device=like.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[N, C, H, W] -> [N, C, oh, ow]."""
        h, w = int(x.shape[-2]), int(x.shape[-1])
        oh, ow = self.output_size
        if h % oh == 0 and w % ow == 0:
            return F.adaptive_avg_pool2d(x, self.output_size)
        ph = self._matrix(h, oh, x)  # [oh, H]
        pw = self._matrix(w, ow, x)  # [ow, W]
        return torch.matmul(torch.matmul(ph, x), pw.transpose(0, 1))

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}"


#: torchvision's VGG16 configuration "D".
_VGG16_CFG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M",
)  # fmt: skip


class VGG(nn.Module):
    """torchvision-named VGG (no batch norm): ``features.N``, ``avgpool``, ``classifier.N``.

    ``classifier_layers`` keeps the first that many classifier modules with torchvision's
    indices: 7 = full (fc8 logits), 5 = up to the fc7 ReLU (4096-d features, the usual
    "VGG16 features" of the CNN-LSTM seed), 2 = up to the fc6 ReLU.
    """

    def __init__(
        self,
        cfg: tuple[int | str, ...] = _VGG16_CFG,
        classifier_layers: int = 7,
        num_classes: int = 1000,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(in_ch, int(v), kernel_size=3, padding=1), nn.ReLU()]
                in_ch = int(v)
        self.features = nn.Sequential(*layers)
        self.avgpool = ExportableAdaptiveAvgPool2d((7, 7))
        full = [
            nn.Linear(512 * 7 * 7, 4096),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(4096, 4096),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(4096, num_classes),
        ]
        self.classifier = nn.Sequential(*full[:classifier_layers])
        self.out_features = 4096 if classifier_layers < 7 else num_classes
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[N, 3, H, W] -> [N, out_features]."""
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def vgg16(classifier_layers: int = 7, dropout: float = 0.5) -> VGG:
    """VGG16 with torchvision's names; ``classifier_layers=5`` ends at the fc7 ReLU (4096-d)."""
    return VGG(_VGG16_CFG, classifier_layers=classifier_layers, dropout=dropout)


# ---------------------------------------------------------------------------------- sequence


class AttentionPool(nn.Module):
    """Learned attention pooling over a set/sequence (Ilse et al. / Bahdanau scoring).

    score_i = w^T tanh(W x_i + b); weights = softmax over the tokens; output = sum_i w_i x_i.
    [B, L, C] -> [B, C]. The scorer has no final bias: softmax ignores a constant shift.
    """

    def __init__(self, dim: int, hidden: int | None = None) -> None:
        super().__init__()
        hidden = hidden or max(dim // 2, 1)
        self.proj = nn.Linear(dim, hidden)
        self.score = nn.Linear(hidden, 1, bias=False)

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        """[B, L, C] -> attention weights [B, L] (sum to 1 over L)."""
        return torch.softmax(self.score(torch.tanh(self.proj(x))).squeeze(-1), dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, L, C] -> [B, C]."""
        return torch.bmm(self.weights(x).unsqueeze(1), x).squeeze(1)


class CausalConv1d(nn.Module):
    """Dilated 1-D convolution with left zero padding: output length == input length, and
    step t only sees steps <= t. [B, C_in, T] -> [B, C_out, T]."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, dilation: int = 1) -> None:
        super().__init__()
        self.left = (kernel_size - 1) * dilation
        self.conv = nn.Conv1d(in_ch, out_ch, kernel_size, dilation=dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (self.left, 0)))


class TemporalConvNet(nn.Module):
    """Causal dilated TCN: 1x1 input projection to ``channels``, then one residual block per
    dilation (causal conv -> ReLU -> dropout, added to its input).

    With kernel 3 and dilations 1, 2, 4, 8, 16 the receptive field is 63 steps, more than a
    32-sample window. [B, T, C_in] -> [B, T, channels].
    """

    def __init__(
        self,
        in_dim: int,
        channels: int = 128,
        kernel_size: int = 3,
        dilations: tuple[int, ...] = (1, 2, 4, 8, 16),
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.proj = nn.Conv1d(in_dim, channels, kernel_size=1)
        self.blocks = nn.ModuleList(
            CausalConv1d(channels, channels, kernel_size, dilation=d) for d in dilations
        )
        self.act = nn.ReLU()
        self.drop = nn.Dropout(dropout)

    @property
    def receptive_field(self) -> int:
        return 1 + sum(block.left for block in self.blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, T, C_in] -> [B, T, channels]."""
        y = self.proj(x.transpose(1, 2))
        for block in self.blocks:
            y = y + self.drop(self.act(block(y)))
        return y.transpose(1, 2)


class SelfAttention(nn.Module):
    """Multi-head self-attention written out in plain ops (batch_first).

    Parameters are named exactly like ``nn.MultiheadAttention`` (``in_proj_weight``,
    ``in_proj_bias``, ``out_proj``), so state dicts are interchangeable. Unlike
    ``nn.MultiheadAttention`` it has no inference fast path (``_native_multi_head_attention``),
    which the ONNX exporter cannot handle, so train, eval and ONNX run the same math.
    [B, L, d] -> [B, L, d].
    """

    def __init__(self, d_model: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by num_heads ({num_heads}).")
        self.num_heads = num_heads
        self.head_dim = d_model // num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * d_model, d_model))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * d_model))
        self.out_proj = nn.Linear(d_model, d_model)
        self.attn_drop = nn.Dropout(dropout)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)  # [B, L, 3d]
        qkv = qkv.view(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # [B, h, L, dh]
        scores = torch.matmul(q, k.transpose(-2, -1)) * (self.head_dim**-0.5)
        attn = self.attn_drop(torch.softmax(scores, dim=-1))
        out = torch.matmul(attn, v).transpose(1, 2).reshape(b, n, d)
        return self.out_proj(out)


class EncoderLayer(nn.Module):
    """Pre-norm Transformer encoder layer (GELU); same parameter names as
    ``nn.TransformerEncoderLayer(norm_first=True)``. [B, L, d] -> [B, L, d]."""

    def __init__(self, d_model: int, num_heads: int, dim_feedforward: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = SelfAttention(d_model, num_heads, dropout)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.dropout1(self.self_attn(self.norm1(x)))
        ff = self.linear2(self.dropout(F.gelu(self.linear1(self.norm2(x)))))
        return x + self.dropout2(ff)


class TransformerEncoder(nn.Module):
    """Stack of pre-norm layers plus a final LayerNorm; state-dict compatible with
    ``nn.TransformerEncoder(nn.TransformerEncoderLayer(..., batch_first=True, norm_first=True,
    activation="gelu"), num_layers, norm=nn.LayerNorm(d))``. [B, L, d] -> [B, L, d]."""

    def __init__(
        self, d_model: int, num_layers: int, num_heads: int, dim_feedforward: int, dropout: float
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            EncoderLayer(d_model, num_heads, dim_feedforward, dropout) for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return self.norm(x)


def transformer_encoder(
    d_model: int, num_layers: int, num_heads: int, dim_feedforward: int, dropout: float
) -> TransformerEncoder:
    """The pre-norm Transformer encoder used by the architectures. [B, L, d] -> [B, L, d]."""
    return TransformerEncoder(d_model, num_layers, num_heads, dim_feedforward, dropout)


def keep(x: torch.Tensor, flags: torch.Tensor) -> torch.Tensor:
    """``x`` where ``flags > 0``, exact zeros elsewhere (flags broadcast against ``x``).

    The modality gate: a dropped or missing branch becomes exactly zero, even if its input held
    NaN or inf (``0 * nan`` would be nan). Gradients flow only through kept entries.
    """
    return torch.where(flags > 0, x, torch.zeros_like(x))


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (optionally only those with ``requires_grad``)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
