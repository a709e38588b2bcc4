"""TensorBoard logging of a population: one :class:`TrialMonitor` per trial, one summary per experiment.

Each trial writes into its own directory, which TensorBoard shows as one run:

- scalars under the result dict's grouped tags (``loss/d``, ``loss/g``, ``d/real``, ``d/fake``,
  ``eval/parzen_valid_ll``, ``perf/iterations_per_s``, ``hparams/k``, ...), the same names Tune
  reports, so a PBT mutation shows as a step in the ``hparams/*`` curves;
- a grid of samples from fixed noise at each evaluation, so the same z can be watched evolving;
- optionally, weight histograms of G and D;
- the trial's configuration for the HParams dashboard, in the same run as the scalars, so the
  dashboard can set each trial's configuration against its metrics;
- after a restore (:meth:`TrialMonitor.resume_at`), curves that continue from the checkpoint's
  step instead of doubling back.

:func:`write_experiment_summary` adds a run ``<experiment>/summary`` with the leaderboard as a
markdown table and the best trial's final numbers as scalars.

This module knows nothing about Ray; it writes with ``torch.utils.tensorboard`` and builds the
HParams plugin's protos with ``tensorboard.plugins.hparams`` (no TensorFlow needed).
"""

from __future__ import annotations

import io
import math
import numbers
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2
from tensorboard.plugins.hparams import summary_v2 as hp
from torch.utils.tensorboard import SummaryWriter

from raygan import hyperparameters, keys
from raygan.config import SearchConfig
from raygan.files import atomic_write_text
from raygan.images import tile
from raygan.report import fmt as _fmt
from raygan.report import nats as _nats

# Result-dict keys with these prefixes are logged; the rest (Tune's bookkeeping, flags) is not.
TAG_GROUPS = ("loss/", "d/", "eval/", "perf/", "hparams/")
# What the HParams dashboard sets each trial's configuration against.
HPARAMS_METRICS = (keys.PARZEN_VALID_LL, keys.FD, keys.CLASSES_COVERED, keys.TVD, keys.D_REAL, keys.D_FAKE)
SAMPLES_TAG = "samples/fixed_z"
NOTES_PREFIX = "notes/"  # one-off text notes of a trial (TrialMonitor.log_note)
FLUSH_SECS = 10  # how stale a live TensorBoard may be; flushing is done by the writer's own thread
MAX_QUEUE = 100  # events buffered before add_* waits for the writer thread (one step writes ~15)
SUMMARY_FILE = "leaderboard.md"
HISTOGRAM_BINS = 64
NEVER_STEP = 2**62  # a step no trial reaches

Domain = hp.Domain  # tensorboard's hp.Discrete / hp.RealInterval / hp.IntInterval


class TrialMonitor:
    """TensorBoard events of one trial, written into ``logdir``.

    On construction the trial's configuration is recorded for the HParams dashboard, so a trial
    is listed there from its first step on.

    Args:
        logdir: the trial's directory (TensorBoard's run); created if missing.
        hparams: the trial's configuration, name -> bool, number or string (others become strings).
        domains: optional search-space domain per hyperparameter (``hp.Discrete([...])``,
            ``hp.RealInterval(lo, hi)``), which the dashboard uses for its filters.
        metrics: the scalar tags the HParams dashboard shows against the configuration.
        histograms: whether :meth:`log_histograms` writes anything (off by default: binning the
            paper's 2.4 M weights costs tens of milliseconds).
        flush_secs: the writer thread flushes at least this often.
    """

    def __init__(
        self,
        logdir: str | Path,
        hparams: Mapping[str, Any],
        *,
        domains: Mapping[str, Domain] | None = None,
        metrics: Sequence[str] = HPARAMS_METRICS,
        histograms: bool = False,
        flush_secs: float = FLUSH_SECS,
    ) -> None:
        self.logdir = str(logdir)
        self.histograms = histograms
        self._domains = dict(domains or {})
        self._writer = SummaryWriter(self.logdir, max_queue=MAX_QUEUE, flush_secs=flush_secs)
        # TensorBoard takes a run's first session start as the start and each later one as a
        # restart that hides the steps from its own on (resume_at). This one, beyond any real
        # step, is the first where the run is new and hides nothing where it is not (a restarted
        # actor on remote storage cannot see the run's earlier files to tell which).
        self._session_start(NEVER_STEP)
        self._session_written = False
        self._last_step = 0
        self._logged_at_last_step: set[str] = set()
        self.log_hparams(hparams, dict.fromkeys(metrics))

    def log_step(self, step: int, result: Mapping[str, Any]) -> list[str]:
        """Write the result dict's grouped numeric entries as scalars under their own tags.

        Args:
            step: the x-axis value (Tune's ``training_iteration``).
            result: a trial's result dict; keys outside :data:`TAG_GROUPS` and non-numbers are
                skipped, and so are non-finite ``eval/*`` values (``-inf`` Parzen LL means "not
                evaluated yet", not a score).

        Returns:
            The tags written.
        """
        written = []
        for tag, value in result.items():
            if not tag.startswith(TAG_GROUPS) or not _is_number(value):
                continue
            value = float(value)
            if tag.startswith("eval/") and not math.isfinite(value):
                continue
            self._writer.add_scalar(tag, value, step)
            written.append(tag)
        self._mark(step, written)
        return written

    def log_samples(self, step: int, images: torch.Tensor) -> None:
        """Write a square-ish grid of ``images`` (N, C, H, W) in [0, 1] as one image summary.

        Args:
            step: the x-axis value.
            images: samples G(z) of the same fixed z at every call, so a grid evolves in place.
        """
        images = images.detach().to("cpu", torch.float32).clamp(0, 1)
        nrow = max(1, math.ceil(math.sqrt(len(images))))
        grid = tile(images, nrow=nrow, padding=1, pad_value=1.0)  # (C, H', W')
        self._writer.file_writer.add_summary(_image_summary(SAMPLES_TAG, grid), step)

    def log_histograms(self, step: int, generator: torch.nn.Module, discriminator: torch.nn.Module) -> None:
        """Write a histogram of every parameter of G and D (under ``weights/g/...``, ``weights/d/...``).

        Does nothing unless the monitor was made with ``histograms=True``.
        """
        if not self.histograms:
            return
        for prefix, net in (("weights/g", generator), ("weights/d", discriminator)):
            for name, param in net.named_parameters():
                self._write_histogram(f"{prefix}/{name}", param.detach(), step)

    def _write_histogram(self, tag: str, values: torch.Tensor, step: int) -> None:
        # Binned by torch on the parameter's own device: add_histogram's numpy binning of the
        # paper's 1200 x 1200 weight matrix takes ~10x longer, and only 2 x HISTOGRAM_BINS numbers
        # leave a GPU this way.
        values = values.flatten().float()
        low, high = values.min().item(), values.max().item()
        # A constant tensor (zero-initialised biases) still needs bins of some width.
        left, right = (low, high) if high > low else (low - 0.5, high + 0.5)
        counts = torch.histc(values, HISTOGRAM_BINS, left, right)
        limits = torch.linspace(left, right, HISTOGRAM_BINS + 1)[1:]  # right edges
        self._writer.add_histogram_raw(
            tag, min=low, max=high, num=values.numel(), sum=values.sum().item(),
            sum_squares=torch.dot(values, values).item(), bucket_limits=limits.tolist(),
            bucket_counts=counts.tolist(), global_step=step,
        )

    def log_hparams(self, hparams: Mapping[str, Any], metrics: Mapping[str, float | None]) -> None:
        """Record the configuration for the HParams dashboard, against the given metric tags.

        The dashboard reads a trial's metrics as the last value of each metric's scalar tag in
        the same run, so the values :meth:`log_step` writes are what it shows. TensorBoard keeps
        the first configuration written to a run; later calls only add metric values.

        Args:
            hparams: name -> bool, number or string (other values are recorded as strings).
            metrics: metric tag -> value; a value that is not None is written as a scalar at the
                latest step, unless :meth:`log_step` already wrote that tag there.
        """
        if not self._session_written:
            values = {name: _hparam_value(v) for name, v in hparams.items()}
            infos = [self._hparam_info(name, value) for name, value in values.items()]
            experiment = api_pb2.Experiment(
                hparam_infos=infos,
                metric_infos=[api_pb2.MetricInfo(name=api_pb2.MetricName(tag=tag)) for tag in metrics],
                time_created_secs=time.time(),
            )
            # Every trial writes the same experiment description (the dashboard takes the first
            # it finds); the session's group is the run itself, so trials are never merged.
            self._writer.file_writer.add_summary(
                _hparams_summary(metadata.EXPERIMENT_TAG, plugin_data_pb2.HParamsPluginData(experiment=experiment))
            )
            self._writer.file_writer.add_summary(hp.hparams_pb(values, trial_id=Path(self.logdir).name))
            self._session_written = True
        for tag, value in metrics.items():
            if value is not None and tag not in self._logged_at_last_step:
                self._writer.add_scalar(tag, float(value), self._last_step)
                self._mark(self._last_step, [tag])

    def log_note(self, name: str, text: str, step: int = 0) -> None:
        """Write a one-off text note under ``notes/<name>`` (TensorBoard's Text tab), e.g. why a
        trial that was given a GPU trains on the CPU."""
        self._writer.add_text(f"{NOTES_PREFIX}{name}", text, step)

    def resume_at(self, step: int) -> None:
        """Mark a restore: TensorBoard hides what earlier sessions of this run logged at ``step`` or later.

        After a crash a trial resumes from its last checkpoint and logs some steps again; after
        PBT's exploit it continues from the donor's step. Either way the run's curves continue
        from ``step`` instead of doubling back.
        """
        self._session_start(step)

    def flush(self) -> None:
        """Write buffered events to disk now."""
        self._writer.flush()

    def close(self) -> None:
        """Flush and close the event file; calling it again does nothing."""
        self._writer.close()

    def _session_start(self, step: int) -> None:
        start = event_pb2.SessionLog(status=event_pb2.SessionLog.START)
        self._writer.file_writer.add_event(event_pb2.Event(step=step, wall_time=time.time(), session_log=start))

    def _hparam_info(self, name: str, value: bool | float | str) -> api_pb2.HParamInfo:
        info = api_pb2.HParamInfo(name=name, type=_data_type(value))
        if name in self._domains:
            self._domains[name].update_hparam_info(info)
            # The dashboard shows the first five hparams, those that differ first: a searched one
            # differs across the population even though each trial sees only its own value.
            interval = info.domain_interval
            info.differs = len(info.domain_discrete.values) > 1 or interval.min_value < interval.max_value
        return info

    def _mark(self, step: int, tags: list[str]) -> None:
        if step != self._last_step:
            self._last_step, self._logged_at_last_step = step, set()
        self._logged_at_last_step.update(tags)


def search_domains(search: SearchConfig) -> dict[str, Domain]:
    """The HParams dashboard's domain of each row of the hyperparameter table: the search space's."""
    return {
        h.name: hp.RealInterval(*map(float, h.values(search))) if h.continuous else hp.Discrete(list(h.values(search)))
        for h in hyperparameters.table()
        if h.values(search)  # an empty list: not searched, each trial's own setting
    }


def shows_as_image(shape: Sequence[int]) -> bool:
    """Whether data points of shape (C, H, W) make a sample grid (not the 1-D/2-D point sets)."""
    channels, height, width = shape
    return channels in (1, 3) and height > 1 and width > 1


def write_experiment_summary(
    logdir: str | Path, leaderboard_rows: Sequence[Mapping[str, Any]], summary: Mapping[str, Any]
) -> str:
    """Write the experiment's leaderboard and the best trial's numbers as a TensorBoard run.

    Writes, into ``logdir`` (``<experiment>/summary``): a markdown text summary (tags
    ``summary/leaderboard`` and ``summary/best``), the scalars ``best/parzen_test_ll``,
    ``best/parzen_test_se``, ``best/parzen_valid_ll``, ``best/sigma`` and
    ``reference/parzen_test_ll``, and the same markdown as ``leaderboard.md``.

    Args:
        logdir: the summary run's directory; created if missing.
        leaderboard_rows: one mapping per trial, best first, with ``trial_id``,
            ``parzen_valid_ll``, ``iterations``, ``status`` and ``config`` (a mapping).
        summary: the best trial's scores (``parzen_test_ll``, ``parzen_test_se``,
            ``parzen_valid_ll``, ``sigma``, ``trial_id``, ``training_iteration``) and
            ``reference`` (the held-out-data scores, with ``parzen_test_ll`` ...).

    Returns:
        The markdown written.
    """
    table, best = leaderboard_markdown(leaderboard_rows), best_trial_markdown(summary)
    step = int(summary.get("training_iteration") or 0)
    reference = summary.get("reference") or {}
    scalars = {
        "best/parzen_test_ll": summary.get("parzen_test_ll"),
        "best/parzen_test_se": summary.get("parzen_test_se"),
        "best/parzen_valid_ll": summary.get("parzen_valid_ll"),
        "best/sigma": summary.get("sigma"),
        "reference/parzen_test_ll": reference.get("parzen_test_ll"),
        **{f"best/{m}": (summary.get("quality") or {}).get(m) for m in ("fd", "classes_covered", "tvd")},
    }
    with SummaryWriter(str(logdir), flush_secs=FLUSH_SECS) as writer:
        writer.add_text("summary/leaderboard", table, step)
        writer.add_text("summary/best", best, step)
        for tag, value in scalars.items():
            if _is_number(value):
                writer.add_scalar(tag, float(value), step)
    text = f"# Leaderboard\n\n{table}\n\n# Best trial\n\n{best}\n"
    atomic_write_text(Path(logdir) / SUMMARY_FILE, text)
    return text


def leaderboard_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """The leaderboard as a markdown table: rank, trial, Parzen validation LL, steps, status, config."""
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row.get("config", {}) if k not in keys]
    measures = [m for m in ("fd", "classes_covered", "tvd") if any(m in (row.get("quality") or {}) for row in rows)]
    header = ["#", "trial", "valid LL (nats)", *measures, "steps", "status", *keys]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for rank, row in enumerate(rows, 1):
        config, quality = row.get("config", {}), row.get("quality") or {}
        cells = [rank, row.get("trial_id", ""), _nats(row.get("parzen_valid_ll")), *(_fmt(quality.get(m)) for m in measures),
                 row.get("iterations", ""), row.get("status", ""), *(_fmt(config.get(k)) for k in keys)]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def best_trial_markdown(summary: Mapping[str, Any]) -> str:
    """The best trial's test LL ± SE with its sigma, its classifier measures, and the held-out-data
    reference, as markdown (the same lines the CLI prints)."""
    from raygan.report import summary_lines

    lines = summary_lines(dict(summary), strong=lambda text: f"**{text}**")
    config = summary.get("config")
    if config:
        lines.append("Configuration: " + ", ".join(f"`{k}={_fmt(v)}`" for k, v in config.items()) + ".")
    return "\n\n".join(lines)


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _hparam_value(value: Any) -> bool | float | str:
    if isinstance(value, (bool, str)):
        return value
    if _is_number(value):  # numpy scalars too: the protos take Python numbers
        return int(value) if isinstance(value, numbers.Integral) else float(value)
    return str(value)


def _data_type(value: bool | float | str) -> int:
    if isinstance(value, bool):
        return api_pb2.DATA_TYPE_BOOL
    if isinstance(value, str):
        return api_pb2.DATA_TYPE_STRING
    return api_pb2.DATA_TYPE_FLOAT64


def _hparams_summary(tag: str, data: plugin_data_pb2.HParamsPluginData) -> summary_pb2.Summary:
    # The HParams plugin's summary shape: its proto in the metadata, an empty tensor as value.
    summary = summary_pb2.Summary()
    summary.value.add(tag=tag, metadata=metadata.create_summary_metadata(data), tensor=metadata.NULL_TENSOR)
    return summary


def _image_summary(tag: str, image: torch.Tensor) -> summary_pb2.Summary:
    """An image summary of ``image`` (C, H, W) in [0, 1], C = 1 or 3, as PNG.

    Written here rather than by SummaryWriter.add_image, which encodes RGB at zlib level 6: a
    grey grid at level 1 encodes ~7x faster (the paper's 8 x 8 MNIST grid: ~4 ms instead of
    ~27 ms on one core) into a smaller file.
    """
    channels, height, width = image.shape
    pixels = image.mul(255).add_(0.5).clamp_(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()  # (H, W, C)
    buffer = io.BytesIO()
    if channels == 1:
        Image.fromarray(pixels[:, :, 0], "L").save(buffer, format="PNG", compress_level=1)
    else:
        Image.fromarray(pixels, "RGB").save(buffer, format="PNG", compress_level=1)
    summary = summary_pb2.Summary()
    summary.value.add(tag=tag, image=summary_pb2.Summary.Image(
        height=height, width=width, colorspace=channels, encoded_image_string=buffer.getvalue()))
    return summary
