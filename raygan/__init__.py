"""raygan: population training of Generative Adversarial Nets (Goodfellow et al., 2014) on Ray Tune.

Below the Ray line (no ``import ray``): :mod:`raygan.config`, :mod:`raygan.priors`,
:mod:`raygan.models`, :mod:`raygan.algorithm`, :mod:`raygan.parzen`, :mod:`raygan.data`.
Above it: :mod:`raygan.evaluator`, :mod:`raygan.trainable`, :mod:`raygan.search`, :mod:`raygan.tune`.
"""

__version__ = "0.1.0"
