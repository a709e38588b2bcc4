"""The keys of a trial's result dict: what Tune ranks and stops on, what TensorBoard shows.

One name per quantity, used by the trainable that reports it, the monitor that logs it, the
CLI that prints it and the tests that read it back (Tune's own ``training_iteration`` included).
Tags are grouped by prefix so TensorBoard files them together.
"""

from __future__ import annotations

TRAINING_ITERATION = "training_iteration"  # Tune's step counter (ray.tune.result.TRAINING_ITERATION)
TRIAL_ID = "trial_id"  # Tune's

# Evaluation, on the validation split only (the test split is for the final report).
PARZEN_VALID_LL = "eval/parzen_valid_ll"  # Parzen-window validation log-likelihood (nats)
SIGMA = "eval/sigma"  # the Parzen bandwidth chosen on validation
FD = "eval/fd"  # Fréchet distance in the domain classifier's feature space
CLASSES_COVERED = "eval/classes_covered"  # classes receiving at least eval.min_class_share of the samples
TVD = "eval/tvd"  # total variation distance of the predicted-class histogram to the training labels'
CONFIDENCE = "eval/confidence"  # mean top-class probability of the domain classifier
LABEL_ACCURACY = "eval/label_accuracy"  # conditional G: share of samples classified as the class asked for
CLASS_FD = "eval/class_fd"  # conditional G: mean over classes of the FD of a class's samples to its training features
RANK_SCORE = "eval/rank_score"  # what the scheduler ranks on (see raygan.ranking)
EVAL_SECONDS = "eval/seconds"  # time the step spent evaluating
QUEUE_SECONDS = "eval/queue_seconds"  # of those, the time its samples waited for an evaluator replica (NaN: not scored this step)

# Algorithm 1's running means over the step.
LOSS_D = "loss/d"
LOSS_G = "loss/g"
D_REAL = "d/real"  # mean D(x)
D_FAKE = "d/fake"  # mean D(G(z))

ITERATIONS_PER_S = "perf/iterations_per_s"
# Per second of the trial process's own CPU time: its speed whatever else shares the machine.
ITERATIONS_PER_CPU_S = "perf/iterations_per_cpu_s"
CPUS = "perf/cpus"  # the CPUs the trial holds now (a ResourceChangingScheduler moves them between trials)
ALGORITHM_ITERATION = "algorithm/iteration"  # Algorithm 1 iterations since the lineage began
DIVERGED = "diverged"  # NaN or infinite losses: the trial waits for PBT to replace it
NODE_ID = "node_id"  # the Ray node that produced the result

HPARAMS_PREFIX = "hparams/"


def hparam(name: str) -> str:
    """The TensorBoard tag of a hyperparameter's value in force (``hparams/lr_d``)."""
    return HPARAMS_PREFIX + name
