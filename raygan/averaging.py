"""An exponential moving average of a generator's weights, the copy whose samples are the answer.

GAN training does not converge to a point: G circles around a good generator as D and G chase
each other. Averaging G's iterates (Yazici et al., "The Unusual Effectiveness of Averaging in
GAN Training", ICLR 2019) lands nearer the centre. The average is kept beside training and never
trained itself; D and the optimisers see only the raw G.

The average is bias-corrected like Adam's moments: after t updates it is

    avg_t = sum_{s<=t} (1 - beta) beta^(t-s) theta_s / (1 - beta^t),

so it weighs only trained iterates (no share of the initial weights) from the first update on.
That is a running update with a decay that starts at 0 and rises to beta:

    avg_t = d_t avg_{t-1} + (1 - d_t) theta_t,   d_t = beta (1 - beta^(t-1)) / (1 - beta^t).

Floating-point buffers (batch norm's running statistics) are averaged alike; integer ones
(its batch counter) are copied.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


def average_decay(beta: float, t: int) -> float:
    """d_t, the weight of the old average at update t >= 1 (0 at t = 1: the average starts at theta_1)."""
    return beta * (1.0 - beta ** (t - 1)) / (1.0 - beta**t)


class WeightAverage:
    """A bias-corrected exponential moving average of ``module``'s weights, held in a copy of it.

    Args:
        module: the network being trained; the copy shares its class and config.
        beta: the decay per update, in (0, 1); 0.999 averages over about the last 1,000 updates.
    """

    def __init__(self, module: nn.Module, beta: float) -> None:
        if not 0.0 < beta < 1.0:
            raise ValueError(f"the average's decay must lie in (0, 1), got {beta}")
        self.beta = beta
        self.module = copy.deepcopy(module).eval()
        self.module.requires_grad_(False)
        self._params, self._buffers = list(self.module.parameters()), list(self.module.buffers())
        self.updates = 0

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        """Fold ``module``'s current weights into the average."""
        self.updates += 1
        weight = 1.0 - average_decay(self.beta, self.updates)
        torch._foreach_lerp_(self._params, list(module.parameters()), weight)
        for avg, buf in zip(self._buffers, module.buffers()):
            if avg.dtype.is_floating_point:
                avg.lerp_(buf, weight)
            else:
                avg.copy_(buf)

    def state_dict(self) -> dict[str, Any]:
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])

    def restart_from(self, module: nn.Module) -> None:
        """Forget the average: it starts again from ``module``'s weights at the next update."""
        self.module.load_state_dict(module.state_dict())
        self.updates = 0
