"""Gaussian Parzen-window log-likelihood, the paper's only quantitative evaluation (Table 1).

Goodfellow et al. (2014), Section 5: fit a Gaussian Parzen window to samples of G, report the
log-likelihood of the test set under it, with the width sigma chosen on the validation set
(Breuleux et al., 2011). For a point x and samples s_1..s_N in D dimensions,

    LL(x) = log (1/N) sum_j N(x; s_j, sigma^2 I)
          = logsumexp_j(-d_j / (2 sigma^2)) - log N - (D/2) log(2 pi sigma^2),   d_j = ||x - s_j||^2.

How it is computed, fast (the full protocol on 2 CPU cores in about the time of its two matrix
products; see experiments/benchmarks/bench_parzen.py):

- The squared distances of a chunk of points to every sample come from one matrix product,
  d_ij = ||x_i||^2 + ||s_j||^2 - 2 x_i.s_j, and serve every sigma of the grid. The row term
  ||x_i||^2 is never added: the log-sum-exp only needs d_ij - min_j d_ij.
- Stable log-sum-exp: each row's nearest sample gives the largest term at every sigma and is
  factored out before exp. A point equal to a sample, or a tiny sigma, gives no -inf and no NaN.
- Dense sums use exp2 (three times faster than exp on the CPU) with exponents clamped at
  2^-115: torch's CPU exp slows tenfold on arguments that underflow, and such terms are
  negligible anyway. The work runs on row blocks of a few MB that stay in cache, one Python
  thread per torch thread with torch single-threaded in each (see ``_blocks``: robust to a busy
  machine, where OpenMP barriers between many small ops cost a time slice each).
- Sparse sums: at sigma, terms further than (log N + 16) / c from the nearest (c = 1 / (2
  sigma^2)) add less than e^-16 nats together. Where few samples are that near (sampled per
  call on 32 points; on digits every sigma below ~0.6), only those are summed. They are found
  through the minima of groups of 64 columns, without a full scan of the block.
- Memory is bounded by ``chunk_size`` rows of distances (plus one centred copy of the samples).

How it is computed, exactly (float32 results within 1e-3 nats of a float64 direct formula;
measured at most 2.5e-4 on 784-dim digits and uniform data):

- Points and samples are centred by the samples' mean before the product. Distances do not
  change, but the magnitudes in ||x||^2 + ||s||^2 - 2 x.s shrink (~90 to ~50 on MNIST; by orders
  of magnitude for data far from the origin), and with them float32's cancellation error.
- The distance to each row's nearest sample, the anchor of the log-sum-exp, is recomputed
  directly as sum_k (x_k - s_k)^2 in float64 from the inputs' own values. Without this the
  error is c * err(d): 2e-3 nats at sigma = 0.1 on MNIST. With it only the gaps between near
  terms carry float32 error, about c * delta at most, delta = 2^-24 (max ||x'||^2 + max ||s'||^2).
- At sigmas where c * delta > 2e-4 (on digits: sigma < 0.19; any sigma of 0.01), every term
  within reach is recomputed the same way in float64, and those sums are exact up to e^-16.
- Per-point results are accumulated in float64.
"""

from __future__ import annotations

import contextlib
import math
import queue
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from raygan.config import EvalConfig

ArrayLike = torch.Tensor | np.ndarray

DEFAULT_SIGMAS: tuple[float, ...] = EvalConfig().sigmas  # logspace(-1, 0, 10), as the original evaluation
DEFAULT_CHUNK_SIZE: int = EvalConfig().chunk_size
DEFAULT_NUM_SAMPLES: int = EvalConfig().num_samples

_LOG2_E = 1.0 / math.log(2.0)
_EXP2_FLOOR = -115.0  # exponents (base 2) are clamped here: 2^-115 ~ e^-80 is negligible and a normal float32
_TAIL = 16.0  # terms beyond (log N + _TAIL) / c of the nearest are dropped at sparse sigmas: < e^-16 nats
_REFINE_TOL = 2e-4  # nats: refine a sigma where c * delta exceeds this; measured errors reach about 1.5 c * delta
_REFINE_MAX_SHARE = 0.05  # refine only where at most this share of (point, sample) pairs is within reach
_SPARSE_SHARE = 0.01  # a sigma is summed sparsely where at most this share of terms is within reach
_CACHE_BYTES = 1 << 22  # exp work in row blocks of about this size on the CPU (few, cache-resident ops)
_PAIRS_PER_BATCH = 2048  # float64 distance recomputation, in batches of this many (point, sample) pairs
_MAX_WORKERS = 8  # Python threads for the exp work (beyond this the GIL between ops serialises them)
_GROUP = 64  # columns per group of a distance block's rows (see _Centres)


@dataclass(frozen=True)
class ParzenResult:
    """The protocol's numbers: sigma chosen on validation, mean LLs in nats, the test LL's standard error.

    ``test_se`` is std / sqrt(n) over the test points' log-likelihoods, with the population
    std (ddof=0), as the original evaluation computed it (``ll.std() / sqrt(n)`` in numpy).
    """

    sigma: float
    valid_ll: float
    test_ll: float
    test_se: float


def _flat(x: ArrayLike, what: str) -> torch.Tensor:
    t = torch.as_tensor(x)
    if t.ndim < 1 or (what == "samples" and t.shape[0] == 0):
        raise ValueError(f"{what} must be a non-empty batch of shape (N, ...), got shape {tuple(t.shape)}")
    return t.reshape(t.shape[0], math.prod(t.shape[1:]))


def _floating(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``t`` itself if it holds floats (its exact values feed the float64 recomputation), else as ``dtype``."""
    return t if t.is_floating_point() else t.to(dtype)


def _acc_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64


def _sigma_grid(sigmas: float | Sequence[float] | None) -> tuple[float, ...]:
    if sigmas is None:
        return DEFAULT_SIGMAS
    grid = (float(sigmas),) if isinstance(sigmas, (int, float)) else tuple(float(s) for s in sigmas)
    if not grid or any(not (s > 0 and math.isfinite(s)) for s in grid):
        raise ValueError(f"sigmas must be positive finite numbers, got {list(grid)}")
    return grid


@dataclass(frozen=True)
class _Plan:
    """How one chunk sums its terms at each sigma (indices into the sigma grid)."""

    dense: list[int]  # over every sample
    sparse: list[int]  # over the samples within ``window`` of each row's nearest
    refined: list[int]  # sparse, and with the distances within ``refine_window`` recomputed in float64
    window: float
    refine_window: float


@dataclass(frozen=True)
class _Buffers:
    """Work space of one ``grid`` call, reused chunk after chunk."""

    centred: torch.Tensor  # (chunk, D): a chunk of points, centred
    e: torch.Tensor  # (chunk, N'): its distance block
    scratch: list[torch.Tensor]  # (block rows, N'): exp work, one per worker thread
    pool: ThreadPoolExecutor | None  # the worker threads, if more than one


class _Centres:
    """The Parzen window's centres (samples), prepared once and reused for every batch of points.

    The samples are padded to a multiple of ``_GROUP`` with dummies at infinite distance, so that
    each row of a distance block reshapes to groups of ``_GROUP`` columns: the minima of the groups
    give each row's nearest sample, and the few samples near it, without a full scan per query.
    """

    def __init__(self, samples: ArrayLike, dtype: torch.dtype):
        s = _floating(_flat(samples, "samples"), dtype)
        self.device = s.device
        self.dtype = dtype
        self.acc = _acc_dtype(self.device)
        self.samples = s  # the originals, in their own precision: float64 recomputation reads these
        self.n, self.dim = s.shape
        self.log_n = math.log(self.n)
        self.eps = torch.finfo(dtype).eps / 2  # unit roundoff
        self.mean = s.mean(0).to(dtype)  # any common shift leaves distances unchanged
        padded = -(-self.n // _GROUP) * _GROUP
        # -2 s' (scaling by -2 is exact), so one plain product gives -2 x'.s' and no bias is copied.
        self.centred_m2 = torch.zeros(padded, self.dim, dtype=dtype, device=self.device)
        torch.sub(s, self.mean, out=self.centred_m2[: self.n])
        sq = torch.cat([_sq_norm(part, self.acc) for part in self.centred_m2[: self.n].split(_GROUP)])
        self.max_sq = float(sq.max())
        self.centred_m2.mul_(-2)
        self.sq = torch.full((padded,), math.inf, dtype=dtype, device=self.device)
        self.sq[: self.n] = sq  # ||s'||^2, rounded once from a float64 sum; the dummies' is infinite

    def grid(self, points: ArrayLike, sigmas: tuple[float, ...], chunk_size: int) -> torch.Tensor:
        """Per-point LL at each sigma: (M, len(sigmas)), accumulated in float64."""
        p = _flat(points, "points")
        if p.shape[1] != self.dim:
            raise ValueError(f"points have {p.shape[1]} values each but samples have {self.dim}")
        sig = torch.tensor(sigmas, dtype=torch.float64)
        const = -self.log_n - 0.5 * self.dim * torch.log(2 * math.pi * sig**2)
        cs = [0.5 / s**2 for s in sigmas]
        out = torch.empty(p.shape[0], len(sigmas), dtype=self.acc, device=self.device)
        if p.shape[0] == 0:
            return out
        plan = self._plan(p, cs, chunk_size)
        # Buffers reused by every chunk: a fresh 80 MB block per chunk fragments the heap.
        rows = min(chunk_size, p.shape[0])
        block_rows = rows if self.device.type != "cpu" else min(rows, max(1, _CACHE_BYTES // (4 * self.sq.numel())))
        workers = min(torch.get_num_threads(), _MAX_WORKERS, -(-rows // block_rows)) if self.device.type == "cpu" else 1
        with ThreadPoolExecutor(workers) if workers > 1 else contextlib.nullcontext() as pool:
            buffers = _Buffers(
                centred=torch.empty(rows, self.dim, dtype=self.dtype, device=self.device),
                e=torch.empty(rows, self.sq.numel(), dtype=self.dtype, device=self.device),
                scratch=[
                    torch.empty(block_rows, self.sq.numel(), dtype=self.dtype, device=self.device)
                    for _ in range(workers)
                ],
                pool=pool,
            )
            for start in range(0, p.shape[0], chunk_size):
                chunk = _floating(p[start : start + chunk_size].to(self.device), self.dtype)
                out[start : start + chunk.shape[0]] = self._chunk(chunk, cs, plan, buffers)
        return out + const.to(self.device, self.acc)

    def _plan(self, points: torch.Tensor, cs: list[float], chunk_size: int) -> _Plan:
        """Which sigmas sum every term (dense) and which only the terms near each row's nearest (sparse).

        Decided once for all the points, so that chunking does not change which path a point takes.
        """
        max_p_sq = max(
            float(torch.linalg.vector_norm(self._centred(points[i : i + _PAIRS_PER_BATCH]), dim=1).max()) ** 2
            for i in range(0, points.shape[0], _PAIRS_PER_BATCH)
        )
        # Rounding scale of the distance block: float32 sums of terms of size ||x'||^2 + ||s'||^2.
        delta = self.eps * (max_p_sq + self.max_sq)
        reach = [(self.log_n + _TAIL) / c for c in cs]  # beyond this gap, terms are negligible at c
        # Estimate from a few points what share of the samples lies within reach at each sigma.
        probe = self._centred(points[torch.linspace(0, points.shape[0] - 1, min(points.shape[0], 32)).long()])
        e = torch.mm(probe, self.centred_m2[: self.n].T) + self.sq[: self.n]
        gaps = e - e.amin(1, keepdim=True)
        share = [float((gaps <= reach[k]).float().mean()) for k in range(len(cs))]
        # Refining recomputes every term within reach in float64: cheap where few samples are near,
        # but for a collapsed generator (all samples near every point) it would touch every pair
        # (7 GB and 20 s for 10k samples x 500 points), so such sigmas are summed densely instead.
        refined = [k for k, c in enumerate(cs) if c * delta > _REFINE_TOL and share[k] <= _REFINE_MAX_SHARE]
        cheap = [k for k in range(len(cs)) if share[k] <= _SPARSE_SHARE]
        # One extraction of the near samples costs about two dense sums: worth it for two sigmas or more.
        sparse = sorted(set(refined) | (set(cheap) if len(cheap) >= 2 else set()))
        if not sparse:
            return _Plan(list(range(len(cs))), [], [], 0.0, 0.0)
        window = max(reach[k] for k in sparse) + 64 * delta
        refine_window = max((reach[k] for k in refined), default=0.0) + 64 * delta
        dense = [k for k in range(len(cs)) if k not in sparse]
        return _Plan(dense, sparse, refined, window, refine_window)

    def _centred(self, points: torch.Tensor) -> torch.Tensor:
        return _floating(points.to(self.device), self.dtype).to(self.dtype) - self.mean

    def _chunk(self, points: torch.Tensor, cs: list[float], plan: _Plan, buffers: _Buffers) -> torch.Tensor:
        """log sum_j exp(-c d_ij) for one chunk of points, at each c = 1/(2 sigma^2)."""
        n = points.shape[0]
        centred = torch.sub(points, self.mean, out=buffers.centred[:n])
        e = torch.mm(centred, self.centred_m2.T, out=buffers.e[:n])  # (n, N'): -2 x'.s'; + ||s'||^2 below
        out = torch.empty(n, len(cs), dtype=self.acc, device=self.device)
        rows = buffers.scratch[0].shape[0]

        def block(start: int, scratch: torch.Tensor) -> None:
            part = slice(start, start + rows)
            self._block(points[part], e[part], cs, plan, scratch, out[part])

        _blocks(block, range(0, n, rows), buffers.scratch, buffers.pool)
        return out

    def _block(
        self,
        points: torch.Tensor,
        block: torch.Tensor,
        cs: list[float],
        plan: _Plan,
        scratch: torch.Tensor,
        ll: torch.Tensor,
    ) -> None:
        """Fill ``ll`` (b, len(cs)) for a block of rows of the distance block (b, N'), in place."""
        block.add_(self.sq)  # (b, N'): d_ij - ||x_i'||^2
        b = block.shape[0]
        groups = block.view(b, -1, _GROUP)
        group_min = groups.amin(2)  # (b, N'/_GROUP)
        low, first = group_min.min(1)
        within = torch.gather(groups, 1, first.view(b, 1, 1).expand(b, 1, _GROUP)).squeeze(1).argmin(1)
        nearest = first * _GROUP + within
        anchor = _sq_dist(points, self.samples[nearest], self.acc)  # exact d to the nearest
        if plan.dense:
            ll[:, plan.dense] = self._dense(block, low, anchor, [cs[k] for k in plan.dense], scratch[:b])
        if plan.sparse:
            ll[:, plan.sparse] = self._sparse(points, groups, group_min, low, anchor, cs, plan)

    def _dense(
        self, block: torch.Tensor, low: torch.Tensor, anchor: torch.Tensor, cs: list[float], scratch: torch.Tensor
    ) -> torch.Tensor:
        """Sum over every sample, around the exact anchor: -c anchor + log sum_j exp(-c (e_ij - min_j e_ij))."""
        sums = torch.empty(len(cs), block.shape[0], dtype=self.dtype, device=self.device)
        for i, c in enumerate(cs):
            c2 = c * _LOG2_E  # exp2 is about three times faster than exp on the CPU
            # The largest term is 2^0 = 1, at each row's nearest: the log-sum-exp max trick.
            torch.add((c2 * low).unsqueeze(1), block, alpha=-c2, out=scratch)
            scratch.clamp_(min=_EXP2_FLOOR).exp2_()
            torch.sum(scratch, 1, out=sums[i])
        c_t = torch.tensor(cs, dtype=self.acc, device=self.device)
        return sums.T.to(self.acc).log() - c_t * anchor.unsqueeze(1)

    def _sparse(
        self,
        points: torch.Tensor,
        groups: torch.Tensor,
        group_min: torch.Tensor,
        low: torch.Tensor,
        anchor: torch.Tensor,
        cs: list[float],
        plan: _Plan,
    ) -> torch.Tensor:
        """Sum over the samples within reach of each row's nearest; float64 distances at refined sigmas."""
        b = groups.shape[0]
        limit = low + plan.window
        g_row, g_col = (group_min <= limit.unsqueeze(1)).nonzero(as_tuple=True)  # groups holding near samples
        values = groups[g_row, g_col]  # (hits, _GROUP)
        hit, offset = (values <= limit[g_row].unsqueeze(1)).nonzero(as_tuple=True)
        row, col = g_row[hit], g_col[hit] * _GROUP + offset
        gap = values[hit, offset].to(self.acc) - low[row].to(self.acc)  # >= 0, 0 at the nearest
        exact = None
        if plan.refined:
            near = gap <= plan.refine_window
            exact = self._exact(points, row[near], col[near], b)
        out = torch.empty(b, len(plan.sparse), dtype=self.acc, device=self.device)
        for i, k in enumerate(plan.sparse):
            rows, gaps, base = exact if k in plan.refined else (row, gap, anchor)
            total = torch.zeros(b, dtype=self.acc, device=self.device).index_add_(0, rows, torch.exp(-cs[k] * gaps))
            out[:, i] = total.log() - cs[k] * base
        return out

    def _exact(
        self, points: torch.Tensor, row: torch.Tensor, col: torch.Tensor, b: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Float64 distances of (point, sample) pairs, as (rows, gaps to each row's nearest, the nearest)."""
        d = torch.cat(
            [
                _sq_dist(points[row[i : i + _PAIRS_PER_BATCH]], self.samples[col[i : i + _PAIRS_PER_BATCH]], self.acc)
                for i in range(0, row.numel(), _PAIRS_PER_BATCH)
            ]
        )
        nearest = torch.full((b,), math.inf, dtype=self.acc, device=self.device)
        nearest.scatter_reduce_(0, row, d, "amin")
        return row, d - nearest[row], nearest


def _blocks(
    fn: Callable[[int, torch.Tensor], None],
    starts: Sequence[int],
    scratch: list[torch.Tensor],
    pool: ThreadPoolExecutor | None,
) -> None:
    """Run ``fn(start, scratch)`` for every block: inline, or on ``pool``, one thread per scratch buffer.

    With several buffers the blocks run on as many Python threads, torch single-threaded in each.
    The exp work is many small ops, and on a busy machine every OpenMP barrier of torch's own
    threads waits a time slice for a descheduled thread: measured 5x slower than this on 2 shared
    cores, and no faster on idle ones. While the blocks run, torch's thread count is 1 for the
    whole process (a worker thread reads it at its first op and keeps it); it is restored afterwards.
    """
    if pool is None or len(starts) == 1:
        for start in starts:
            fn(start, scratch[0])
        return
    free: queue.SimpleQueue[torch.Tensor] = queue.SimpleQueue()
    for buffer in scratch:
        free.put(buffer)

    def run(start: int) -> None:
        buffer = free.get()
        try:
            fn(start, buffer)
        finally:
            free.put(buffer)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        list(pool.map(run, starts))
    finally:
        torch.set_num_threads(threads)


def _sq_dist(a: torch.Tensor, b: torch.Tensor, acc: torch.dtype) -> torch.Tensor:
    """Row-wise ||a_i - b_i||^2, differences taken in ``acc`` (float64): exact up to its rounding."""
    return (a.to(acc) - b.to(acc)).pow_(2).sum(1)


def _sq_norm(a: torch.Tensor, acc: torch.dtype) -> torch.Tensor:
    """Row-wise ||a_i||^2, summed in ``acc``."""
    return a.to(acc).square().sum(1)


@torch.no_grad()
def log_likelihood_grid(
    samples: ArrayLike,
    points: ArrayLike,
    sigmas: Sequence[float] | None = None,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Per-point Parzen log-likelihood at every sigma of a grid, from one distance block per chunk.

    On the CPU with several torch threads, the exp work runs on worker threads with torch's
    thread count set to 1 process-wide meanwhile (restored on return): other threads of the
    process that run torch at that moment run single-threaded.

    Args:
        samples: the window's centres, (N, ...) (e.g. (N, C, H, W)); flattened to (N, D).
        points: the points to score, (M, ...) with D values each. Moved chunk by chunk to
            ``samples``' device, where everything is computed.
        sigmas: the widths (default :data:`DEFAULT_SIGMAS`, logspace(-1, 0, 10)).
        chunk_size: points per distance block; memory is about ``chunk_size * N`` floats.
        dtype: the distance block's dtype; float32 is within 1e-3 nats of float64.

    Returns:
        (M, len(sigmas)) log-likelihoods in nats, float64 (float32 on MPS).
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    return _Centres(samples, dtype).grid(points, _sigma_grid(sigmas), chunk_size)


def log_likelihood(
    samples: ArrayLike,
    points: ArrayLike,
    sigma: float,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Per-point log-likelihood log (1/N) sum_j N(x; s_j, sigma^2 I), in nats.

    Args:
        samples: the window's centres, (N, ...); flattened.
        points: the points to score, (M, ...); flattened.
        sigma: the window's width.
        chunk_size: points per distance block (bounds memory).
        dtype: the distance block's dtype.

    Returns:
        (M,) log-likelihoods, float64 on ``samples``' device.
    """
    return log_likelihood_grid(samples, points, (sigma,), chunk_size=chunk_size, dtype=dtype)[:, 0]


def _select(
    centres: _Centres, valid: ArrayLike, sigmas: tuple[float, ...], chunk_size: int
) -> tuple[float, float]:
    mean_ll = centres.grid(valid, sigmas, chunk_size).mean(0)
    best = int(torch.argmax(mean_ll))  # first of any ties: the smallest index
    return sigmas[best], float(mean_ll[best])


@torch.no_grad()
def validation_score(
    samples: ArrayLike,
    valid: ArrayLike,
    sigmas: Sequence[float] | None = None,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    dtype: torch.dtype = torch.float32,
) -> tuple[float, float]:
    """The ranking score: the best mean validation LL over the sigma grid, and that sigma.

    Args:
        samples: the window's centres, (N, ...).
        valid: validation points, (M, ...). Never the test set (the paper cross-validates sigma).
        sigmas: the grid (default :data:`DEFAULT_SIGMAS`).
        chunk_size: points per distance block.
        dtype: the distance block's dtype.

    Returns:
        ``(sigma, mean validation LL at sigma)``.
    """
    return _select(_Centres(samples, dtype), valid, _sigma_grid(sigmas), chunk_size)


@torch.no_grad()
def select_sigma(
    samples: ArrayLike,
    valid: ArrayLike,
    sigmas: Sequence[float] | None = None,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    dtype: torch.dtype = torch.float32,
) -> float:
    """The sigma of the grid with the largest mean validation log-likelihood.

    Args:
        samples: the window's centres, (N, ...).
        valid: validation points, (M, ...). Never the test set (the paper cross-validates sigma).
        sigmas: the grid (default :data:`DEFAULT_SIGMAS`).
        chunk_size: points per distance block.
        dtype: the distance block's dtype.

    Returns:
        The chosen sigma.
    """
    return validation_score(samples, valid, sigmas, chunk_size=chunk_size, dtype=dtype)[0]


@torch.no_grad()
def evaluate(
    samples: ArrayLike,
    valid: ArrayLike,
    test: ArrayLike,
    sigmas: Sequence[float] | None = None,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    dtype: torch.dtype = torch.float32,
) -> ParzenResult:
    """The full protocol: sigma chosen on ``valid`` over the grid, then the test LL at that sigma.

    Args:
        samples: the window's centres, e.g. 10,000 generated images, (N, ...).
        valid: validation points, (M, ...).
        test: test points, (T, ...), scored once, at the chosen sigma only.
        sigmas: the grid (default :data:`DEFAULT_SIGMAS`).
        chunk_size: points per distance block (bounds memory).
        dtype: the distance block's dtype.

    Returns:
        :class:`ParzenResult`: sigma, mean validation LL at sigma, mean test LL, its standard error.
    """
    centres = _Centres(samples, dtype)
    sigma, valid_ll = _select(centres, valid, _sigma_grid(sigmas), chunk_size)
    test_ll = centres.grid(test, (sigma,), chunk_size)[:, 0]
    return ParzenResult(sigma, valid_ll, float(test_ll.mean()), standard_error(test_ll))


def standard_error(values: torch.Tensor) -> float:
    """std / sqrt(n) with the population std (ddof=0), as the original evaluation computed it.

    Args:
        values: per-point log-likelihoods, (n,).

    Returns:
        The standard error of their mean (0.0 for a single value).
    """
    return float(values.std(correction=0) / math.sqrt(values.numel()))


def reference(
    train: ArrayLike,
    valid: ArrayLike,
    test: ArrayLike,
    num_samples: int = DEFAULT_NUM_SAMPLES,
    sigmas: Sequence[float] | None = None,
    *,
    seed: int = 0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    dtype: torch.dtype = torch.float32,
) -> ParzenResult:
    """The held-out-data reference: the same protocol with real training images as the centres.

    This is what a perfect generator would score (the "true distribution" row of Theis et al.,
    2016: 243 nats on MNIST), so every model's score can be read against it.

    Args:
        train: training images, (N, ...).
        valid: validation points, (M, ...).
        test: test points, (T, ...).
        num_samples: how many training images serve as centres: a seeded random subset of
            min(num_samples, N) of them (all of them, in order, when N <= num_samples).
        sigmas: the grid (default :data:`DEFAULT_SIGMAS`).
        seed: seeds the subset.
        chunk_size: points per distance block.
        dtype: the distance block's dtype.

    Returns:
        :class:`ParzenResult` for the training images.
    """
    train_t = torch.as_tensor(train)
    if num_samples < 1:
        raise ValueError(f"num_samples must be at least 1, got {num_samples}")
    if train_t.shape[0] > num_samples:
        # A seeded subset, not the first images: data sets may be stored sorted by label.
        order = torch.randperm(train_t.shape[0], generator=torch.Generator().manual_seed(seed))
        train_t = train_t[order[:num_samples].to(train_t.device)]
    return evaluate(train_t, valid, test, sigmas, chunk_size=chunk_size, dtype=dtype)
