"""The Sobel edge kernel: conv2d reference, analytic backward (gradcheck), block sizes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tune_losses.losses import sobel


def sobel_ref(x: torch.Tensor) -> torch.Tensor:
    """Edge strength with conv2d Sobel kernels (independent of the slicing implementation)."""
    kx = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=x.dtype)
    k = torch.stack([kx, kx.T])[:, None].repeat(x.shape[1], 1, 1, 1)
    g = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k, groups=x.shape[1])
    gx, gy = g[:, 0::2], g[:, 1::2]
    return (torch.sqrt(gx**2 + gy**2).sum(1) / 8).clamp(0, 1)


@pytest.mark.parametrize("chunk", [1 << 18, 40])  # 40: blocks of one image, a few classes
def test_sobel_function_gradcheck_and_conv_reference(monkeypatch, chunk):
    monkeypatch.setattr(sobel, "_SOBEL_CHUNK", chunk)
    gen = torch.Generator().manual_seed(3)
    x = (torch.rand(2, 5, 4, 6, generator=gen, dtype=torch.float64) * 0.1).requires_grad_()
    assert torch.autograd.gradcheck(sobel._SobelSum.apply, (x,), atol=1e-8)
    torch.testing.assert_close(sobel.sobel_magnitude(x), sobel_ref(x))
    weight = torch.rand(2, 4, 6, generator=gen, dtype=torch.float64)
    (got,) = torch.autograd.grad((sobel._SobelSum.apply(x) * weight).sum(), x)
    (want,) = torch.autograd.grad((sobel_ref(x) * 8 * weight).sum(), x)  # no clamp: sum < 8
    torch.testing.assert_close(got, want)


def test_sobel_function_flat_input_has_zero_gradient():
    x = torch.ones(1, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(sobel._SobelSum.apply(x).sum(), x)
    assert torch.equal(grad, torch.zeros_like(grad))


@pytest.mark.parametrize("chunk", [1 << 18, 40])
def test_label_edge_magnitude_is_the_sobel_of_the_one_hot(monkeypatch, chunk):
    monkeypatch.setattr(sobel, "_SOBEL_CHUNK", chunk)
    gen = torch.Generator().manual_seed(4)
    label = torch.randint(0, 5, (2, 6, 7), generator=gen)
    label[0, :2, :3] = -1  # ignored pixels: an all-zero one-hot
    one_hot = (label[:, None] == torch.arange(5).view(1, -1, 1, 1)).double()
    padded = F.pad(label[:, None].double(), (1, 1, 1, 1), mode="replicate")[:, 0]
    got = sobel.label_edge_magnitude(padded, 5)
    torch.testing.assert_close(got, sobel_ref(one_hot))
    assert not got.requires_grad


def test_a_straight_boundary_scores_one():
    x = torch.zeros(1, 2, 4, 6, dtype=torch.float64)
    x[:, 0, :, :3] = 1.0
    x[:, 1, :, 3:] = 1.0
    edges = sobel.sobel_magnitude(x)[0]
    assert torch.equal(edges[:, 2:4], torch.ones(4, 2, dtype=torch.float64))
    assert torch.equal(edges[:, [0, 5]], torch.zeros(4, 2, dtype=torch.float64))
