"""What a finished population hands back: the leaderboard, ``best/``, and the text the user reads.

No Ray here: :mod:`raygan.tune` gathers the trials' results and scores, and this module ranks
them, writes the best trial's artefacts and formats the report. :func:`fmt` is the one number
formatter that the CLI, the TensorBoard summary and ``leaderboard.md`` share.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from raygan import hyperparameters, images
from raygan.config import to_dict
from raygan.files import atomic_write_bytes, atomic_write_json, atomic_write_text

def fmt(value: Any, digits: int = 4) -> str:
    """A value for a table cell: floats to ``digits`` significant digits, None as empty."""
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value)
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):
        value = float(value)
        return f"{value:.{digits}g}" if math.isfinite(value) else str(value)
    return str(value)


def nats(value: Any) -> str:
    """A log-likelihood in nats, to two decimals."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value):
        return f"{float(value):.2f}"
    return fmt(value)


@dataclass(frozen=True)
class TrialRow:
    """One line of the leaderboard: a trial, its hyperparameters and the scores of its ranked state."""

    trial_id: str
    parzen_valid_ll: float
    config: dict[str, Any]
    iterations: int
    status: str
    rank_score: float = -math.inf
    quality: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Report:
    """What an experiment produced: the leaderboard, the best trial's scores, where things are."""

    leaderboard: list[TrialRow]
    summary: dict[str, Any]
    experiment_path: str
    best_dir: str
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def reference(self) -> dict[str, Any]:
        """The held-out-data reference's scores (summary.json's "reference")."""
        return self.summary.get("reference", {})


def finite_or(value: Any, default: float = -math.inf) -> float:
    """``value`` as a float, or ``default`` where it is missing or NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return default
    return float(value)


def sort_leaderboard(rows: list[TrialRow]) -> list[TrialRow]:
    """Best first: by rank score (which puts collapsed trials below covering ones), then Parzen."""
    return sorted(rows, key=lambda r: (r.rank_score, r.parzen_valid_ll), reverse=True)


def write_best(best_dir: Path, generator_file: Path, experiment: Any, summary: dict[str, Any], samples: Any) -> None:
    """best/: generator.pt, config.yaml, summary.json, samples.png; every file written atomically.

    Args:
        best_dir: the directory (created if missing).
        generator_file: the ranked generator's file, copied as is.
        experiment: the best trial's :class:`~raygan.config.ExperimentConfig`.
        summary: what summary.json holds.
        samples: (N, C, H, W) samples in [0, 1]; the first 100 make samples.png.
    """
    best_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(best_dir / "generator.pt", generator_file.read_bytes())
    atomic_write_text(best_dir / "config.yaml", yaml.safe_dump(to_dict(experiment), sort_keys=False))
    atomic_write_json(best_dir / "summary.json", summary)
    atomic_write_bytes(best_dir / "samples.png", images.png_bytes(samples[:100], nrow=10, padding=1))


def _quality_cells(quality: dict[str, Any]) -> list[str]:
    return [fmt(quality.get("fd"), 3), fmt(quality.get("classes_covered")), fmt(quality.get("tvd"), 2)]


def format_leaderboard(report: Report) -> list[str]:
    """The leaderboard's lines: rank, trial, validation LL, quality, steps, hyperparameters."""
    s = report.summary
    names = [h for h in hyperparameters.names() if any(h in row.config for row in report.leaderboard)]
    cells = [[fmt(row.config.get(h), 3) for h in names] for row in report.leaderboard]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(names)]
    with_quality = any(row.quality for row in report.leaderboard)
    quality_head = f"{'FD':>7} {'classes':>7} {'TVD':>5}  " if with_quality else ""
    lines = [f"Leaderboard (Parzen validation log-likelihood in nats, {s['ranking_samples']:,} samples per trial):"]
    lines.append(f"  {'#':>2}  {'trial':<24} {'valid LL':>9}  {quality_head}{'steps':>5}  "
                 + "  ".join(f"{h:>{w}}" for h, w in zip(names, widths)))
    for i, (row, values) in enumerate(zip(report.leaderboard, cells), 1):
        quality = ""
        if with_quality:
            fd, covered, tvd = _quality_cells(row.quality)
            quality = f"{fd:>7} {covered:>7} {tvd:>5}  "
        columns = "  ".join(f"{v:>{w}}" for v, w in zip(values, widths))
        lines.append(f"  {i:>2}  {row.trial_id:<24} {row.parzen_valid_ll:>9.1f}  {quality}{row.iterations:>5}  {columns}")
    return lines


def _mixture_lines(m: dict[str, Any] | None) -> list[str]:
    """The mixture beside the best single trial, scored the same way (summary.json's "mixture")."""
    if not m:
        return []
    weights = ", ".join(f"{member['trial_id']} {member['weight']:.2f}" for member in m["members"])
    lines = [f"Mixture of the best {len(m['members'])} trials (weights fitted on validation to {m['fit']['fit_to']}: {weights}):"]
    for name, scores in (("mixture", m["mixture"]), ("best single trial", m["best_single"])):
        lines.append(f"  {name:<18} Parzen test LL {nats(scores['parzen_test_ll'])} ± {nats(scores['parzen_test_se'])}"
                     f" ({scores['num_samples']:,} samples){_quality_text(scores.get('quality'))}")
    lines.append(f"  saved as {m['file']}")
    return lines


def _quality_text(q: dict[str, Any] | None) -> str:
    return f", FD {fmt(q['fd'], 3)}, classes covered {q['classes_covered']}, TVD {fmt(q['tvd'], 2)}" if q else ""


def _refined_lines(refined: dict[str, Any] | None) -> list[str]:
    """The best generator's refined samplers beside it (summary.json's "refined")."""
    if not refined:
        return []
    lines = ["The best generator's samples corrected by its own discriminator (raygan.refine):"]
    for method, r in refined.items():
        if "error" in r:
            lines.append(f"  {method:<4} not scored: {r['error']}")
            continue
        lines.append(f"  {method:<4} Parzen test LL {nats(r['parzen_test_ll'])} ± {nats(r['parzen_test_se'])}"
                     f" ({r['num_samples']:,} samples){_quality_text(r.get('quality'))}; acceptance {r['acceptance']:.1%},"
                     f" {r['seconds']:.0f} s{_by_class_text(r)}")
    return lines


def _by_class_text(r: dict) -> str:
    if not r.get("by_class"):
        return ""
    left_out, unsplit = r.get("classes_left_out") or [], r.get("classes_unsplit") or []
    return (", class by class" + (f" (classes {', '.join(map(str, left_out))} left out: G hardly draws them)" if left_out else "")
            + (f" (classes {', '.join(map(str, unsplit))} not split by confidence: G hardly draws one half)" if unsplit else ""))


def summary_lines(s: dict[str, Any], strong: Any = str) -> list[str]:
    """The best trial's numbers beside the held-out-data reference: what the CLI prints and the
    TensorBoard summary shows (``strong`` marks the headline numbers, e.g. markdown bold)."""
    r = s.get("reference") or {}
    headline = strong(f"{nats(s.get('parzen_test_ll'))} ± {nats(s.get('parzen_test_se'))}")
    lines = [
        f"Best trial {s.get('trial_id')} ({s.get('num_samples', 0):,} samples): Parzen test log-likelihood {headline} nats "
        f"(sigma {fmt(s.get('sigma'), 3)} chosen on validation; validation LL {nats(s.get('parzen_valid_ll'))})"
    ]
    matched = s.get("at_reference_size")
    if matched:
        lines.append(
            f"  the same generator with {matched['num_samples']:,} samples (as many centres as the reference): "
            f"{nats(matched['parzen_test_ll'])} ± {nats(matched['parzen_test_se'])} nats"
        )
    if r:
        lines.append(
            f"Held-out-data reference ({r.get('num_samples', s.get('num_samples', 0)):,} real training images as Parzen centres): "
            f"{nats(r.get('parzen_test_ll'))} ± {nats(r.get('parzen_test_se'))} nats (sigma {fmt(r.get('sigma'), 3)})"
        )
    quality = s.get("quality")
    if quality:
        ref = quality.get("reference") or {}
        lines.append(
            f"Sample quality by the {s.get('dataset')} classifier: FD {fmt(quality['fd'], 3)}, classes covered "
            f"{strong(str(quality['classes_covered']))}, TVD {strong(fmt(quality['tvd'], 2))}, confidence {fmt(quality['confidence'], 3)}"
        )
        if "label_accuracy" in quality:
            accuracy = strong(f"{quality['label_accuracy']:.1%}")
            lines.append(f"Conditional: {accuracy} of the samples read as the class they were asked for")
        lines.append(
            f"Held-out-data reference (validation images): FD {fmt(ref.get('fd'), 3)}, classes covered "
            f"{ref.get('classes_covered')}, TVD {fmt(ref.get('tvd'), 2)}, confidence {fmt(ref.get('confidence'), 3)}"
        )
    return lines


def size(num_bytes: float) -> str:
    """A byte count for people: 512 B, 40.2 MB, 1.31 GB."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if num_bytes >= scale:
            return f"{num_bytes / scale:.3g} {unit}"
    return f"{num_bytes:.0f} B"


def checkpoint_line(disk: dict[str, Any]) -> str:
    """What the run's checkpoints take on storage, against the budget per trial.

    Args:
        disk: ``checkpoints``, ``trials``, ``bytes``, ``most_per_trial`` (:func:`raygan.files.checkpoint_usage`)
            and ``kept_per_trial`` (``tune.checkpoints_kept``).
    """
    return (f"Checkpoints on storage: {size(disk['bytes'])} in {disk['checkpoints']:,} checkpoints of {disk['trials']:,} trials "
            f"(at most {disk['most_per_trial']} per trial; tune.checkpoints_kept: {disk['kept_per_trial']})")


def format_report(report: Report) -> str:
    """The leaderboard and the best trial's numbers, as the user sees them at the end."""
    s = report.summary
    lines = ["", *format_leaderboard(report), "", *summary_lines(s)]
    if report.extra.get("quality_note"):  # why there is no FD, classes or TVD beside Parzen
        lines.append(report.extra["quality_note"])
    lines += _refined_lines(s.get("refined"))
    lines += _mixture_lines(s.get("mixture"))
    lines += [report.extra[note] for note in ("refine_note", "mixture_note") if report.extra.get(note)]
    if report.extra.get("checkpoints"):
        lines.append(checkpoint_line(report.extra["checkpoints"]))
    lines += [
        f"Best generator, config, summary and samples: {report.best_dir}/",
        f"TensorBoard: tensorboard --logdir {report.experiment_path}",
    ]
    return "\n".join(lines)
