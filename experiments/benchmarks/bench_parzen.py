"""Benchmark: the Parzen-window protocol (raygan.parzen) beside its baselines, in one run.

The full protocol (the defaults): 10,000 samples as centres, 10,000 validation points scored over
the 10-sigma grid logspace(-1, 0, 10), 10,000 test points scored at the chosen sigma, 784 dims.
Printed side by side:

- raygan.parzen.evaluate: wall time (best and median of --repeats), CPU time, and peak extra
  memory in MB of 10^6 bytes (the rise of the process's peak RSS, VmHWM, over its RSS before the
  call; the peak is reset through /proc/self/clear_refs and freed heap is trimmed first, so it is
  this call's own). Shown for a call, and for the process's first call, which also pays for
  torch's one-time thread and BLAS set-up;
- the same protocol in float64 numpy: one matrix product per chunk of points, scipy logsumexp
  per sigma (and its numbers, to compare the results);
- one float32 (samples x points x dims) product alone, the floor for one pass of the protocol;
- the original procedure's form (Breuleux et al. 2011 / the paper's parzen_ll.py): for each
  sigma, batches of 10 points, the whole (batch, samples, dims) difference tensor. Timed on a
  slice of points at one sigma and extrapolated to the protocol's point-sigma count; the output
  says so;
- the same on the GPU when torch.cuda.is_available().

Data: ``--data mnist`` (default) draws images from the embedded MNIST-5k digits, each shifted by
up to 2 pixels and with noise of std 0.02 (clipped to [0, 1]): distances like real digits and
generated samples. ``--data uniform``: uniform [0, 1]^dims, where all distances are alike.

Run the full protocol:
    python experiments/benchmarks/bench_parzen.py
A quick check (seconds):
    python experiments/benchmarks/bench_parzen.py --num-samples 2000 --num-valid 1000 --num-test 1000
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import math
import os
import platform
import re
import shlex
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.special import logsumexp

from raygan import parzen


def _status_kib(key: str) -> int:
    match = re.search(rf"^{key}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
    return int(match.group(1)) if match else -1


def peak_extra_mb(fn):
    """Run ``fn()``; return its result and the rise of peak RSS over the RSS before it, in bytes.

    Freed heap memory is handed back to the OS first (malloc_trim), so that ``fn`` cannot reuse
    pages already counted in the RSS before it.
    """
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        resettable = True
    except OSError:
        resettable = False
    before = _status_kib("VmRSS")
    result = fn()
    extra = (_status_kib("VmHWM") - before) * 1024 if resettable and before >= 0 else float("nan")
    return result, extra


def timed(fn, repeats: int) -> tuple[list[float], object]:
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return times, result


def mnist_like(n: int, rng: np.random.Generator) -> np.ndarray:
    """n digit images (n, 784) from MNIST-5k, shifted by up to 2 pixels, noise std 0.02, in [0, 1]."""
    from raygan.data import load_dataset

    ds = load_dataset("mnist5k")
    digits = np.concatenate([ds.train, ds.valid, ds.test])[:, 0]
    picks = rng.integers(0, len(digits), n)
    shifts = rng.integers(-2, 3, (n, 2))
    out = np.empty((n, 28, 28), np.float32)
    for i in range(n):
        out[i] = np.roll(digits[picks[i]], tuple(shifts[i]), (0, 1))
    out += rng.normal(0.0, 0.02, out.shape).astype(np.float32)
    return np.clip(out, 0.0, 1.0).reshape(n, 784)


def float64_numpy(samples: np.ndarray, valid: np.ndarray, test: np.ndarray, sigmas, chunk: int = 1000):
    """The protocol in float64 numpy: distances from one product per chunk, logsumexp per sigma."""
    s = samples.astype(np.float64)
    s_sq = (s**2).sum(1)
    n, dim = s.shape

    def grid(points, sig):
        out = np.empty((len(points), len(sig)))
        for i in range(0, len(points), chunk):
            p = points[i : i + chunk].astype(np.float64)
            d = np.maximum((p**2).sum(1)[:, None] + s_sq[None, :] - 2.0 * p @ s.T, 0.0)
            for k, sg in enumerate(sig):
                out[i : i + chunk, k] = logsumexp(-d / (2 * sg * sg), axis=1)
        return out - math.log(n) - 0.5 * dim * np.log(2 * math.pi * np.asarray(sig) ** 2)

    valid_mean = grid(valid, sigmas).mean(0)
    best = int(np.argmax(valid_mean))
    test_ll = grid(test, [sigmas[best]])[:, 0]
    se = float(test_ll.std() / math.sqrt(len(test_ll)))
    return parzen.ParzenResult(sigmas[best], float(valid_mean[best]), float(test_ll.mean()), se)


def original_form(samples: torch.Tensor, points: torch.Tensor, sigma: float, batch: int = 10) -> torch.Tensor:
    """The original parzen_ll.py's computation: the whole (batch, N, D) difference tensor per batch."""
    out = []
    z = samples.shape[1] * math.log(sigma * math.sqrt(2 * math.pi))
    for i in range(0, len(points), batch):
        a = (points[i : i + batch, None, :] - samples[None, :, :]) / sigma
        e = -0.5 * (a**2).sum(2)
        m = e.max(1, keepdim=True).values
        out.append(m[:, 0] + torch.log(torch.exp(e - m).mean(1)) - z)
    return torch.cat(out)


def cpu_name() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    names = (line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    return next(names, platform.processor())


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num-samples", type=int, default=10_000)
    ap.add_argument("--num-valid", type=int, default=10_000)
    ap.add_argument("--num-test", type=int, default=10_000)
    ap.add_argument("--data", choices=("mnist", "uniform"), default="mnist")
    ap.add_argument("--dims", type=int, default=784, help="only for --data uniform")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1), help="torch CPU threads")
    ap.add_argument("--chunk-size", type=int, default=parzen.DEFAULT_CHUNK_SIZE)
    ap.add_argument("--original-points", type=int, default=100, help="points timed for the original form")
    ap.add_argument("--skip-float64", action="store_true", help="skip the float64 numpy baseline")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    print("$ python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(sys.argv[1:] if argv is None else argv)]))
    torch.set_num_threads(args.threads)
    versions = f"torch {torch.__version__} on {args.threads} threads, numpy {np.__version__}"
    print(f"# {cpu_name()}, {os.cpu_count()} cores, {versions}")

    rng = np.random.default_rng(args.seed)
    if args.data == "mnist":
        samples, valid, test = (mnist_like(n, rng) for n in (args.num_samples, args.num_valid, args.num_test))
    else:
        sizes = (args.num_samples, args.num_valid, args.num_test)
        samples, valid, test = (rng.random((n, args.dims), dtype=np.float32) for n in sizes)
    sigmas = parzen.DEFAULT_SIGMAS
    n, dim = samples.shape
    print(
        f"# data: {args.data}; {n} samples, {len(valid)} valid points x {len(sigmas)} sigmas, "
        f"{len(test)} test points at the chosen sigma, {dim} dims"
    )
    print("# target (issue #3), full protocol on 2 cores: <= 3 s and <= 200 MB extra memory\n")

    s_t, v_t, t_t = (torch.from_numpy(a) for a in (samples, valid, test))
    run = lambda: parzen.evaluate(s_t, v_t, t_t, chunk_size=args.chunk_size)
    _, cold = peak_extra_mb(run)  # the first call of the process: nothing of it is in the RSS before
    _, warm = peak_extra_mb(run)  # again, without the one-time set-up of torch's threads and BLAS
    cpu0 = time.process_time()
    times, ours = timed(run, args.repeats)
    cpu = (time.process_time() - cpu0) / args.repeats  # all threads: a check on wall times taken on a busy machine
    rows = [
        (
            "raygan.parzen.evaluate (float32, CPU)",
            min(times),
            (
                f"median {statistics.median(times):.2f} s of {args.repeats}, {cpu:.2f} CPU s per run; "
                f"peak extra memory {warm / 1e6:.0f} MB a call, {cold / 1e6:.0f} MB the process's first"
            ),
        )
    ]

    if not args.skip_float64:
        (t64,), ref = timed(lambda: float64_numpy(samples, valid, test, sigmas), 1)
        rows.append(("float64 numpy matmul version", t64, "same protocol, 1 run"))
    else:
        ref = None

    # A mode-collapsed generator: every sample within a pixel's noise of one image, so every pair
    # is in reach of the kernel (what once sent every pair through a float64 refinement).
    collapsed = torch.from_numpy(np.clip(samples[:1] + 1e-3 * rng.standard_normal(samples.shape), 0, 1).astype(np.float32))
    c_times, _ = timed(lambda: parzen.evaluate(collapsed, v_t, t_t, chunk_size=args.chunk_size), args.repeats)
    rows.append(("raygan.parzen.evaluate, a collapsed generator", min(c_times), "every sample near one image"))

    mm_times, _ = timed(lambda: torch.mm(v_t, s_t.T), args.repeats)
    rows.append((f"one float32 {len(valid)}x{n}x{dim} product alone", min(mm_times), "torch.mm, CPU"))

    k = min(args.original_points, len(valid))
    (t_orig,), _ = timed(lambda: original_form(s_t, v_t[:k], sigmas[0]), 1)
    point_sigmas = len(valid) * len(sigmas) + len(test)
    note = f"EXTRAPOLATED: {t_orig:.2f} s for {k} points at 1 sigma, x {point_sigmas / k:.0f}"
    rows.append(("original form (difference tensor per sigma)", t_orig * point_sigmas / k, note))

    if torch.cuda.is_available():
        dev = torch.device("cuda")
        sg, vg, tg = (x.to(dev) for x in (s_t, v_t, t_t))

        def gpu_run():
            r = parzen.evaluate(sg, vg, tg, chunk_size=args.chunk_size)
            sync(dev)
            return r

        gpu_run()
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
        g_times, ours_gpu = timed(gpu_run, args.repeats)
        g_extra = (torch.cuda.max_memory_allocated(dev) - base) / 1e6
        note = (
            f"median {statistics.median(g_times):.3f} s; peak extra GPU memory {g_extra:.0f} MB; "
            f"test LL {ours_gpu.test_ll:.4f}"
        )
        rows.append((f"raygan.parzen.evaluate (float32, {torch.cuda.get_device_name(dev)})", min(g_times), note))

        def gpu_mm():
            r = torch.mm(vg, sg.T)
            sync(dev)
            return r

        gpu_mm()
        gm_times, _ = timed(gpu_mm, args.repeats)
        rows.append(("one float32 product alone (GPU)", min(gm_times), "torch.mm"))
        kg = min(10 * k, len(valid))
        sync(dev)
        (tg_orig,), _ = timed(lambda: (original_form(sg, vg[:kg], sigmas[0]), sync(dev)), 1)
        note = f"EXTRAPOLATED: {tg_orig:.3f} s for {kg} points at 1 sigma, x {point_sigmas / kg:.0f}"
        rows.append(("original form (GPU)", tg_orig * point_sigmas / kg, note))

    width = max(len(r[0]) for r in rows)
    for name, seconds, note in rows:
        print(f"{name:<{width}}  {seconds:10.2f} s   {note}")
    print()
    for label, r in (("raygan", ours), ("float64", ref)):
        if r is not None:
            numbers = f"valid LL {r.valid_ll:.4f}  test LL {r.test_ll:.4f} +- {r.test_se:.4f}"
            print(f"{label + ':':<9}sigma {r.sigma:.4f}  {numbers}")
    if ref is not None:
        valid_diff, test_diff = abs(ours.valid_ll - ref.valid_ll), abs(ours.test_ll - ref.test_ll)
        print(f"|difference|: valid {valid_diff:.1e}, test {test_diff:.1e} nats")
    return 0


if __name__ == "__main__":
    sys.exit(main())
