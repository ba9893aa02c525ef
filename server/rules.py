"""The rules of studies and trials, as pure functions: no storage, no locks, no clock.

:class:`~promptbo.server.manager.StudyManager` applies these rules to the state it holds;
each function here takes that state as arguments and either returns a decision or
raises a :mod:`promptbo.errors` exception naming the broken rule.

Trial lifecycle and leases
--------------------------
``SuggestTrials`` hands a trial to a client with a lease of the study's
``lease_seconds``. A client that asks again first gets back its own trials that are
still active. ``HeartbeatTrial`` extends the lease. When a lease expires the trial stays
ACTIVE but is free: the next client that asks is handed the same prompt (its lease and
``client_id`` replace the old ones). ``CompleteTrial`` on an ACTIVE trial is accepted
from the client holding the lease, from any client once the lease has expired (nobody
holds it), and from a caller that gives no ``client_id``; a client whose lease expired
while another client picked the trial up gets FAILED_PRECONDITION. A repeat of an
identical completion is a no-op; a conflicting one is FAILED_PRECONDITION. Only the
client holding a trial extends its lease: a heartbeat from any other client is
FAILED_PRECONDITION, even once the lease lapsed.

With principals (named tokens, :mod:`promptbo.server.auth`), every trial is bound to the
principal that took it: another principal's completion or heartbeat is
PERMISSION_DENIED whatever its ``client_id`` (admins excepted).

Budget: with ``max_trials`` set, a study never has more than ``max_trials`` completed
plus active trials, so it ends with exactly ``max_trials`` completed ones (failed trials
do not count) and then moves to COMPLETED. A study with a labeled pool also has a budget
in scored examples (``max_examples``); which examples each trial is scored on, and that
budget, are kept by :class:`~promptbo.server.fidelity.ExampleLedger`. The unprompted
model's reference trial (source ``reference``) counts against neither.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from promptbo.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    PermissionDeniedError,
    ResourceExhaustedError,
)
from promptbo.server.domain import (
    Goal,
    HardPromptSpace,
    Prompt,
    Study,
    StudySpec,
    Trial,
    TrialState,
)
from promptbo.server.limits import Limits, active_trial_cap

#: The most trials one SuggestTrials hands out, and results one CompleteTrials records.
MAX_SUGGEST_COUNT = 1000
#: The largest page of ListStudies and ListTrials.
MAX_PAGE_SIZE = 1000


@dataclass(frozen=True)
class TrialResult:
    """The outcome of one trial for :meth:`StudyManager.complete_trials`: ``value`` and
    ``metrics``, or with a non-empty ``failure_reason`` a failure (``value`` ignored)."""

    trial_id: int
    value: float
    metrics: dict[str, float]
    failure_reason: str = ""
    value_stderr: float | None = None
    examples_scored: int = 0


@dataclass(frozen=True)
class KnownTrial:
    """A prompt with a known value, for AddTrials (warm starts)."""

    prompt: Prompt
    value: float
    metrics: dict[str, float]
    value_stderr: float | None = None
    examples_scored: int = 0


# --- the objective --------------------------------------------------------------------
def objective(spec: StudySpec, value: float, metrics: dict[str, float]) -> float:
    """The number the engine maximizes for a new result: ``value`` or the metric the
    study optimizes, negated for minimization. A missing metric is InvalidArgumentError."""
    if spec.objective in ("", "value"):
        return _directed(spec, value)
    obj = metrics.get(spec.objective)
    if obj is None:
        raise InvalidArgumentError(
            f"the study optimizes metric {spec.objective!r} but the result has only "
            f"{sorted(metrics) or 'no metrics'}; report it in metrics"
        )
    return _directed(spec, obj)


def stored_objective(
    spec: StudySpec, value: float | None, metrics: dict[str, float]
) -> float | None:
    """:func:`objective` of a stored result, None where it lacks the objective (a trial
    stored before the study's objective was a metric, or a failed one)."""
    obj = value if spec.objective in ("", "value") else metrics.get(spec.objective)
    return None if obj is None else _directed(spec, obj)


def _directed(spec: StudySpec, obj: float) -> float:
    return -float(obj) if spec.goal is Goal.MINIMIZE else float(obj)


def noise(spec: StudySpec, t: Trial) -> float | None:
    """The observation noise variance of a completed trial's objective, when known
    (the told standard error applies to ``value``, not to metrics)."""
    if t.value_stderr is None or spec.objective not in ("", "value"):
        return None
    return float(t.value_stderr) ** 2


def check_finite(what: str, v: float) -> None:
    """Refuses anything but a finite int or float, naming it ``what``."""
    if not isinstance(v, (int, float)) or not math.isfinite(v):
        raise InvalidArgumentError(f"{what} must be a finite number, got {v!r}")


# --- handing out trials ----------------------------------------------------------------
@dataclass(frozen=True)
class SuggestPlan:
    """What one SuggestTrials call hands out, decided by :func:`plan_suggestions`.

    ``lease`` are the active trials leased to the caller (its own first, then expired
    ones); ``new`` is how many new trials to draw from the engine (the scored-example
    budget may still cut them); ``done`` is True when the study is complete and nothing
    is handed out. ``reissued`` counts the expired trials among ``lease``. ``retry`` is
    True when the caller only gets its own trials back, as many as it asked for (a
    repeated call): nothing new is handed out, so nothing is announced to watchers.
    """

    lease: list[Trial]
    new: int = 0
    done: bool = False
    reissued: int = 0
    retry: bool = False


def plan_suggestions(
    name: str, spec: StudySpec, limits: Limits, active: Sequence[Trial], completed: int,
    study_done: bool, count: int, client_id: str, principal: str, now: float,
    examples_left: int | None,
) -> SuggestPlan:
    """Which trials a SuggestTrials call for ``count`` hands out (see the module doc).

    ``active`` are study ``name``'s active trials by increasing id, ``completed`` its
    completed ones (the reference excluded), ``examples_left`` its unspent scored-example
    budget (None: no such budget). Raises ResourceExhaustedError when the active-trial cap
    is reached and the caller holds none of them.
    """
    own: list[Trial] = []
    if client_id:
        own = [
            t for t in active
            if t.client_id == client_id and t.principal == principal and t.lease_deadline >= now
        ][:count]
    if len(own) == count:
        return SuggestPlan(own, retry=True)
    if study_done:
        return SuggestPlan([], done=True)
    expired = [t for t in active if t.lease_deadline < now]
    held = len(active) - len(expired)
    cap, why = spec.max_active_trials, "max_active_trials"
    memory_cap = active_trial_cap(spec, limits)
    if memory_cap and (not cap or memory_cap < cap):
        cap, why = memory_cap, "the server's memory limit for active trials"
    if cap and held >= cap and not own:
        raise ResourceExhaustedError(
            f"study {name!r} has {held} active trials, its cap ({why}) is {cap}; "
            "complete some first or raise the cap"
        )
    want = count - len(own)
    if cap:
        want = min(want, cap - held)
    reissued = expired[: max(want, 0)]
    want -= len(reissued)
    if want > 0 and spec.max_trials:
        want = min(want, spec.max_trials - completed - len(active))
    if want > 0 and examples_left == 0:
        want = 0
    return SuggestPlan(own + reissued, new=max(want, 0), reissued=len(reissued))


def leased(trial: Trial, client_id: str, principal: str, now: float, lease_seconds: float) -> Trial:
    """``trial`` leased to ``client_id`` of ``principal`` for ``lease_seconds`` from ``now``."""
    return trial.evolve(client_id=client_id, lease_deadline=now + lease_seconds,
                        principal=principal)


# --- recording results --------------------------------------------------------------
def check_results(results: Sequence[TrialResult]) -> None:
    """Checks a CompleteTrials batch before any trial is looked at: its size, finite
    numbers, and no trial twice."""
    if not 1 <= len(results) <= MAX_SUGGEST_COUNT:
        raise InvalidArgumentError(
            f"send between 1 and {MAX_SUGGEST_COUNT} results at once, got {len(results)}"
        )
    many = len(results) > 1
    for i, r in enumerate(results):
        where = result_label(i, r, many)
        if not r.failure_reason:
            check_finite(f"{where}value", r.value)
        for k, v in r.metrics.items():
            check_finite(f"{where}metric {k!r}", v)
    repeated = sorted(i for i, n in Counter(r.trial_id for r in results).items() if n > 1)
    if repeated:
        raise InvalidArgumentError(f"trials {repeated} appear more than once in one request")


def result_label(i: int, r: TrialResult, many: bool) -> str:
    """The prefix naming result ``i`` in messages ("" for a single result)."""
    return f"result {i} (trial {r.trial_id}): " if many else ""


def check_owner(trial: Trial, principal: str, admin: bool) -> None:
    """Refuses ``principal`` a trial another principal took (admins may)."""
    if admin or not principal or not trial.principal or trial.principal == principal:
        return
    raise PermissionDeniedError(
        f"trial {trial.id} of study {trial.study!r} was taken by another principal; only "
        "it (or an admin) may complete or heartbeat it"
    )


def check_may_complete(trial: Trial, client_id: str, admin: bool, now: float) -> None:
    """Refuses the completion of an active trial whose live lease another client holds."""
    held_by_other = client_id and not admin and trial.client_id not in ("", client_id)
    if held_by_other and trial.lease_deadline >= now:
        raise FailedPreconditionError(
            f"trial {trial.id} of study {trial.study!r} is held by another worker "
            f"({trial.client_id!r}); your lease expired and it was handed out again"
        )


def finished(
    trial: Trial, r: TrialResult, spec: StudySpec, now: float, where: str
) -> tuple[Trial, float | None]:
    """An active ``trial`` completed (or failed) with ``r`` at ``now``, and the objective
    the engine learns from it (None for a failure). ``where`` prefixes messages."""
    if r.failure_reason:
        failed = trial.evolve(
            state=TrialState.FAILED, failure_reason=r.failure_reason, complete_time=now,
            value=None, metrics=dict(r.metrics),
        )
        return failed, None
    obj = objective(spec, r.value, r.metrics)
    scored = check_fidelity(trial, r, where)
    done = trial.evolve(
        state=TrialState.COMPLETED, value=float(r.value), metrics=dict(r.metrics),
        complete_time=now,
        value_stderr=None if r.value_stderr is None else float(r.value_stderr),
        examples_scored=scored,
    )
    return done, obj


def check_fidelity(trial: Trial, r: TrialResult, where: str) -> int:
    """The examples a result averages (checked against the trial's example subset)."""
    if r.value_stderr is not None:
        check_finite(f"{where}value_stderr", r.value_stderr)
        if r.value_stderr < 0:
            raise InvalidArgumentError(f"{where}value_stderr must be >= 0, got {r.value_stderr}")
    n = len(trial.examples)
    if n and r.examples_scored not in (0, n):
        raise InvalidArgumentError(
            f"{where}trial {trial.id} was to be scored on its {n} example_indices but the "
            f"result says examples_scored={r.examples_scored}; score exactly those examples"
        )
    return r.examples_scored or n


def repeat_completion(trial: Trial, r: TrialResult) -> Trial:
    """A completion of a trial that is no longer active: the stored trial when ``r``
    repeats its result, else FailedPreconditionError (a trial is completed once)."""
    same = (
        trial.failure_reason == r.failure_reason
        if r.failure_reason
        else (
            trial.state is TrialState.COMPLETED
            and trial.value == float(r.value)
            and trial.metrics == r.metrics
        )
    )
    if same:
        return trial
    raise FailedPreconditionError(
        f"trial {trial.id} of study {trial.study!r} is already {trial.state.value} "
        f"with a different result; a trial is completed once"
    )


def check_heartbeat(trial: Trial, client_id: str) -> None:
    """Refuses a heartbeat on a trial that is not active or that another client holds."""
    if trial.state is not TrialState.ACTIVE:
        raise FailedPreconditionError(
            f"trial {trial.id} of study {trial.study!r} is {trial.state.value}; "
            "only active trials have a lease"
        )
    if client_id and trial.client_id not in ("", client_id):
        raise FailedPreconditionError(
            f"trial {trial.id} of study {trial.study!r} is held by another worker "
            f"({trial.client_id!r}); only its holder extends its lease"
        )


def check_known(i: int, k: KnownTrial) -> None:
    """Checks the numbers of AddTrials' trial ``i``."""
    check_finite(f"trial {i}: value", k.value)
    for mk, mv in k.metrics.items():
        check_finite(f"trial {i}: metric {mk!r}", mv)


def check_reference(known: Sequence[KnownTrial]) -> KnownTrial:
    """The one reference trial of an AddTrials call with ``reference`` set: one trial,
    empty prompt, finite numbers (the unprompted model's score)."""
    if len(known) != 1 or known[0].prompt != Prompt():
        raise InvalidArgumentError(
            "a reference is one trial with an empty prompt: the unprompted model's score"
        )
    k = known[0]
    check_finite("reference value", k.value)
    for mk, mv in k.metrics.items():
        check_finite(f"reference metric {mk!r}", mv)
    if k.value_stderr is not None:
        check_finite("reference value_stderr", k.value_stderr)
    return k


# --- budgets --------------------------------------------------------------------------
def budget_used(spec: StudySpec, completed: int, examples_exhausted: bool) -> str:
    """Why a study with ``completed`` completed trials is done ("" while it is not):
    "examples" when its scored-example budget is spent, "trials" at ``max_trials``."""
    if examples_exhausted:
        return "examples"
    if spec.max_trials and completed >= spec.max_trials:
        return "trials"
    return ""


def check_max_trials(name: str, max_trials: int, held: int) -> None:
    """Refuses a new ``max_trials`` below the ``held`` completed plus active trials."""
    if max_trials and max_trials < held:
        raise InvalidArgumentError(
            f"max_trials={max_trials} is below the {held} trials study {name!r} "
            "already has completed or active; give at least that, or 0 for no limit"
        )


def check_lease_seconds(spec: StudySpec, limits: Limits) -> None:
    """Refuses a lease shorter than the server's minimum."""
    if spec.lease_seconds < limits.min_lease_seconds:
        raise InvalidArgumentError(
            f"lease_seconds must be at least {limits.min_lease_seconds}, got "
            f"{spec.lease_seconds}"
        )


# --- pages ----------------------------------------------------------------------------
def page_size(size: int) -> int:
    """The page size a listing asks for (0: 100), checked."""
    if size < 0 or size > MAX_PAGE_SIZE:
        raise InvalidArgumentError(f"page_size must be in [0, {MAX_PAGE_SIZE}]")
    return size or 100


def trial_page_after(page_token: str) -> int:
    """The trial id a ListTrials page token continues after (0 for the first page)."""
    try:
        after = int(page_token) if page_token else 0
        if not 0 <= after < 2**62:
            raise ValueError
    except ValueError:
        raise InvalidArgumentError(
            f"page_token {page_token!r} is not one this server issued; pass the "
            "next_page_token of the previous response"
        ) from None
    return after


def study_bytes(study: Study) -> int:
    """Estimate of a study's size in a ListStudies response."""
    space = study.spec.space
    extra = 0
    if isinstance(space, HardPromptSpace):
        extra = 9 * len(space.top_n_scores) + 5 * len(space.allowed)
    extra += sum(len(n) + 2 for n in study.spec.transfer_from)
    return 1024 + extra + sum(len(k) + len(v) for k, v in study.spec.labels.items())
