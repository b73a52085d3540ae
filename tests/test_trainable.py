"""The trainable's failure reasons and placement (no Ray cluster needed)."""

from __future__ import annotations

import ipaddress
import os
import socket

import pytest
import torch

from tune_losses.tune.trainable import DEVICE, HOSTNAME, NODE_IP, failure_reason, placement


def test_failures_that_a_retry_cannot_cure_have_one_line_reasons() -> None:
    assert failure_reason(FloatingPointError("loss is nan"), 3) == "non-finite loss at epoch 3"
    oom = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
    assert failure_reason(oom, 1) == "out of memory at epoch 1"
    assert failure_reason(RuntimeError("boom"), 1) is None


def test_placement_names_this_machine() -> None:
    """The node IP is an address of this machine (a socket binds to it), the host name is
    the kernel's (uname), the device is the torch device as given."""
    where = placement(torch.device("cpu"))
    assert set(where) == {NODE_IP, HOSTNAME, DEVICE}
    address = ipaddress.ip_address(where[NODE_IP])
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.bind((str(address), 0))  # OSError (EADDRNOTAVAIL) for another machine's address
    assert where[HOSTNAME] == os.uname().nodename
    assert where[DEVICE] == "cpu"


def test_placement_names_the_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """``cuda`` without an index is the current device, labelled with its model."""
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: f"NVIDIA H100 #{i}")
    assert placement(torch.device("cuda"))[DEVICE] == "cuda:1 (NVIDIA H100 #1)"
    assert placement(torch.device("cuda", 0))[DEVICE] == "cuda:0 (NVIDIA H100 #0)"
