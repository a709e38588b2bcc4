"""How trials are ranked: a score within each group, and a group rule that sees mode collapse.

DESIGN: "Ranking does not reward collapse." The Parzen estimate barely sees a generator that
draws one digit (Theis et al., 2016), so a trial whose samples cover fewer classes than
``eval.min_classes`` (by the data set's domain classifier) ranks below every trial that covers
enough, whatever its score. Within each group the score is ``eval.rank_by``: the Parzen
validation log-likelihood (the paper's measure; higher is better) or the classifier's Fréchet
distance (lower is better, so it enters negated).

Tune's schedulers rank on one number, so the group is folded into it: a collapsed trial's score
is shifted down by :data:`COLLAPSED_OFFSET`, far below any score a covering trial can have.
"""

from __future__ import annotations

import math

from raygan.config import RANK_BY

SCORE_LIMIT = 1e8  # |score| beyond this is clipped: Parzen LLs and FDs live far inside it
COLLAPSED_OFFSET = 1e9  # > 2 * SCORE_LIMIT: every collapsed trial ranks below every covering one


def rank_score(parzen_valid_ll: float, fd: float | None, classes_covered: int | None,
               rank_by: str = "parzen", min_classes: int | None = None) -> float:
    """The number the scheduler ranks trials on (higher is better).

    Args:
        parzen_valid_ll: Parzen validation log-likelihood (nats).
        fd: Fréchet distance in the domain classifier's features, or None without a classifier.
        classes_covered: classes receiving at least ``eval.min_class_share`` of the samples, or
            None without a classifier (then no group rule applies).
        rank_by: "parzen" or "fd".
        min_classes: classes a trial must cover to rank in the upper group (None: no rule).

    Returns:
        -inf for a generator that cannot be scored (diverged), else the score, shifted down by
        :data:`COLLAPSED_OFFSET` where the trial covers too few classes.
    """
    if rank_by not in RANK_BY:
        raise ValueError(f"unknown ranking {rank_by!r}")
    if rank_by == "fd" and fd is None:
        raise ValueError("ranking by FD needs the domain classifier's FD")
    score = parzen_valid_ll if rank_by == "parzen" else -fd
    if not math.isfinite(score):
        return -math.inf
    score = min(max(score, -SCORE_LIMIT), SCORE_LIMIT)
    if min_classes is not None and classes_covered is not None and classes_covered < min_classes:
        return score - COLLAPSED_OFFSET
    return score


def collapsed(score: float) -> bool:
    """Whether a rank score is in the lower group (a finite score below the covering range)."""
    return math.isfinite(score) and score < -SCORE_LIMIT
