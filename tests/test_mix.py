"""LossMix: parts and total, schedules, skipped zero-weight terms, class weights, heads."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tune_losses.losses import (
    LOSSES,
    LossMix,
    LossOutput,
    TermSpec,
    boundary,
    class_weights_from_frequencies,
    cross_entropy,
    dice,
    focal,
    lovasz_softmax,
    register_loss,
    validate_loss,
)

IGNORE = 255
CALLS: list[int] = []


def counting_term(
    logits: torch.Tensor, target: torch.Tensor, *, scale: float = 1.0, ignore_index: int = 255
) -> torch.Tensor:
    """A user term (also reachable by dotted path) that records each call."""
    CALLS.append(1)
    return logits.float().mean() * scale


@pytest.fixture
def counting():
    register_loss("test_counting")(counting_term)
    CALLS.clear()
    yield CALLS
    del LOSSES["test_counting"]


@pytest.fixture
def batch():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 8, 8, generator=gen)
    target = torch.randint(0, 4, (2, 8, 8), generator=gen)
    target[0, :2] = IGNORE
    return logits, target


FIVE = {
    "ce": {"weight": 1.0},
    "focal": {"weight": 0.5, "gamma": 2.0},
    "lovasz": {"weight": {"schedule": "linear", "start": 0.0, "end": 1.0}},
    "dice": {"weight": 0.3, "smooth": 1.0},
    "boundary": {"weight": {"schedule": "step", "values": [0.0, 0.2], "milestones": [0.5]}},
}


def _focal_by_hand(logits: torch.Tensor, target: torch.Tensor, gamma: float) -> torch.Tensor:
    """Mean over kept pixels of ``-(1 - p_t)^gamma log p_t`` (Lin et al. 2017), no alpha."""
    kept = target != IGNORE
    log_p = torch.log_softmax(logits, 1).permute(0, 2, 3, 1)[kept]
    log_pt = log_p.gather(1, target[kept][:, None])[:, 0]
    return (-((1 - log_pt.exp()) ** gamma) * log_pt).mean()


def _dice_by_hand(logits: torch.Tensor, target: torch.Tensor, smooth: float) -> torch.Tensor:
    """``1 - (2 I + s) / (P + Y + s)`` per class over the kept pixels of the batch, averaged
    over the classes the batch's labels hold."""
    kept = target != IGNORE
    p = torch.softmax(logits, 1).permute(0, 2, 3, 1)[kept]
    y = torch.nn.functional.one_hot(target[kept], logits.shape[1]).float()
    inter, pred, label = (p * y).sum(0), p.sum(0), y.sum(0)
    return (1 - (2 * inter + smooth) / (pred + label + smooth))[label > 0].mean()


def test_total_is_sum_of_weighted_parts(batch):
    logits, target = batch
    mix = LossMix({"decode": FIVE})
    out = mix({"decode": logits}, target, progress=0.75)
    assert isinstance(out, LossOutput)
    # at progress 0.75: lovasz linear 0 -> 1 is 0.75, boundary past its 0.5 milestone is 0.2;
    # CE from torch, focal and Dice by their formulas, Lovasz and Boundary standalone
    expected = (
        1.0 * torch.nn.functional.cross_entropy(logits, target, ignore_index=IGNORE)
        + 0.5 * _focal_by_hand(logits, target, gamma=2.0)
        + 0.75 * lovasz_softmax(logits, target)
        + 0.3 * _dice_by_hand(logits, target, smooth=1.0)
        + 0.2 * boundary(logits, target)
    )
    torch.testing.assert_close(out.total, expected)
    assert out.weights == pytest.approx(
        {
            "decode/ce": 1.0,
            "decode/focal": 0.5,
            "decode/lovasz": 0.75,
            "decode/dice": 0.3,
            "decode/boundary": 0.2,
        }
    )
    standalone = {
        "decode/ce": cross_entropy(logits, target),
        "decode/focal": focal(logits, target, gamma=2.0),
        "decode/lovasz": lovasz_softmax(logits, target),
        "decode/dice": dice(logits, target, smooth=1.0),
        "decode/boundary": boundary(logits, target),
    }
    for key, value in standalone.items():
        torch.testing.assert_close(out.parts[key], out.weights[key] * value)


def test_schedules_follow_progress(batch):
    logits, target = batch
    mix = LossMix({"decode": FIVE})
    for progress, lovasz_w, boundary_w in [(0.0, 0.0, 0.0), (0.5, 0.5, 0.2), (1.0, 1.0, 0.2)]:
        out = mix({"decode": logits}, target, progress)
        assert out.weights["decode/lovasz"] == lovasz_w
        assert out.weights["decode/boundary"] == boundary_w


def test_zero_weight_skips_the_computation(batch, counting):
    logits, target = batch
    spec = {
        "decode": {
            "test_counting": {
                "weight": {"schedule": "step", "values": [0.0, 2.0], "milestones": [0.5]}
            }
        }
    }
    mix = LossMix(spec)
    out = mix({"decode": logits.requires_grad_()}, target, 0.2)
    assert counting == [] and out.parts["decode/test_counting"].item() == 0.0
    out.total.backward()  # all weights 0: the total still has a graph
    assert out.total.item() == 0.0 and logits.grad.abs().max() == 0
    out = mix({"decode": logits}, target, 0.8)
    assert counting == [1]
    torch.testing.assert_close(out.total, 2.0 * logits.mean())


def test_user_term_by_dotted_path(batch):
    logits, target = batch
    mix = LossMix(
        {"decode": {"mine": {"weight": 1.0, "term": "test_mix:counting_term", "scale": 3.0}}}
    )
    out = mix({"decode": logits}, target, 0.0)
    torch.testing.assert_close(out.parts["decode/mine"], 3.0 * logits.mean())


def test_two_heads_and_renamed_terms(batch):
    logits, target = batch
    aux = logits.flip(1)
    spec = {
        "decode": {"ce": {"weight": 1.0}},
        "aux": {
            "ce": {"weight": {"schedule": "linear", "start": 0.5, "end": 0.1}},
            "ohem": {"weight": 1.0, "term": "ce", "ohem_thresh": 0.5, "ohem_min_kept": 10},
        },
    }
    out = LossMix(spec)({"decode": logits, "aux": aux}, target, 0.5)
    torch.testing.assert_close(out.parts["aux/ce"], 0.3 * cross_entropy(aux, target))
    torch.testing.assert_close(
        out.parts["aux/ohem"], cross_entropy(aux, target, ohem_thresh=0.5, ohem_min_kept=10)
    )
    assert set(out.parts) == {"decode/ce", "aux/ce", "aux/ohem"}
    with pytest.raises(ValueError, match="no output 'aux'"):
        LossMix(spec)({"decode": logits}, target, 0.5)


def test_class_weights_resolved_once_and_logged(batch):
    logits, target = batch
    freqs = np.array([100.0, 50.0, 25.0, 25.0])
    spec = {
        "decode": {
            "ce": {"weight": 1.0, "class_weights": "sqrt_inverse"},
            "focal": {"weight": 1.0, "class_weights": [1.0, 2.0, 3.0, 4.0]},
        }
    }
    mix = LossMix(spec, class_frequencies=freqs)
    out = mix({"decode": logits}, target, 0.0)
    w = class_weights_from_frequencies(freqs, "sqrt_inverse")
    torch.testing.assert_close(out.parts["decode/ce"], cross_entropy(logits, target, weight=w))
    torch.testing.assert_close(
        out.parts["decode/focal"], focal(logits, target, alpha=[1.0, 2.0, 3.0, 4.0])
    )
    described = mix.describe()["terms"]
    assert described["decode/ce"]["class_weights"] == pytest.approx(w.tolist())
    assert described["decode/focal"]["class_weights_param"] == "alpha"
    assert described["decode/ce"]["weight"] == "Constant(value=1.0)"


@pytest.mark.parametrize(
    "spec,match",
    [
        ({"decode": {"ce": {"weight": 1.0, "class_weights": "inverse"}}}, "no class_frequencies"),
        ({"decode": {"dice": {"weight": 1.0, "class_weights": "inverse"}}}, "takes no class"),
        (
            {"decode": {"ce": {"class_weights": "inverse", "weight": [1.0, 2.0]}}},
            "loss.decode.ce.weight: Input should be a valid number",
        ),
        (
            {"decode": {"ce": {"class_weights": [1.0, 2.0], "term": "focal", "alpha": 0.5}}},
            "loss.decode.ce: give class_weights or alpha, not both",
        ),
        ({"decode": {"ce": {"weight": 1.0, "gama": 2.0}}}, "loss.decode.ce.gama: Extra inputs"),
        ({"decode": {"ce": {"ignore_index": 0}}}, "loss.decode.ce.ignore_index: Extra inputs"),
        ({"decode": {"focal": {"gamma": -2.0}}}, "loss.decode.focal.gamma: .* greater than or"),
        ({"decode": {"ce": {"weight": -1}}}, "loss.decode.ce.weight: .* greater than or equal"),
        ({"decode": {"lovaz": {"weight": 1.0}}}, "did you mean 'lovasz'"),
        ({"decode": 3}, "loss.decode: expected a mapping of terms"),
        ({"decode": {}}, "every term of the loss is switched off"),
    ],
)
def test_bad_specs_raise(spec, match):
    with pytest.raises(ValueError, match=match) as info:
        LossMix(spec)
    assert "\n" not in str(info.value)


def test_validated_specs_are_trusted(batch, monkeypatch):
    # the config validates the loss once; LossMix resolves its TermSpecs without a second check
    from tune_losses.losses import spec as spec_module

    validated = validate_loss({"decode": FIVE})
    assert all(isinstance(t, TermSpec) for t in validated["decode"].values())

    def no_second_check(*args, **kwargs):
        raise AssertionError("validated twice")

    monkeypatch.setattr(spec_module, "validate_term", no_second_check)
    monkeypatch.setattr(spec_module, "validate_options", no_second_check)
    logits, target = batch
    out = LossMix(validated)({"decode": logits}, target, 0.75)
    assert set(out.parts) == {f"decode/{k}" for k in FIVE}


def test_a_switched_off_head_adds_nothing(batch):
    logits, target = batch
    out = LossMix({"decode": {"ce": {"weight": 1.0}}, "aux": {"ce": None}})(
        {"decode": logits}, target, 0.0
    )
    assert list(out.parts) == ["decode/ce"]


def test_all_ignored_batch_gives_zero_without_nan(batch):
    logits = batch[0].requires_grad_()
    target = torch.full_like(batch[1], IGNORE)
    out = LossMix({"decode": FIVE})({"decode": logits}, target, 1.0)
    out.total.backward()
    assert out.total.item() == 0.0
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().max() == 0


def test_autocast_mix_is_float32(batch):
    logits, target = batch
    mix = LossMix({"decode": FIVE})
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = mix({"decode": logits.bfloat16()}, target, 1.0)
    assert out.total.dtype == torch.float32
    torch.testing.assert_close(
        out.total, mix({"decode": logits.bfloat16().float()}, target, 1.0).total
    )


def test_uncertainty_weighting_follows_kendall(batch):
    """exp(-s) * w * L + s / 2 per term, recomputed by hand from each term alone."""
    logits, target = batch
    mix = LossMix({"weighting": "uncertainty", "decode": FIVE})
    assert mix.log_vars is not None and mix.log_vars.shape == (5,)
    with torch.no_grad():
        mix.log_vars.copy_(torch.tensor([0.5, -0.3, 0.0, 1.2, -1.0]))
    out = mix({"decode": logits}, target, progress=0.75)
    fixed = LossMix({"decode": FIVE})({"decode": logits}, target, progress=0.75)
    for s, key in zip([0.5, -0.3, 0.0, 1.2, -1.0], fixed.parts, strict=True):
        expected = math.exp(-s) * fixed.parts[key] + s / 2
        torch.testing.assert_close(out.parts[key], expected.reshape(()), rtol=1e-5, atol=1e-6)
        assert out.weights[key] == pytest.approx(math.exp(-s) * fixed.weights[key])
    torch.testing.assert_close(out.total, sum(out.parts.values()))


def test_uncertainty_log_variances_learn_toward_the_optimum(batch):
    """d/ds (exp(-s) L + s/2) = 0 at s = log(2 L): gradient steps on s alone get there."""
    logits, target = batch
    mix = LossMix({"weighting": "uncertainty", "decode": {"ce": {"weight": 1.0}}})
    loss_value = cross_entropy(logits, target).item()
    opt = torch.optim.SGD(mix.parameters(), lr=0.5)
    for _ in range(200):
        opt.zero_grad()
        mix({"decode": logits}, target, 0.0).total.backward()
        opt.step()
    assert mix.log_vars.item() == pytest.approx(math.log(2 * loss_value), abs=1e-3)


def test_uncertainty_gradcheck_float64(batch):
    logits, target = batch
    mix = LossMix({"weighting": "uncertainty", "decode": {"ce": {}, "dice": {"weight": 0.5}}})
    mix = mix.double()
    x = logits.double().requires_grad_()

    assert torch.autograd.gradcheck(
        lambda x: mix({"decode": x}, target, 0.0).total, (x,), eps=1e-6, atol=1e-5
    )
    s = mix.log_vars
    grads = torch.autograd.grad(mix({"decode": x}, target, 0.0).total, s)[0]
    ce, dice_value = cross_entropy(x, target).item(), dice(x, target).item()
    expected = [0.5 - ce, 0.5 - 0.5 * dice_value]  # at s = 0: -w * L + 1/2
    torch.testing.assert_close(grads, torch.tensor(expected, dtype=torch.float64))


def test_uncertainty_skips_a_switched_off_term_and_its_regulariser(batch):
    logits, target = batch
    spec = {
        "weighting": "uncertainty",
        "decode": {
            "ce": {},
            "dice": {"weight": {"schedule": "step", "values": [0.0, 1.0], "milestones": [0.5]}},
        },
    }
    mix = LossMix(spec)
    out = mix({"decode": logits}, target, 0.0)
    assert out.parts["decode/dice"].item() == 0.0
    out.total.backward()
    assert mix.log_vars.grad[1].item() == 0.0  # no s/2 pull while the term is off


@pytest.mark.parametrize("value", ["learned", 1, {"kind": "uncertainty"}])
def test_unknown_weighting_is_refused(value):
    with pytest.raises(ValueError, match="loss.weighting: expected one of fixed, uncertainty"):
        validate_loss({"weighting": value, "decode": {"ce": {}}})


def test_fixed_weighting_has_no_parameters():
    assert list(LossMix({"weighting": "fixed", "decode": {"ce": {}}}).parameters()) == []
    assert list(LossMix({"decode": {"ce": {}}}).parameters()) == []
