"""The ``mf`` strategy: model-based successive halving over example budgets, noise-aware.

For studies with a labeled pool (``StudySpec.pool_size``), where a trial's cost is the
number of examples it is scored on and its value is a noisy mean over them. The idea is
asynchronous successive halving (ASHA, as in Hyperband; MIPROv2's minibatches with
periodic full evaluations are the same trade) with two changes: promotions are decided by
a GP's posterior instead of by one noisy number, and the GP knows each observation's
noise.

Rungs
    Cumulative example counts ``r0 < r0*eta < r0*eta^2 < ... <= top`` (``min_examples``,
    ``eta``, ``top_examples``; ``top`` defaults to ``examples_per_trial`` or
    ``min(pool, r0 * eta^3)``). A new prompt is screened on ``r0`` examples; a prompt
    promoted from rung ``k`` is scored on ``R[k+1] - R[k]`` *fresh* examples (the server's
    ledger hands out examples the prompt was not scored on), so its pooled estimate is
    backed by ``R[k+1]`` examples: the leaders are re-scored, not re-read.

Each suggestion
    1. The observations are pooled per prompt (count-weighted means; variances from the
       told standard errors, floored, see :mod:`.noisy_gp`) and a GP with those fixed
       noise variances is fitted on them (after ``num_initial`` screened prompts).
    2. Promotions first (ASHA's rule: promote whenever possible, highest rung first): at
       rung ``k``, a prompt that reached ``R[k]`` but not ``R[k+1]`` is promotable when its
       posterior mean ranks in the top ``1/eta`` of all prompts that reached ``R[k]``;
       the best by posterior mean among those not in flight is promoted.
    3. Remaining slots explore: qLogNEI on the same fixed-noise GP (the ``gp`` strategy's
       acquisition, :class:`~promptbo.server.optim.gp.GPEngine`), screened at ``r0``.

The engine tells the server how many examples each suggestion needs through
``last_examples`` (the runtime passes it on to the ledger, which cuts it to the budget).
Without a pool it is a noise-aware ``gp``: no promotions, every value with its own noise.

Options: those of ``gp``, plus ``min_examples`` [16], ``eta`` [3], ``top_examples``
[automatic, see above].
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from botorch.models import SingleTaskGP
from torch import Tensor

from promptbo.server import telemetry
from promptbo.server.optim.base import register_strategy
from promptbo.server.optim.gp import GP_OPTIONS, GPEngine
from promptbo.server.optim.noisy_gp import (
    fit_fixed_noise_gp,
    noise_floor,
    pool_by_key,
    posterior_mean_sd,
)
from promptbo.server.optim.surrogate import hyperparameters

MF_OPTIONS: dict[str, tuple[type, Any, float, float]] = {
    **GP_OPTIONS,
    "min_examples": (int, 16, 1, 1_000_000),
    "eta": (int, 3, 2, 100),
    "top_examples": (int, None, 1, 1_000_000),
}


@register_strategy("mf")
class MultiFidelityEngine(GPEngine):
    """Model-based successive halving with a fixed-noise GP (see the module docstring)."""

    name: ClassVar[str] = "mf"
    OPTIONS: ClassVar[dict[str, tuple[type, Any, float, float]]] = MF_OPTIONS

    def _setup(self) -> None:
        super()._setup()
        self.pool = 0
        self.rungs: list[int] = []
        self._var: list[float] = []
        self._cnt: list[int] = []
        self._keys: list[bytes] = []
        self._cands: dict[bytes, Tensor] = {}
        self._pending_keys: set[bytes] = set()
        self._gp_state: dict[str, Tensor] | None = None
        self._last_full_fit = 0
        #: Examples wanted by each candidate of the last :meth:`suggest` (None: no pool).
        self.last_examples: list[int] | None = None

    # --- fidelity -----------------------------------------------------------------------
    def configure_fidelity(self, pool_size: int, examples_per_trial: int = 0) -> None:
        """Called by the runtime with the study's pool: builds the rungs."""
        self.pool = int(pool_size)
        if not self.pool:
            self.rungs = []
            return
        o = self.opts
        r0 = min(o["min_examples"], self.pool)
        eta = o["eta"]
        top = o["top_examples"] or examples_per_trial or min(self.pool, r0 * eta**3)
        top = max(r0, min(top, self.pool))
        rungs = [r0]
        while rungs[-1] * eta < top:
            rungs.append(rungs[-1] * eta)
        if rungs[-1] != top:
            rungs.append(top)
        self.rungs = rungs

    def observe_noisy(self, candidates: Tensor, values: Tensor, variances: Tensor,
                      counts: Tensor) -> None:
        """Records evaluations with their noise variances (`n`, NaN: unknown) and example
        counts (`n`, 0: unknown)."""
        self._sync_plain_observations()
        before = self.num_observed
        self.observe(candidates, values)
        if self.num_observed == before:
            return
        keys = self._key_list(candidates)
        for i, k in enumerate(keys):
            self._keys.append(k)
            self._var.append(float(variances[i]))
            self._cnt.append(int(counts[i]))
            self._cands.setdefault(k, candidates[i].clone())

    def suggest(self, n: int, pending: Tensor | None = None) -> Tensor:
        self._pending_keys = set(self._key_list(pending)) if pending is not None else set()
        return super().suggest(n, pending)

    def _key_list(self, candidates: Tensor) -> list[bytes]:
        c = candidates.long() if self.box.discrete else candidates.float()
        return self.box.keys(c)

    # --- suggestions ----------------------------------------------------------------------
    def _suggest(
        self, n: int, pending: Tensor | None, avoid: set[bytes], gen: torch.Generator
    ) -> Tensor:
        self._sync_plain_observations()
        stats = self._pooled()
        model = None
        if stats is not None and len(stats[0]) >= max(self.num_initial, 2):
            model = self._fit(*stats[:3])
        promoted, counts = self._promotions(n, stats, model)
        rows = [self._cands[k].to(self.X.device) for k in promoted]
        avoid.update(promoted)
        new = n - len(promoted)
        out: list[Tensor] = [torch.stack(rows)] if rows else []
        if new > 0:
            if model is None:
                out.append(self.initial_design(new, avoid, gen))
            else:
                first, mean, _, _ = stats  # type: ignore[misc]
                X = self.X[first]
                out.append(self.acquire(model, X, mean, new, pending, avoid, gen,
                                        self.search_bounds(model)))
            counts += [self.rungs[0]] * new if self.rungs else []
        self.last_examples = counts if self.rungs else None
        cat = [o if o.dtype == out[-1].dtype else o.to(out[-1].dtype) for o in out]
        return torch.cat(cat)

    def _fit(self, first: list[int], mean: Tensor, var: Tensor) -> SingleTaskGP:
        """The fixed-noise GP on the pooled prompts, warm-started as ``gp``'s fits are:
        a full fit every ``refit_every`` new prompts, a few iterations otherwise."""
        o = self.opts
        n = len(first)
        full = self._gp_state is None or n - self._last_full_fit >= o["refit_every"]
        with telemetry.fit_timer():
            model = fit_fixed_noise_gp(self.X[first], mean, var, self._gp_state,
                                       o["full_maxiter"] if full else o["warm_maxiter"])
        self._gp_state = hyperparameters(model)
        if full:
            self._last_full_fit = n
        return model

    def _sync_plain_observations(self) -> None:
        """Observations that arrived through plain :meth:`observe` get unknown noise."""
        while len(self._keys) < self.num_observed:
            i = len(self._keys)
            self._keys.append(self._key_of_row(i))
            self._var.append(math.nan)
            self._cnt.append(0)

    def _key_of_row(self, i: int) -> bytes:
        # Only reached for engines fed through observe() without candidates kept; such
        # points are keyed by their box coordinates (never promoted: no candidate).
        return b"u" + self.X[i].numpy().tobytes()

    def _pooled(self) -> tuple[list[int], Tensor, Tensor, Tensor] | None:
        if self.num_observed == 0:
            return None
        var = torch.tensor(self._var, dtype=torch.float64)
        cnt = torch.tensor(self._cnt, dtype=torch.float64).clamp(min=1)
        var = noise_floor(var, cnt, self.Y)
        return pool_by_key(self._keys, self.Y, var, cnt)

    def _promotions(
        self, n: int, stats, model: SingleTaskGP | None
    ) -> tuple[list[bytes], list[int]]:
        """Up to ``n`` prompts to re-score on fresh examples, and how many each gets."""
        if not self.rungs or stats is None or model is None or len(self.rungs) < 2:
            return [], []
        first, _, _, totals = stats
        keys = [self._keys[i] for i in first]
        post, _ = posterior_mean_sd(model, self.X[first])
        taken: set[bytes] = set()
        out: list[bytes] = []
        counts: list[int] = []
        eta = self.opts["eta"]
        for k in range(len(self.rungs) - 2, -1, -1):  # the highest rung first
            if len(out) >= n:
                break
            reached = [i for i in range(len(keys)) if totals[i] >= self.rungs[k] - 1e-9]
            quota = len(reached) // eta
            if quota == 0:
                continue
            ranked = sorted(reached, key=lambda i: -float(post[i]))[:quota]
            for i in ranked:
                if len(out) >= n:
                    break
                key = keys[i]
                if (totals[i] >= self.rungs[k + 1] - 1e-9 or key in self._pending_keys
                        or key in taken or key not in self._cands):
                    continue
                out.append(key)
                taken.add(key)
                counts.append(int(self.rungs[k + 1] - round(float(totals[i]))))
        return out, counts

    def centers(self) -> Tensor:
        """The acquisition's local starts: the prompts with the best pooled means."""
        stats = self._pooled()
        if stats is None:
            return super().centers()
        first, mean, _, _ = stats
        top = torch.argsort(mean, descending=True, stable=True)[:5]
        return self.X[[first[int(i)] for i in top]]
