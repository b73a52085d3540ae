"""SMP models by name, with an optional auxiliary FCN head on an encoder stage.

The model returns ``{"decode": logits, "aux": logits}`` (``aux`` only with the head),
both at the input's resolution, keyed by the loss heads of the YAML.
"""

from __future__ import annotations

from pathlib import Path

import segmentation_models_pytorch as smp
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from tune_losses.config import ModelConfig


class FCNHead(nn.Module):
    """The auxiliary head of the usual decode + auxiliary setups (PSPNet, mmseg's FCNHead):
    3x3 conv-BN-ReLU, dropout, 1x1 conv to the classes."""

    def __init__(self, in_channels: int, channels: int, num_classes: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(in_channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Dropout2d(0.1),
            nn.Conv2d(channels, num_classes, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.block(x)


class SegModel(nn.Module):
    """An SMP model plus an optional auxiliary head fed by a forward hook on its encoder,
    so that every SMP architecture works unchanged."""

    def __init__(self, net: nn.Module, aux: nn.Module | None, aux_stage: int) -> None:
        super().__init__()
        self.net = net
        self.aux = aux
        self.aux_stage = aux_stage
        self._features: list[Tensor] | None = None
        if aux is not None:
            net.encoder.register_forward_hook(self._keep_features)

    def _keep_features(self, _module: nn.Module, _inputs: object, output: list[Tensor]) -> None:
        self._features = output

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        out = {"decode": self.net(x)}
        if self.aux is not None and self._features is not None:
            aux = self.aux(self._features[self.aux_stage])
            out["aux"] = F.interpolate(aux, size=x.shape[-2:], mode="bilinear", align_corners=False)
            self._features = None
        return out


def _load_encoder_weights(net: nn.Module, path: Path) -> None:
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict) or not set(state) & set(net.encoder.state_dict()):
        raise ValueError(f"model.encoder_weights: no tensor in {path} matches the encoder")
    net.encoder.load_state_dict(state, strict=False)


def build_model(cfg: ModelConfig, num_classes: int) -> SegModel:
    """Any SMP architecture and encoder by name; ``encoder_weights`` None (no download), a
    name SMP knows, or a local ``.pth`` file of encoder weights."""
    weights = cfg.encoder_weights
    local = weights is not None and Path(weights).suffix in (".pth", ".pt", ".bin")
    try:
        net = smp.create_model(
            cfg.arch,
            encoder_name=cfg.encoder,
            encoder_weights=None if local else weights,
            classes=num_classes,
            **cfg.kwargs,
        )
    except KeyError as exc:
        raise ValueError(f"model.arch: {exc.args[0]}") from None
    if local:
        if not Path(weights).is_file():
            raise ValueError(f"model.encoder_weights: no such file {weights}")
        _load_encoder_weights(net, Path(weights))
    aux = None
    if cfg.aux_head:
        channels = net.encoder.out_channels
        if not -len(channels) < cfg.aux_stage < len(channels):
            raise ValueError(f"model.aux_stage: {cfg.aux_stage} not in encoder's {len(channels)}")
        aux = FCNHead(channels[cfg.aux_stage], cfg.aux_channels, num_classes)
    return SegModel(net, aux, cfg.aux_stage)
