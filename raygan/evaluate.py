"""``python -m raygan.evaluate``: the paper's Parzen-window score for a generator or any model's samples,
beside the domain classifier's sample-quality measures.

Goodfellow et al. (2014), Section 5 / Table 1: sigma chosen on the validation split over the
grid logspace(-1, 0, 10), then the mean test log-likelihood ± its standard error. Printed beside
it, the held-out-data reference: the same protocol with real training images as the centres.

On a labelled data set the same samples are also read by the data set's domain classifier
(:mod:`raygan.quality`: FD, classes covered, TVD to the training labels, confidence), beside
what the validation split scores. Parzen rewards blur and barely sees mode collapse; these see it.

    python -m raygan.evaluate --dataset mnist5k --checkpoint <best>/generator.pt
    python -m raygan.evaluate --dataset mnist5k --checkpoint <best>/mixture.pt   # raygan.mixture's
    python -m raygan.evaluate --dataset mnist5k --samples other_model.npy --num-samples 10000 --json
    python -m raygan.evaluate --checkpoint <run>/best/generator.pt   # the run's own data (and its recorded split)

A checkpoint inside a run's directory (or ``--run DIR``) is scored on that run's data: its data
settings from experiment.yaml and, for a user's data, the split recorded in data_split.json, and
the classifier its eval.classifier names.

No Ray here: this calls :mod:`raygan.parzen` and :mod:`raygan.quality` directly.
"""

from __future__ import annotations

import argparse
import json
import math
import pickle
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from raygan import parzen, quality, refine
from raygan.config import CALIBRATIONS, REFINE_METHODS, ConfigError, DataConfig, RefineConfig, build, dataset_argument, load_config
from raygan.data import Dataset, load_data
from raygan.errors import CheckpointError, QualityError, UserError
from raygan.files import EXPERIMENT_FILE
from raygan.mixture import draw, load_samplable, recorded_split

RUN_DEPTH = 3  # a checkpoint lies at most this deep in its run: <run>/<trial>/checkpoint_n/generator.pt
DEFAULT_DATASET = "mnist5k"


@dataclass(frozen=True)
class EvaluationReport:
    """A model's Parzen score and quality measures beside the held-out-data references, on one data set."""

    dataset: str
    source: str  # the samples file or checkpoint scored
    num_samples: int  # the model's Parzen centres (and the samples the classifier reads)
    num_reference: int  # training images used as the reference's centres
    model: parzen.ParzenResult
    reference: parzen.ParzenResult
    quality: quality.QualityScores | None = None  # the samples read by the domain classifier
    quality_reference: quality.QualityScores | None = None  # the validation split, read the same way
    classifier_accuracy: float | None = None  # the classifier's held-out (test split) accuracy
    quality_note: str | None = None  # why quality is absent, when it is
    refined: dict | None = None  # --refine: the sampler, its acceptance, proposals, seconds and calibration

    def as_json(self) -> dict:
        """One JSON-ready object; the keys of ``best/summary.json`` (``parzen_test_ll``, ``quality``, ...)."""
        scores = None
        if self.quality is not None:
            scores = {**self.quality.as_dict(), "reference": self.quality_reference.as_dict()}
            scores["classifier_accuracy"] = self.classifier_accuracy
        return {
            "dataset": self.dataset,
            "source": self.source,
            "num_samples": self.num_samples,
            "sigma": self.model.sigma,
            "parzen_valid_ll": self.model.valid_ll,
            "parzen_test_ll": self.model.test_ll,
            "parzen_test_se": self.model.test_se,
            "reference": {
                "num_samples": self.num_reference,
                "sigma": self.reference.sigma,
                "parzen_valid_ll": self.reference.valid_ll,
                "parzen_test_ll": self.reference.test_ll,
                "parzen_test_se": self.reference.test_se,
            },
            "quality": scores,
            "refined": self.refined,
        }


def read_samples(path: str | Path) -> np.ndarray:
    """Read one array of samples from a .npy file, without running any code stored in it.

    Args:
        path: a .npy file.

    Returns:
        The array, as stored.

    Raises:
        CheckpointError: the file is missing, not a .npy file, or holds several arrays (.npz).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"samples file {str(path)!r} does not exist")
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, pickle.UnpicklingError) as e:
        raise CheckpointError(f"{str(path)!r} is not a .npy array file ({e.__class__.__name__})") from None
    if not isinstance(array, np.ndarray):
        array.close()
        raise CheckpointError(f"{str(path)!r} holds several arrays (.npz); save one array with numpy.save")
    return array


def check_samples(array: np.ndarray, dataset: Dataset, source: str = "the samples") -> np.ndarray:
    """Check that an array of samples fits ``dataset``, as any model's samples must to be scored.

    Args:
        array: (N, D) with D the data set's values per image, or (N, C, H, W).
        dataset: the data set the samples model.
        source: where the samples came from, for messages.

    Returns:
        float32 samples of shape (N, C, H, W).

    Raises:
        CheckpointError: the shape, dtype or values do not fit (values must be finite, and in
            [0, 1] for images).
    """
    shape = dataset.shape
    dim = math.prod(shape)
    if array.ndim not in (2, 4) or len(array) == 0 or array.shape[1:] not in ((dim,), shape):
        want = " x ".join(map(str, shape))
        raise CheckpointError(f"{source} have shape {array.shape}, but {dataset.name} needs N x {dim} or N x {want}")
    if array.dtype == bool or not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise CheckpointError(f"{source} are {array.dtype}, not real numbers")
    samples = array.astype(np.float32).reshape(len(array), *shape)
    if not np.isfinite(samples).all():
        raise CheckpointError(f"{source} contain NaN or infinite values")
    if dataset.bounded and (samples.min() < 0 or samples.max() > 1):
        raise CheckpointError(
            f"{source} range over [{samples.min():g}, {samples.max():g}], but {dataset.name} images lie in [0, 1]"
        )
    return samples


def generate_samples(checkpoint: str | Path, dataset: Dataset, num: int, seed: int = 0) -> np.ndarray:
    """Draw ``num`` samples from a raygan generator or mixture file, checking it was trained on ``dataset``'s shape.

    Args:
        checkpoint: a ``generator.pt`` or ``mixture.pt`` written by raygan.
        dataset: the data set the generator models.
        num: number of samples.
        seed: seeds the noise.

    Returns:
        float32 samples of shape (num, C, H, W).

    Raises:
        CheckpointError: the file is missing, neither a raygan generator nor a mixture, or for another shape.
    """
    model = load_samplable(checkpoint, device="cpu")
    if tuple(model.data_shape) != dataset.shape:
        shape = tuple(model.data_shape)
        raise CheckpointError(f"{str(checkpoint)!r} generates {shape} samples, but {dataset.name} is {dataset.shape}")
    return draw(model, num, seed=seed).numpy()


def run_holding(checkpoint: str | Path) -> Path | None:
    """The run directory (holding experiment.yaml) a checkpoint lies in, or None."""
    for parent in list(Path(checkpoint).expanduser().absolute().parents)[:RUN_DEPTH]:
        if (parent / EXPERIMENT_FILE).is_file():
            return parent
    return None


@dataclass(frozen=True)
class DataSource:
    """What to score against: the data settings, a run's recorded split, its classifier and seed."""

    data: DataConfig
    recorded: dict | None = None
    classifier: str | None = None
    seed: int = 0  # seeds a generated point set, as the run's tune.seed did


def data_source(dataset: str | None, data_root: str | Path | None, run: str | Path | None,
                checkpoint: str | Path | None) -> DataSource:
    """The run's data where there is a run (``run``, else the one holding ``checkpoint``) and
    ``dataset`` is unset or names the same data; else ``dataset`` (default mnist5k) as given.

    Raises:
        UserError: ``run`` is not a run directory, or ``dataset`` differs from ``run``'s data.
    """
    run_dir = Path(run).expanduser() if run is not None else None if checkpoint is None else run_holding(checkpoint)
    if run is not None and not (run_dir / EXPERIMENT_FILE).is_file():
        raise UserError(f"{str(run_dir)!r} is not a raygan run directory (it holds no {EXPERIMENT_FILE})")
    root = None if data_root is None else str(data_root)
    given = None if dataset is None else build(DataConfig, {"name": str(dataset), "root": root}, "data")
    if run_dir is not None:
        try:
            config = load_config(run_dir / EXPERIMENT_FILE)
        except ConfigError as e:
            if given is not None and run is None:  # the data were named: a run file of another version is no obstacle
                return DataSource(given)
            raise UserError(f"cannot read the run's settings ({e}); name the data with --dataset") from None
        if given is None or given.name == config.data.name:
            return DataSource(config.data, recorded_split(run_dir), config.eval.classifier, config.tune.seed)
        if run is not None:
            raise UserError(f"--dataset {dataset!r} is not the data of the run {str(run_dir)!r} ({config.data.name}); drop one of them")
    return DataSource(given or DataConfig(name=DEFAULT_DATASET))


def evaluate_samples(
    dataset: str | None = None,
    *,
    samples: str | Path | None = None,
    checkpoint: str | Path | None = None,
    data_root: str | Path | None = None,
    run: str | Path | None = None,
    classifier: str | Path | None = None,
    num_samples: int = parzen.DEFAULT_NUM_SAMPLES,
    seed: int = 0,
    chunk_size: int = parzen.DEFAULT_CHUNK_SIZE,
    with_quality: bool | None = None,
    cache_dir: str | Path | None = None,
    log: Callable[[str], None] = print,
    refine_with: str | None = None,
    refine_config: RefineConfig | None = None,
) -> EvaluationReport:
    """Score a samples file or a generator with the Parzen protocol, beside the held-out-data reference.

    Args:
        dataset: a data set name (see :data:`raygan.config.DATASETS`) or a user's data path; None:
            the data of the run (see :func:`data_source`), else mnist5k.
        samples: a .npy file of samples (exactly one of ``samples`` and ``checkpoint``); its first
            ``num_samples`` rows are the centres.
        checkpoint: a raygan ``generator.pt`` or ``mixture.pt``; ``num_samples`` samples are drawn from it.
        data_root: where the data set's files are (None: its default place).
        run: the run whose data (and recorded split, and classifier) to score against (None: the
            run that holds ``checkpoint``, if any).
        classifier: a raygan classifier file to read the samples with (None: the run's
            eval.classifier, else the data set's own, trained on its labels).
        num_samples: Parzen centres for the model, and at most this many training images for the reference.
        seed: seeds the generator's noise and the reference's subset of training images.
        chunk_size: points per distance block (bounds memory).
        with_quality: also read the samples with the domain classifier: True (a data set without
            labels or a named classifier is an error), False, or None (where there is one).
        cache_dir: where the classifier is cached (None: ``$RAYGAN_CACHE_DIR`` or
            ``~/.cache/raygan/classifiers``); it is trained there on first use.
        log: gets the classifier's training line (its held-out accuracy).
        refine_with: "drs" or "mh": score the checkpoint's samples corrected by its saved
            discriminator(s) (:mod:`raygan.refine`; D calibrated on the validation split only), class
            by class (``refine.by_class``) unless ``with_quality`` is False.
        refine_config: the refined samplers' settings (None: the defaults).

    Returns:
        The :class:`EvaluationReport`.

    Raises:
        UserError: a bad argument, a missing or damaged file, or samples that do not fit the data
            set; QualityError where ``with_quality`` is True and the data set has no labels.
    """
    if (samples is None) == (checkpoint is None):
        raise UserError("give exactly one of --samples FILE.npy and --checkpoint generator.pt (or mixture.pt)")
    if num_samples < 1:
        raise UserError(f"--num-samples must be at least 1, got {num_samples}")
    if chunk_size < 1:
        raise UserError(f"--chunk-size must be at least 1, got {chunk_size}")
    if refine_with is not None and checkpoint is None:
        raise UserError("--refine corrects a generator's samples with its discriminator: give --checkpoint, not --samples")
    array = read_samples(samples) if samples is not None else None  # a bad file fails before the data load
    source = data_source(dataset, data_root, run, checkpoint)
    data = load_data(source.data, seed=source.seed, recorded=source.recorded)
    refined = None
    if array is not None:
        centres = check_samples(array, data, f"samples in {str(samples)!r}")[:num_samples]
    elif refine_with is not None:
        refine_config = refine_config or RefineConfig()
        shares = None if with_quality is False else refine_classes(
            data, refine_config, classifier if classifier is not None else source.classifier, cache_dir, log)
        result, ratios = refine.sample_file(checkpoint, data, num_samples, refine_with, refine_config, seed=seed, classes=shares)
        centres = result.samples.numpy()
        refined = {**result.as_dict(), "calibration": [r.as_dict() for r in ratios]}
    else:
        centres = generate_samples(checkpoint, data, num_samples, seed)
    model = parzen.evaluate(centres, data.valid, data.test, chunk_size=chunk_size)
    reference = parzen.reference(data.train, data.valid, data.test, num_samples, seed=seed, chunk_size=chunk_size)
    report = EvaluationReport(
        dataset=data.name,
        source=str(samples if samples is not None else checkpoint),
        num_samples=len(centres),
        num_reference=min(num_samples, len(data.train)),
        model=model,
        reference=reference,
        refined=refined,
    )
    if with_quality is False:
        return report
    try:
        reader = quality.for_data(data, classifier if classifier is not None else source.classifier, cache_dir=cache_dir, log=log)
    except QualityError as e:
        if with_quality or classifier is not None:
            raise
        return replace(report, quality_note=str(e))
    return replace(
        report,
        quality=reader.score(centres),
        quality_reference=reader.reference(data.valid),
        classifier_accuracy=reader.accuracy,
    )


def format_report(report: EvaluationReport) -> str:
    """The report as the table the CLI prints: sigma, validation LL, test LL ± SE, per row."""
    header = f"{'':<24} {'centres':>8} {'sigma':>7} {'valid LL':>10} {'test LL ± SE (nats)':>22}"
    rows = [header]
    for name, n, r in (
        (Path(report.source).name, report.num_samples, report.model),
        ("held-out data (train)", report.num_reference, report.reference),
    ):
        rows.append(f"{name[:24]:<24} {n:>8} {r.sigma:>7.4f} {r.valid_ll:>10.2f} {r.test_ll:>13.2f} ± {r.test_se:.2f}")
    rows.append(
        f"Parzen-window log-likelihood on {report.dataset} (Goodfellow et al. 2014, Table 1); "
        "sigma chosen on the validation split."
    )
    if report.refined is not None:
        r = report.refined
        how = ", class by class" if r.get("by_class") else ""
        rows.append(f"Samples corrected by the saved discriminator ({r['method']}{how}, calibration "
                    f"{r['calibration'][0]['method']}): acceptance {r['acceptance']:.1%}, {r['proposals']:,} proposals, {r['seconds']:.1f} s.")
    if report.quality is not None:
        rows += ["", format_quality(report)]
    elif report.quality_note is not None:
        rows += ["", f"quality measures not computed: {report.quality_note}."]
    return "\n".join(rows)


def format_quality(report: EvaluationReport) -> str:
    """The domain classifier's reading of the samples beside the validation split's, as the CLI prints it."""
    header = f"{'':<24} {'samples':>8} {'FD':>9} {'classes':>8} {'TVD':>6} {'confidence':>11}"
    rows = [header]
    for name, n, q in (
        (Path(report.source).name, report.num_samples, report.quality),
        ("held-out data (valid)", None, report.quality_reference),
    ):
        k = len(q.histogram)
        count = "" if n is None else n
        covered = f"{q.classes_covered}/{k}"
        rows.append(f"{name[:24]:<24} {count:>8} {q.fd:>9.2f} {covered:>8} {q.tvd:>6.3f} {q.confidence:>11.3f}")
    rows.append(
        f"Read by {report.dataset}'s domain classifier (held-out accuracy {report.classifier_accuracy:.1%}): "
        "FD to the training split's features, classes with >= 2% of the samples, TVD to the training "
        "labels, mean top-class probability."
    )
    return "\n".join(rows)


def add_refine_flags(p: argparse.ArgumentParser) -> None:
    """--refine, --calibration, --by-class and --confident: shared by raygan.sample and raygan.evaluate (each has --dataset and --data-root)."""
    p.add_argument("--refine", choices=REFINE_METHODS, default=None,
                   help="correct the samples with the discriminator saved beside the generator: drs (rejection "
                   "sampling) or mh (Metropolis-Hastings); D is calibrated on the data set's validation split")
    p.add_argument("--calibration", choices=CALIBRATIONS, default=None,
                   help="how D's logit is calibrated for --refine (default: the run's refine.calibration, "
                   f"else {RefineConfig().calibration})")
    p.add_argument("--by-class", action=argparse.BooleanOptionalAction, default=None,
                   help="--refine an unconditional G class by class: each sample's class drawn from the training "
                   "labels' shares, read by the domain classifier, D correcting within it (default: the run's "
                   f"refine.by_class, else {str(RefineConfig().by_class).lower()}); --no-by-class: D alone")
    p.add_argument("--confident", type=float, default=None, metavar="P",
                   help="--by-class: also split each class into the samples the classifier gives it with probability "
                   "at least P and the rest, each at the validation split's share (default: the run's refine.confident, "
                   f"else {RefineConfig().confident}); 0: classes only")


def refine_config(calibration: str | None, checkpoint: str | Path | None, by_class: bool | None = None,
                  confident: float | None = None) -> RefineConfig:
    """The refined samplers' settings: those of the run holding ``checkpoint`` (so raygan.tune's
    refined scores are reproduced), else the defaults; ``calibration``, ``by_class`` and ``confident`` where given.

    Raises:
        ConfigError: ``confident`` outside [0, 1].
    """
    config = RefineConfig()
    run = None if checkpoint is None else run_holding(checkpoint)
    if run is not None:
        try:
            config = load_config(run / EXPERIMENT_FILE).refine
        except ConfigError:
            pass  # a run file of another version: the defaults
    given = {"calibration": calibration, "by_class": by_class, "confident": confident}
    return replace(config, **{k: v for k, v in given.items() if v is not None})


def refine_classes(data: Dataset, config: RefineConfig, classifier: str | Path | None = None,
                   cache_dir: str | Path | None = None, log: Callable[[str], None] = print) -> refine.ClassShares | None:
    """What refines class by class (``refine.by_class``): ``classifier`` (a file), else the data
    set's own domain classifier, with the training labels' shares (split by ``confident`` on the
    validation split); None where ``by_class`` is off
    or there is neither a label nor a named classifier."""
    if not config.by_class:
        return None  # no classifier trained for nothing
    try:
        return refine.classes_for(quality.for_data(data, classifier, cache_dir=cache_dir, log=log), data.valid, config)
    except QualityError:
        return None


def refine_data(dataset: str | None, data_root: str | Path | None, checkpoint: str | Path) -> tuple[Dataset, str | None]:
    """The data --refine calibrates on, as :func:`data_source` finds them for ``checkpoint``, and the
    run's classifier file (its eval.classifier; None: the data set's own) that picks classes."""
    source = data_source(dataset, data_root, None, checkpoint)
    return load_data(source.data, seed=source.seed, recorded=source.recorded), source.classifier


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m raygan.evaluate``; returns the exit code."""
    p = argparse.ArgumentParser(
        prog="python -m raygan.evaluate",
        description="Parzen-window log-likelihood of a generator or a samples file, "
        "beside the held-out-data reference.",
    )
    p.add_argument("--dataset", default=None, type=dataset_argument,
                   help="a built-in data set or the path of your own (default: the data of the run that holds "
                   "--checkpoint, else mnist5k)")
    p.add_argument("--data-root", default=None, help="where the data set's files are (default: its usual place)")
    p.add_argument("--run", default=None, help="score against this run's data, recorded split and classifier "
                   "(default: the run that holds --checkpoint)")
    p.add_argument("--classifier", default=None, help="a raygan classifier file to read the samples with "
                   "(default: the run's eval.classifier, else one trained on the data set's labels)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="a raygan generator.pt or mixture.pt")
    source.add_argument(
        "--samples", help="a .npy of any model's samples: N x 784 or N x C x H x W, in [0, 1] for images"
    )
    p.add_argument("--num-samples", type=int, default=parzen.DEFAULT_NUM_SAMPLES, help="Parzen centres (default 10000)")
    p.add_argument("--seed", type=int, default=0, help="seeds the generator's noise and the reference's subset")
    p.add_argument("--chunk-size", type=int, default=parzen.DEFAULT_CHUNK_SIZE, help="points per distance block")
    p.add_argument(
        "--quality",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="read the samples with the data set's domain classifier (FD, classes covered, TVD, confidence); "
        "default: where the data set has labels",
    )
    p.add_argument(
        "--cache-dir", default=None, help="where the classifier is cached (default ~/.cache/raygan/classifiers)"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the tables")
    add_refine_flags(p)
    args = p.parse_args(argv)
    try:
        report = evaluate_samples(
            args.dataset,
            samples=args.samples,
            checkpoint=args.checkpoint,
            data_root=args.data_root,
            run=args.run,
            classifier=args.classifier,
            num_samples=args.num_samples,
            seed=args.seed,
            chunk_size=args.chunk_size,
            with_quality=args.quality,
            cache_dir=args.cache_dir,
            log=lambda line: print(line, file=sys.stderr),  # stdout stays one table or one JSON object
            refine_with=args.refine,
            refine_config=refine_config(args.calibration, args.checkpoint, args.by_class, args.confident),
        )
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        if report.quality_note is not None:
            print(f"quality measures not computed: {report.quality_note}.", file=sys.stderr)
        print(json.dumps(report.as_json(), indent=2))
    else:
        print(format_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
