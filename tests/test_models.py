from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tune_losses.config import ConfigError, ModelConfig, validate_experiment
from tune_losses.models import build_model


@pytest.mark.parametrize(
    ("arch", "encoder"),
    [
        ("Unet", "resnet18"),
        ("FPN", "resnet18"),
        ("DeepLabV3Plus", "resnet18"),
        ("PSPNet", "resnet18"),
        ("UnetPlusPlus", "tu-mobilenetv3_small_050"),
        ("Segformer", "resnet18"),
    ],
)
def test_any_arch_gets_an_aux_head_at_label_size(arch: str, encoder: str) -> None:
    model = build_model(ModelConfig(arch=arch, encoder=encoder), num_classes=3).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 96))
    assert set(out) == {"decode", "aux"}
    assert out["decode"].shape == out["aux"].shape == (2, 3, 64, 96)


def test_no_aux_head_means_decode_only() -> None:
    model = build_model(ModelConfig(encoder="resnet18", aux_head=False), num_classes=2).eval()
    with torch.no_grad():
        assert set(model(torch.randn(1, 3, 32, 32))) == {"decode"}


def test_aux_stage_picks_the_encoder_feature() -> None:
    model = build_model(ModelConfig(encoder="resnet18", aux_stage=3), num_classes=2)
    first = model.aux.block[0]
    assert first.in_channels == model.net.encoder.out_channels[3] == 128
    with pytest.raises(ValueError, match="model.aux_stage"):
        build_model(ModelConfig(encoder="resnet18", aux_stage=9), num_classes=2)


def test_local_encoder_weights_are_loaded(tmp_path: Path) -> None:
    source = build_model(ModelConfig(encoder="resnet18"), num_classes=2)
    path = tmp_path / "encoder.pth"
    torch.save(source.net.encoder.state_dict(), path)
    model = build_model(ModelConfig(encoder="resnet18", encoder_weights=str(path)), 2)
    for a, b in zip(source.net.encoder.parameters(), model.net.encoder.parameters(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="no such file"):
        build_model(ModelConfig(encoder="resnet18", encoder_weights=str(tmp_path / "x.pth")), 2)


def test_default_encoder_weights_are_none() -> None:
    assert ModelConfig().encoder_weights is None


def test_unknown_names_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="model.encoder: unknown SMP encoder 'resnet181'"):
        validate_experiment({"model": {"encoder": "resnet181"}})
