"""Loss terms against independent references, gradients, stability and autocast."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_sobel import sobel_ref

from tune_losses.losses import (
    LOSSES,
    boundary,
    boundary_focal,
    class_weights_from_frequencies,
    cross_entropy,
    dice,
    focal,
    jaccard,
    lovasz_hinge,
    lovasz_softmax,
    tversky,
)

IGNORE = 255
C = 4


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Float64 logits [2,4,5,6] and a hand-made target.

    Image 0 holds classes 0, 1, 2 and a block of ignored pixels; image 1 is a one-class image
    (all 1); class 3 is absent from the whole batch.
    """
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, C, 5, 6, generator=gen, dtype=torch.float64) * 2.0
    target = torch.zeros(2, 5, 6, dtype=torch.long)
    target[0, :, 3:] = 1
    target[0, 3:, :2] = 2
    target[0, 0, :2] = IGNORE
    target[0, 4, 5] = IGNORE
    target[1] = 1
    return logits, target


# ----------------------------------------------------------------- references (float64)


def ref_probs(logits: torch.Tensor, target: torch.Tensor):
    p = torch.softmax(logits.double(), dim=1)
    valid = target != IGNORE
    t = torch.where(valid, target, 0)
    y = F.one_hot(t, logits.shape[1]).permute(0, 3, 1, 2).double() * valid[:, None]
    return p, y, valid, t


def ref_focal_pixels(logits, target, gamma, alpha):
    p, _, valid, t = ref_probs(logits, target)
    pt = p.gather(1, t[:, None])[:, 0]
    a = torch.ones(C, dtype=torch.float64) if alpha is None else torch.as_tensor(alpha).double()
    a = a.expand(C) if a.dim() == 0 else a
    return -a[t] * (1 - pt) ** gamma * torch.log(pt), valid


def ref_focal(logits, target, gamma, alpha=None):
    pix, valid = ref_focal_pixels(logits, target, gamma, alpha)
    return pix[valid].mean() if valid.any() else torch.tensor(0.0, dtype=torch.float64)


def ref_overlap(logits, target, kind, classes="present", smooth=0.0, alpha=0.5, beta=0.5):
    p, y, valid, _ = ref_probs(logits, target)
    p = p * valid[:, None]
    losses = []
    ids = range(C) if isinstance(classes, str) else classes
    for c in ids:
        tp, fp, fn = (
            (p[:, c] * y[:, c]).sum(),
            (p[:, c] * (1 - y[:, c])).sum(),
            ((1 - p[:, c]) * y[:, c]).sum(),
        )
        if classes == "present" and y[:, c].sum() == 0:
            continue
        if kind == "dice":
            score = (2 * tp + smooth) / (2 * tp + fp + fn + smooth)
        elif kind == "jaccard":
            score = (tp + smooth) / (tp + fp + fn + smooth)
        else:
            score = (tp + smooth) / (tp + alpha * fp + beta * fn + smooth)
        losses.append(1 - score)
    return torch.stack(losses).mean()


def ref_lovasz_group(errors: list[float], fg: list[int]) -> float:
    """Lovasz extension of the Jaccard loss, written from the paper (Alg. 1) with sets."""
    order = sorted(range(len(errors)), key=lambda i: -errors[i])
    gt = {i for i, f in enumerate(fg) if f}
    loss, prev = 0.0, 0.0
    for k in range(1, len(order) + 1):
        pred = set(order[:k])
        jac = 1 - len(gt - pred) / len(gt | pred)  # 1 - |gt \ top_k| / |gt u top_k|
        loss += errors[order[k - 1]] * (jac - prev)
        prev = jac
    return loss


def ref_lovasz(logits, target, classes="present", per_image=False):
    p, _, valid, _ = ref_probs(logits, target)
    images = (
        [(p[i : i + 1], target[i : i + 1]) for i in range(len(p))] if per_image else [(p, target)]
    )
    per = []
    for pi, ti in images:
        keep = ti != IGNORE
        if not keep.any():
            continue
        losses = []
        ids = range(C) if isinstance(classes, str) else classes
        for c in ids:
            fg = (ti[keep] == c).long().tolist()
            if classes == "present" and sum(fg) == 0:
                continue
            pc = pi[:, c][keep].tolist()
            errors = [abs(f - q) for f, q in zip(fg, pc, strict=True)]
            losses.append(ref_lovasz_group(errors, fg))
        per.append(sum(losses) / len(losses))
    return sum(per) / len(per)


def ref_boundary(logits, target):
    p, y, valid, _ = ref_probs(logits, target)
    kept = F.max_pool2d((~valid)[:, None].double(), 3, 1, 1)[:, 0] == 0
    e, t = sobel_ref(p).clamp(1e-6, 1 - 1e-6), sobel_ref(y)
    bce = -(t * torch.log(e) + (1 - t) * torch.log(1 - e))
    return bce[kept].mean(), t * kept


# ----------------------------------------------------------------- values


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("weighted", [False, True])
def test_ce_matches_torch(batch, smoothing, weighted):
    logits, target = batch
    w = torch.tensor([0.5, 2.0, 1.0, 3.0], dtype=torch.float64) if weighted else None
    got = cross_entropy(logits, target, weight=w, label_smoothing=smoothing)
    want = F.cross_entropy(logits, target, weight=w, label_smoothing=smoothing, ignore_index=IGNORE)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_ce_ohem_keeps_hard_pixels(batch):
    logits, target = batch
    p, _, valid, t = ref_probs(logits, target)
    pt = p.gather(1, t[:, None])[:, 0]
    nll = -torch.log(pt)
    hard = valid & (pt < 0.4)
    got = cross_entropy(logits, target, ohem_thresh=0.4)
    torch.testing.assert_close(got, nll[hard].mean())
    k = int(hard.sum()) + 5  # more than the threshold keeps: the k hardest pixels
    kth = pt[valid].sort().values[k - 1]
    got = cross_entropy(logits, target, ohem_thresh=0.4, ohem_min_kept=k)
    torch.testing.assert_close(got, nll[valid & (pt <= kth)].mean())


@pytest.mark.parametrize(
    "gamma,alpha", [(0.0, None), (2.0, None), (0.5, 0.25), (2.0, [0.1, 0.2, 0.3, 0.4])]
)
def test_focal_matches_reference(batch, gamma, alpha):
    logits, target = batch
    got = focal(logits, target, gamma=gamma, alpha=alpha)
    torch.testing.assert_close(got, ref_focal(logits, target, gamma, alpha))


def test_focal_gamma0_is_ce(batch):
    logits, target = batch
    torch.testing.assert_close(
        focal(logits, target, gamma=0.0), F.cross_entropy(logits, target, ignore_index=IGNORE)
    )


@pytest.mark.parametrize("classes", ["present", "all", [1, 3]])
@pytest.mark.parametrize("smooth", [0.0, 1.0])
def test_overlap_terms_match_reference(batch, classes, smooth):
    logits, target = batch
    kw = dict(classes=classes, smooth=smooth)
    torch.testing.assert_close(
        dice(logits, target, **kw), ref_overlap(logits, target, "dice", **kw)
    )
    torch.testing.assert_close(
        jaccard(logits, target, **kw), ref_overlap(logits, target, "jaccard", **kw)
    )
    got = tversky(logits, target, alpha=0.3, beta=0.7, **kw)
    want = ref_overlap(logits, target, "tversky", alpha=0.3, beta=0.7, **kw)
    torch.testing.assert_close(got, want)


def test_tversky_special_cases(batch):
    logits, target = batch
    torch.testing.assert_close(tversky(logits, target), dice(logits, target))
    torch.testing.assert_close(tversky(logits, target, alpha=1, beta=1), jaccard(logits, target))


@pytest.mark.parametrize("classes", ["present", "all", [0, 3]])
@pytest.mark.parametrize("per_image", [False, True])
def test_lovasz_matches_paper_loop(batch, classes, per_image):
    logits, target = batch
    got = lovasz_softmax(logits, target, classes=classes, per_image=per_image)
    want = ref_lovasz(logits, target, classes=classes, per_image=per_image)
    assert got.item() == pytest.approx(want, rel=1e-10)


@pytest.mark.parametrize("per_image", [False, True])
def test_lovasz_matches_smp(batch, per_image):
    smp_losses = pytest.importorskip("segmentation_models_pytorch.losses")
    logits, target = batch[0].float(), batch[1]
    want = smp_losses.LovaszLoss("multiclass", per_image=per_image, ignore_index=IGNORE)
    got = lovasz_softmax(logits, target, per_image=per_image)
    assert got.item() == pytest.approx(want(logits, target).item(), rel=1e-5)


@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("channels", [1, 2])
def test_lovasz_hinge_matches_paper_loop(per_image, channels):
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(2, channels, 4, 5, generator=gen, dtype=torch.float64)
    target = torch.randint(0, 2, (2, 4, 5), generator=gen)
    target[0, 0] = IGNORE
    score = logits[:, 0] if channels == 1 else logits[:, 1] - logits[:, 0]
    groups = [(score[i], target[i]) for i in range(2)] if per_image else [(score, target)]
    want = []
    for s, t in groups:
        keep = t != IGNORE
        fg = t[keep].tolist()
        errors = [max(0.0, 1 - v * (2 * f - 1)) for v, f in zip(s[keep].tolist(), fg, strict=True)]
        want.append(ref_lovasz_group(errors, fg))
    got = lovasz_hinge(logits, target, per_image=per_image)
    assert got.item() == pytest.approx(sum(want) / len(want), rel=1e-10)


def test_boundary_matches_conv_reference(batch):
    logits, target = batch
    want, _ = ref_boundary(logits, target)
    torch.testing.assert_close(boundary(logits, target), want)


def test_boundary_focal_matches_reference(batch):
    logits, target = batch
    _, edge = ref_boundary(logits, target)
    pix, valid = ref_focal_pixels(logits, target, 2.0, None)
    want = (pix * (1 + 3.0 * edge))[valid].mean()
    torch.testing.assert_close(boundary_focal(logits, target, edge_weight=3.0), want)
    torch.testing.assert_close(
        boundary_focal(logits, target, edge_weight=0.0), focal(logits, target)
    )


def test_boundary_border_is_not_an_edge():
    target = torch.zeros(1, 6, 6, dtype=torch.long)
    logits = torch.stack([torch.full((6, 6), 20.0), torch.zeros(6, 6)])[None]
    assert boundary(logits, target).item() < 1e-5
    _, edge = ref_boundary(logits.double(), target)
    assert edge.sum() == 0


# ----------------------------------------------------------------- gradients and stability

TERMS = {
    "ce": lambda x, t: cross_entropy(x, t, weight=[1.0, 2.0, 0.5, 1.0], label_smoothing=0.1),
    "focal": lambda x, t: focal(x, t, gamma=2.0, alpha=[0.3, 0.2, 0.4, 0.1]),
    "boundary_focal": lambda x, t: boundary_focal(x, t, edge_weight=2.0),
    "lovasz": lambda x, t: lovasz_softmax(x, t, classes="all"),
    "lovasz_per_image": lambda x, t: lovasz_softmax(x, t, per_image=True),
    "lovasz_hinge": lambda x, t: lovasz_hinge(
        x[:, :2], t.clamp(max=1).masked_fill(t == IGNORE, 255)
    ),
    "dice": lambda x, t: dice(x, t, smooth=1.0, classes="all"),
    "jaccard": lambda x, t: jaccard(x, t),
    "tversky": lambda x, t: tversky(x, t, alpha=0.3, beta=0.7),
    "boundary": lambda x, t: boundary(x, t),
}


def test_every_builtin_term_is_tested():
    builtins = {n for n, fn in LOSSES.items() if fn.__module__.startswith("tune_losses.")}
    assert len(builtins) == 9 and builtins <= set(TERMS)


@pytest.mark.parametrize("name", sorted(TERMS))
def test_gradcheck_float64(name):
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 3, 5, 6, generator=gen, dtype=torch.float64) * 1.5
    logits = F.pad(logits, (0, 0, 0, 0, 0, 1), value=-1.0).requires_grad_()  # C = 4
    target = torch.randint(0, 3, (2, 5, 6), generator=gen)
    target[0, 1, 1:3] = IGNORE
    check = torch.autograd.gradcheck
    assert check(lambda x: TERMS[name](x, target), (logits,), atol=1e-6, fast_mode=True)


@pytest.mark.parametrize("name", sorted(TERMS))
def test_all_ignored_gives_zero_and_zero_grad(name, batch):
    logits = batch[0].float().requires_grad_()
    target = torch.full_like(batch[1], IGNORE)
    value = TERMS[name](logits, target)
    (grad,) = torch.autograd.grad(value, logits)
    assert value.item() == 0.0 and value.dtype == torch.float32
    assert torch.isfinite(grad).all() and grad.abs().max() == 0


@pytest.mark.parametrize("name", sorted(TERMS))
def test_large_logits_are_stable(name, batch):
    logits = (batch[0].float() * 1e4).requires_grad_()
    value = TERMS[name](logits, batch[1])
    (grad,) = torch.autograd.grad(value, logits)
    assert torch.isfinite(value) and torch.isfinite(grad).all()


@pytest.mark.parametrize("name", sorted(TERMS))
def test_autocast_bfloat16_computes_in_float32(name, batch):
    logits = batch[0].float()
    half = logits.bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        from_half = TERMS[name](half, batch[1])
        from_float = TERMS[name](logits, batch[1])
    assert from_half.dtype == torch.float32 and from_float.dtype == torch.float32
    torch.testing.assert_close(from_half, TERMS[name](half.float(), batch[1]), rtol=1e-6, atol=0)
    torch.testing.assert_close(from_float, TERMS[name](logits, batch[1]), rtol=1e-6, atol=0)


# ----------------------------------------------------------------- custom autograd Functions


@pytest.mark.parametrize("chunk", [1 << 18, 40])
def test_label_edges_match_conv_reference(batch, monkeypatch, chunk):
    from tune_losses.losses import sobel
    from tune_losses.losses._functional import Prepared

    monkeypatch.setattr(sobel, "_SOBEL_CHUNK", chunk)
    logits, target = batch
    prep = Prepared(logits, target, IGNORE)
    _, y, valid, _ = ref_probs(logits, target)
    torch.testing.assert_close(prep.label_edges, sobel_ref(y))
    kept = F.max_pool2d((~valid)[:, None].double(), 3, 1, 1)[:, 0] == 0
    assert torch.equal(prep.edge_kept, kept)


@pytest.mark.parametrize("per_image", [False, True])
def test_group_dot_gradcheck(per_image):
    from tune_losses.losses.lovasz import _GroupDot

    gen = torch.Generator().manual_seed(4)
    p = torch.rand(2, 3, 7, generator=gen, dtype=torch.float64).requires_grad_()
    w = torch.randn(2, 3, 7, generator=gen, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: _GroupDot.apply(x, w, per_image), (p,))


@pytest.mark.parametrize(
    "kwargs", [{}, {"per_image": True}, {"classes": "all"}, {"classes": [2, 0], "per_image": True}]
)
def test_lovasz_float32_packed_sort_matches_float64(kwargs):
    """The float32 path (one radix sort of packed int64 keys) against the float64 path."""
    gen = torch.Generator().manual_seed(5)
    logits = torch.randn(3, 5, 16, 12, generator=gen, dtype=torch.float64) * 3
    logits[1, :, :4] = 0.0  # a block of exactly tied errors
    target = torch.randint(0, 4, (3, 16, 12), generator=gen)  # class 4 absent
    target[0, :5, :5] = IGNORE
    target[2] = IGNORE  # an all-ignored image
    x64 = logits.clone().requires_grad_()
    x32 = logits.float().requires_grad_()
    want = lovasz_softmax(x64, target, **kwargs)
    got = lovasz_softmax(x32, target, **kwargs)
    assert got.item() == pytest.approx(want.item(), rel=1e-6)
    (g64,) = torch.autograd.grad(want, x64)
    (g32,) = torch.autograd.grad(got, x32)
    torch.testing.assert_close(g32[:, :, 4:], g64[:, :, 4:].float(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("per_image", [False, True])
def test_lovasz_hinge_float32_matches_float64(per_image):
    gen = torch.Generator().manual_seed(6)
    logits = torch.randn(2, 1, 9, 8, generator=gen, dtype=torch.float64) * 4
    target = torch.randint(0, 2, (2, 9, 8), generator=gen)
    target[1, :3] = IGNORE
    want = lovasz_hinge(logits, target, per_image=per_image)
    got = lovasz_hinge(logits.float(), target, per_image=per_image)
    assert got.item() == pytest.approx(want.item(), rel=1e-6)


# ----------------------------------------------------------------- registry, checks, weights


def test_bad_inputs_raise_value_error(batch):
    logits, target = batch
    with pytest.raises(ValueError, match="does not match"):
        dice(logits, target[:, :4])
    with pytest.raises(ValueError, match="outside"):
        focal(logits, target.masked_fill(target == 2, 7))
    with pytest.raises(ValueError, match="classes"):
        lovasz_softmax(logits, target, classes="some")
    with pytest.raises(ValueError, match="one per class"):
        cross_entropy(logits, target, weight=[1.0, 2.0])
    with pytest.raises(ValueError, match="binary"):
        lovasz_hinge(logits, target)


@pytest.mark.parametrize(
    "method,raw",
    [
        ("inverse", [1 / 0.6, 1 / 0.3, 1 / 0.1]),
        ("sqrt_inverse", [0.6**-0.5, 0.3**-0.5, 0.1**-0.5]),
        ("median_frequency", [0.3 / 0.6, 1.0, 0.3 / 0.1]),
    ],
)
def test_class_weights(method, raw):
    got = class_weights_from_frequencies(np.array([600.0, 300.0, 0.0, 100.0]), method)
    want = np.array(raw) / np.mean(raw)
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), [want[0], want[1], 0.0, want[2]], rtol=1e-6)
    assert math.isclose(float(got[got > 0].mean()), 1.0, rel_tol=1e-6)


def test_median_frequency_with_an_even_class_count_uses_the_true_median():
    freqs = np.array([0.1, 0.2, 0.3, 0.4])  # median 0.25, not the lower middle value 0.2
    raw = 0.25 / freqs
    got = class_weights_from_frequencies(freqs, "median_frequency")
    np.testing.assert_allclose(got.numpy(), raw / raw.mean(), rtol=1e-6)


def test_class_weights_reject_bad_input():
    with pytest.raises(ValueError, match="unknown class weight method"):
        class_weights_from_frequencies(np.ones(3), "log")
    with pytest.raises(ValueError, match="every class frequency is 0"):
        class_weights_from_frequencies(np.zeros(3), "inverse")
