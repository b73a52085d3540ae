"""Speed and memory of the loss terms, the five-term mix and smp's equivalents (issue 4).

Usage:
    .venv/bin/python benchmarks/bench_losses.py [--runs 7] [--skip-step]

CPU, 2 threads. Times are medians of ``--runs`` forward+backward passes after one warm-up,
with the spread ``(max - min) / median`` as a noise figure, in this process with glibc's
default allocator settings (as in training). Peak memory is measured in a child process
(``--memory``): the growth of its resident set (``VmHWM`` after resetting it through
``/proc/self/clear_refs``) during one forward+backward, with glibc's mmap threshold fixed
at 64 KiB so freed tensors go back to the OS: it counts every live intermediate tensor, not
the inputs. That setting makes every allocation above 64 KiB a fresh mapping (page faults),
which is why times are not taken under it. The 1-minute load average is printed at the
start and the end.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F

from tune_losses.losses import LossMix, get_loss

IGNORE = 255
SHAPES = [(8, 12, 128, 128), (2, 19, 256, 256)]
MIX = ("ce", "focal", "lovasz", "dice", "boundary")
Fn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def make_inputs(shape: tuple[int, int, int, int], seed: int = 0):
    """Logits ~ N(0, 2^2) and a blocky label map (8x8-pixel regions) with ~5% ignored."""
    b, c, h, w = shape
    gen = torch.Generator().manual_seed(seed)
    logits = (torch.randn(shape, generator=gen) * 2.0).requires_grad_()
    coarse = torch.randint(0, c, (b, 1, h // 8, w // 8), generator=gen).float()
    target = F.interpolate(coarse, size=(h, w), mode="nearest")[:, 0].long()
    target[torch.rand(b, h, w, generator=gen) < 0.05] = IGNORE
    return logits, target


def fwd_bwd(fn: Fn, logits: torch.Tensor, target: torch.Tensor) -> None:
    fn(logits, target).backward()
    logits.grad = None


def timed(fn: Callable[[], None], runs: int) -> tuple[float, float]:
    """Median milliseconds and relative spread over ``runs`` calls after one warm-up."""
    fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    median = statistics.median(times)
    return median, (max(times) - min(times)) / median


def _status(key: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{key} not in /proc/self/status")


def peak_mib(fn: Callable[[], None]) -> float:
    """Resident-set growth during one call, MiB (child process only, see the docstring)."""
    fn()
    gc.collect()
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")
    base = _status("VmRSS:")
    fn()
    return (_status("VmHWM:") - base) / 2**20


def ours(name: str) -> Fn:
    term = get_loss(name)
    return lambda x, t: term(x, t, ignore_index=IGNORE)


def smp_terms() -> dict[str, Fn]:
    losses = smp.losses
    return {
        "ce": losses.SoftCrossEntropyLoss(smooth_factor=0.0, ignore_index=IGNORE),
        "focal": losses.FocalLoss("multiclass", ignore_index=IGNORE),
        "dice": losses.DiceLoss("multiclass", ignore_index=IGNORE),
        "jaccard": losses.JaccardLoss("multiclass", ignore_index=IGNORE),
        "tversky": losses.TverskyLoss("multiclass", ignore_index=IGNORE),
        "lovasz": losses.LovaszLoss("multiclass", ignore_index=IGNORE),
    }


def term_rows() -> dict[str, Fn]:
    """Our terms and the five-term mix, in table order."""
    mix = LossMix({"decode": {name: {"weight": 1.0} for name in MIX}}, ignore_index=IGNORE)
    rows: dict[str, Fn] = {
        name: ours(name)
        for name in ("ce", "focal", "dice", "jaccard", "tversky", "lovasz", "boundary")
    }
    rows["boundary_focal"] = ours("boundary_focal")
    rows["mix (5 terms)"] = lambda x, t: mix({"decode": x}, t, 1.0).total
    return rows


def memory_figures() -> dict[str, dict[str, float]]:
    """Peak MiB of every row on every shape (run in the child process)."""
    figures = {}
    for shape in SHAPES:
        logits, target = make_inputs(shape)
        figures[str(list(shape))] = {
            name: peak_mib(lambda fn=fn, x=logits, t=target: fwd_bwd(fn, x, t))
            for name, fn in term_rows().items()
        }
    return figures


def child_memory() -> dict[str, dict[str, float]]:
    """Run ``--memory`` in a child with the 64 KiB mmap threshold; its figures as a dict."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    cmd = [sys.executable, os.path.abspath(__file__), "--memory"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def packed_sort_ms(errors: torch.Tensor, runs: int) -> tuple[float, float]:
    """Time of the sort the float32 Lovasz actually runs: one 1-D int64 sort of packed keys."""
    c = errors.shape[0]
    group = torch.arange(c).view(c, 1) << 32
    keys = (errors.view(torch.int32).to(torch.int64) + group).view(-1)
    return timed(lambda: torch.sort(keys), runs)


def bench_shape(shape, runs: int, memory: dict[str, float]) -> dict[str, float]:
    logits, target = make_inputs(shape)
    rows = term_rows()
    reference = smp_terms()
    print(f"\n### logits {list(shape)}\n")
    print("| term | ours ms (spread) | smp ms (spread) | smp / ours | ours peak MiB |")
    print("|---|---|---|---|---|")
    figures: dict[str, float] = {}
    for name, fn in rows.items():
        t_ours, s_ours = timed(lambda fn=fn: fwd_bwd(fn, logits, target), runs)
        mem = memory[name]
        figures[f"{name}_ms"], figures[f"{name}_mib"] = t_ours, mem
        smp_cell = ratio_cell = "-"
        if name in reference:
            ref = reference[name]
            t_smp, s_smp = timed(lambda ref=ref: fwd_bwd(ref, logits, target), runs)
            smp_cell, ratio_cell = f"{t_smp:.1f} ({s_smp:.0%})", f"{t_smp / t_ours:.2f}x"
            figures[f"smp_{name}_ms"] = t_smp
        print(f"| {name} | {t_ours:.1f} ({s_ours:.0%}) | {smp_cell} | {ratio_cell} | {mem:.1f} |")

    b, c, h, w = shape
    with torch.no_grad():
        probs = logits.softmax(1).transpose(0, 1).reshape(c, -1)
        onehot = F.one_hot(target.clamp(max=c - 1), c).permute(3, 0, 1, 2).reshape(c, -1)
        errors = (onehot - probs).abs().contiguous()
    t_sort, s_sort = timed(lambda: torch.sort(errors, dim=1, descending=True), runs)
    t_packed, s_packed = packed_sort_ms(errors, runs)
    ours_value = get_loss("lovasz")(logits, target).item()
    smp_value = reference["lovasz"](logits, target).item()
    rel = abs(ours_value - smp_value) / abs(smp_value)
    print(
        f"\n- sort floor: torch.sort of the same {c}x{b * h * w} errors {t_sort:.1f} ms "
        f"({s_sort:.0%}); Lovasz / sort = {figures['lovasz_ms'] / t_sort:.2f}x (target <= 1.4x)"
    )
    print(
        f"- the sort Lovasz runs (one 1-D int64 sort of {c * b * h * w} packed keys): "
        f"{t_packed:.1f} ms ({s_packed:.0%}); Lovasz / that sort = "
        f"{figures['lovasz_ms'] / t_packed:.2f}x"
    )
    print(
        f"- Lovasz speed-up over smp.losses.LovaszLoss: "
        f"{figures['smp_lovasz_ms'] / figures['lovasz_ms']:.2f}x (target >= 2x); values "
        f"{ours_value:.7f} vs {smp_value:.7f}, relative difference {rel:.1e} (must be <= 1e-5)"
    )
    print(
        f"- mix / Lovasz alone = {figures['mix (5 terms)_ms'] / figures['lovasz_ms']:.2f}x "
        f"(target <= 1.3x); mix peak / CE peak = "
        f"{figures['mix (5 terms)_mib'] / figures['ce_mib']:.2f}x (target <= 3x)"
    )
    figures["sort_ms"] = t_sort
    return figures


def bench_step(runs: int) -> None:
    """Mix share of one Unet-resnet18 training step, 128x128, batch 8, 12 classes."""
    torch.manual_seed(0)
    model = smp.Unet("resnet18", encoder_weights=None, classes=12)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    images = torch.randn(8, 3, 128, 128)
    _, target = make_inputs((8, 12, 128, 128))
    mix = LossMix({"decode": {name: {"weight": 1.0} for name in MIX}}, ignore_index=IGNORE)

    def step(loss_fn: Fn) -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(images), target).backward()
        optimizer.step()

    t_ce, s_ce = timed(lambda: step(lambda x, t: F.cross_entropy(x, t, ignore_index=IGNORE)), runs)
    t_mix, s_mix = timed(lambda: step(lambda x, t: mix({"decode": x}, t, 1.0).total), runs)
    logits, _ = make_inputs((8, 12, 128, 128))
    t_loss, _ = timed(
        lambda: fwd_bwd(lambda x, t: mix({"decode": x}, t, 1.0).total, logits, target), runs
    )
    print("\n### Unet-resnet18 training step, 8x3x128x128, 12 classes\n")
    print(
        f"- step with torch CE: {t_ce:.0f} ms ({s_ce:.0%}); step with the 5-term mix: "
        f"{t_mix:.0f} ms ({s_mix:.0%})"
    )
    print(f"- mix fwd+bwd {t_loss:.1f} ms = {t_loss / t_mix:.1%} of the step with the mix")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--skip-step", action="store_true", help="skip the Unet step")
    parser.add_argument("--memory", action="store_true", help="child mode: print peaks as JSON")
    args = parser.parse_args()
    torch.set_num_threads(2)
    if args.memory:
        print(json.dumps(memory_figures()))
        return
    print(f"torch {torch.__version__}, smp {smp.__version__}, threads {torch.get_num_threads()}")
    print(f"load average (1 min) at start: {os.getloadavg()[0]:.2f}")
    memory = child_memory()
    for shape in SHAPES:
        bench_shape(shape, args.runs, memory[str(list(shape))])
    if not args.skip_step:
        bench_step(args.runs)
    print(f"\nload average (1 min) at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
