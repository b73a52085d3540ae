"""The loss registry: names, list_losses, public signatures, the one check of term options."""

from __future__ import annotations

import inspect

import pytest
import torch

from tune_losses.losses import (
    LOSSES,
    cross_entropy,
    dice,
    focal,
    get_loss,
    list_losses,
    lovasz_softmax,
    register_loss,
    tversky,
    validate_options,
)
from tune_losses.losses._functional import Prepared

BUILTINS = [
    "boundary",
    "boundary_focal",
    "ce",
    "dice",
    "focal",
    "jaccard",
    "lovasz",
    "lovasz_hinge",
    "tversky",
]


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return torch.randn(2, 3, 5, 6, generator=gen), torch.randint(0, 3, (2, 5, 6), generator=gen)


def test_list_losses_is_sorted_and_filters():
    assert list_losses() == BUILTINS
    assert list_losses("*focal*") == ["boundary_focal", "focal"]
    assert list_losses("lovasz*") == ["lovasz", "lovasz_hinge"]
    assert list_losses("nothing*") == []


def test_registry_names_and_errors():
    assert get_loss("lovasz") is lovasz_softmax and get_loss("ce") is cross_entropy
    assert get_loss("tune_losses.losses.dice:tversky") is tversky
    with pytest.raises(ValueError, match="did you mean 'dice'"):
        get_loss("dise")
    with pytest.raises(ValueError, match="cannot import"):
        get_loss("tune_losses.losses.dice:nope")


def test_public_signature_is_logits_target_options_ignore_index():
    assert list(inspect.signature(focal).parameters) == [
        "logits",
        "target",
        "gamma",
        "alpha",
        "ignore_index",
    ]
    assert focal.__name__ == "focal" and "Lin et al." in focal.__doc__
    for fn in LOSSES.values():
        params = list(inspect.signature(fn).parameters.values())
        assert [p.name for p in params[:2]] == ["logits", "target"]
        assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params[2:])
        assert params[-1].name == "ignore_index" and params[-1].default == 255


def test_defaults_of_the_public_form_are_the_terms():
    params = inspect.signature(cross_entropy).parameters
    assert params["weight"].default is None and params["label_smoothing"].default == 0.0
    assert inspect.signature(dice).parameters["classes"].default == "present"


def test_public_form_equals_the_prepared_form(batch):
    logits, target = batch
    prep = Prepared(logits, target, 255)
    for fn in LOSSES.values():
        if fn.__name__ == "lovasz_hinge":
            continue  # binary: needs 1 or 2 channels
        torch.testing.assert_close(fn(logits, target), fn.on_prepared(prep))


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda x, t: focal(x, t, gamma=-1.0), "focal: gamma: .*greater than or equal to 0"),
        (lambda x, t: focal(x, t, gama=1.0), "focal: gama: Extra inputs"),
        (lambda x, t: dice(x, t, smooth=-1.0), "dice: smooth:"),
        (lambda x, t: dice(x, t, classes="some"), "dice: classes:"),
        (lambda x, t: dice(x, t, classes=[]), "dice: classes:"),
        (lambda x, t: tversky(x, t, alpha=0.0, beta=0.0), "alpha and beta must not both be 0"),
        (lambda x, t: cross_entropy(x, t, label_smoothing=1.5), "label_smoothing:"),
        (lambda x, t: cross_entropy(x, t, ohem_thresh=0.0), "ohem_thresh:"),
        (lambda x, t: cross_entropy(x, t, ohem_min_kept=-1), "ohem_min_kept:"),
    ],
)
def test_public_form_checks_its_options_in_one_line(batch, call, match):
    with pytest.raises(ValueError, match=match) as info:
        call(*batch)
    assert "\n" not in str(info.value)


def test_validate_options_reads_the_signature():
    assert validate_options(focal, {"gamma": 1}) == {"gamma": 1.0}
    assert validate_options(dice, {"classes": (0, 2), "smooth": 1}) == {
        "smooth": 1.0,
        "classes": (0, 2),
    }

    def user(logits, target, *, scale: float = 1.0, ignore_index: int = 255):
        return logits.mean() * scale

    assert validate_options(user, {"scale": "2"}) == {"scale": 2.0}
    with pytest.raises(ValueError, match="ignore_index"):
        validate_options(user, {"ignore_index": 0})


def test_register_a_term_in_either_form(batch):
    logits, target = batch

    @register_loss("test_scaled_ce")
    def scaled_ce(prep: Prepared, *, scale: float = 1.0) -> torch.Tensor:
        return cross_entropy.on_prepared(prep) * scale

    def plain(logits, target, *, ignore_index: int = 255):
        return logits.mean()

    try:
        assert register_loss("test_plain")(plain) is plain
        assert list(inspect.signature(scaled_ce).parameters)[2:] == ["scale", "ignore_index"]
        want = 2 * cross_entropy(logits, target)
        torch.testing.assert_close(scaled_ce(logits, target, scale=2.0), want)
        assert get_loss("test_scaled_ce") is scaled_ce
        with pytest.raises(ValueError, match="already registered"):
            register_loss("test_plain")(lambda logits, target: logits.mean())
        with pytest.raises(ValueError, match="a term is fn"):
            register_loss("test_bad")(lambda a, b, c: a)
    finally:
        LOSSES.pop("test_scaled_ce", None)
        LOSSES.pop("test_plain", None)
