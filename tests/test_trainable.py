"""The trainable's failure reasons and placement (no Ray cluster needed)."""

from __future__ import annotations

import socket

import torch

from tune_losses.tune.trainable import DEVICE, HOSTNAME, failure_reason, placement


def test_failures_that_a_retry_cannot_cure_have_one_line_reasons() -> None:
    assert failure_reason(FloatingPointError("loss is nan"), 3) == "non-finite loss at epoch 3"
    oom = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
    assert failure_reason(oom, 1) == "out of memory at epoch 1"
    assert failure_reason(RuntimeError("boom"), 1) is None


def test_placement_on_cpu() -> None:
    where = placement(torch.device("cpu"))
    assert where[DEVICE] == "cpu" and where[HOSTNAME] == socket.gethostname()
