"""Does the discriminator see the generator's class imbalance? Class by class, for one generator.

    python experiments/refine_classes.py --checkpoint RUN/best/generator.pt [--steps 0 300 2000]

Proposition 1 gives log p_data(x)/p_g(x) = logit D*(x). If G draws class y too often, the class's
share of G's samples is p_g(y) > p_data(y), and an exact ratio averages log p_data(y)/p_g(y) < 0
over that class's samples. Both refined samplers (raygan.refine) aim at p_g(x) r(x), whose class
shares are p_g(y) E[r(x) | y] / E[r(x)]: a D that corrects the class histogram has to read that
shift. For the run's own calibration (each fine-tuning step count given, then Platt, on the
run's validation split) this prints, per class as the domain classifier reads 10,000 samples:

- G's share of the samples, and the log ratio an exact D would average there, log(p_data(y) / share);
- D's calibrated log ratio averaged over the class's samples (its level is arbitrary: compare
  classes, not the ideal's absolute values);
- the class shares after weighting each sample by D's ratio exp(l(x)) (what exact rejection
  sampling or a long MH chain converges to), and the TVD to the data's shares before and after.

A D that sees the imbalance puts its lowest averages on the over-drawn classes and lowers the TVD.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from raygan import quality, refine
from raygan.config import replace
from raygan.errors import UserError
from raygan.evaluate import refine_config, refine_data
from raygan.models import generate


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, required=True, help="a raygan generator.pt that carries its discriminator")
    p.add_argument("--steps", type=int, nargs="+", default=[0, 300, 2000],
                   help="D's fine-tuning steps against the frozen G before Platt scaling (0: Platt alone)")
    p.add_argument("--num", type=int, default=10_000, help="samples read")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def class_table(shares: np.ndarray, data_shares: np.ndarray, log_ratio: np.ndarray, predicted: np.ndarray) -> tuple[list[str], float]:
    """One row per class and the TVD of the ratio-weighted class shares to the data's."""
    w = np.exp(log_ratio - log_ratio.max())
    weighted = np.bincount(predicted, weights=w, minlength=len(shares)) / w.sum()
    rows = []
    for c in range(len(shares)):
        mean = log_ratio[predicted == c].mean() if (predicted == c).any() else float("nan")
        rows.append(f"| {c} | {100 * shares[c]:.1f} | {np.log(data_shares[c] / shares[c]):+.2f} | {mean:+.2f} | {100 * weighted[c]:.1f} |")
    return rows, quality.total_variation(weighted, data_shares)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        data, classifier_file = refine_data(None, None, args.checkpoint)
        config = refine_config(None, args.checkpoint)
        model = refine.load_refinable(args.checkpoint)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if len(model.members) != 1 or model.num_classes is not None or data.train_labels is None:
        print("error: give one unconditional generator.pt of a labelled data set", file=sys.stderr)
        return 2
    classifier = quality.for_data(data, classifier_file)
    g, d = model.members[0], model.discriminators[0]
    x = generate(g, args.num, seed=args.seed)
    _, probs = quality.read(classifier.classifier, x, 1000)
    predicted = probs.argmax(1).cpu().numpy()
    shares = quality.class_histogram(predicted, classifier.num_classes)
    data_shares = classifier.label_histogram
    raw_tvd = quality.total_variation(shares, data_shares)
    print(f"$ python experiments/refine_classes.py {' '.join(sys.argv[1:] if argv is None else argv)}")
    for steps in args.steps:
        calibration = replace(config, calibration="finetune" if steps else "platt", finetune_steps=steps)
        ratio = refine.calibrate(g, d, data.valid, calibration, seed=args.seed, train=data.train)
        log_ratio = ratio.log_ratio(x).double().numpy()
        rows, weighted_tvd = class_table(shares, data_shares, log_ratio, predicted)
        what = "Platt alone" if not steps else f"{steps} fine-tuning steps at {config.finetune_lr:g}, then Platt"
        print(f"\n{what} (a = {ratio.scale:.2f}, b = {ratio.shift:+.2f}); TVD to the data's classes "
              f"{raw_tvd:.3f} raw, {weighted_tvd:.3f} weighted by D's ratio\n")
        print("| class | G's share % | exact log ratio | D's mean log ratio | share weighted by D % |")
        print("|---:|---:|---:|---:|---:|")
        print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
