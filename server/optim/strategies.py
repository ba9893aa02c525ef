"""Built-in strategies; importing this module registers them.

=========  =============================================================  ===========
name       what it does                                                   spaces
=========  =============================================================  ===========
``gp``     global GP + qLogNEI (:mod:`.gp`)                                hard, soft
``turbo``  trust-region GP + qLogNEI, TuRBO-1 style (:mod:`.turbo`)        hard, soft
``cmaes``  CMA-ES as in black-box tuning (:mod:`.cmaes`)                  hard, soft
``random`` uniform random prompts (:mod:`.baselines`)                      hard, soft
``index``  token-index GP + UCB, a reproduction of Sabbatella et al.       hard
           (2023) for comparison (:mod:`.baselines`)
``mf``     model-based successive halving over example budgets with a      hard, soft
           fixed-noise GP, for labeled-pool studies (:mod:`.multifidelity`)
=========  =============================================================  ===========
"""

from __future__ import annotations

from promptbo.server.optim import baselines, cmaes, gp, multifidelity, turbo

__all__ = ["baselines", "cmaes", "gp", "multifidelity", "turbo"]
