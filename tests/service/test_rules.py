"""The rules of studies and trials (server/rules.py), checked as pure functions."""

from __future__ import annotations

import math

import pytest

from promptbo.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    PermissionDeniedError,
    ResourceExhaustedError,
)
from promptbo.server import rules
from promptbo.server.domain import (
    Goal,
    HardPromptSpace,
    Prompt,
    SoftPromptSpace,
    Study,
    StudySpec,
    Trial,
    TrialState,
)
from promptbo.server.limits import SOFT_VALUE_BYTES, Limits
from promptbo.server.rules import KnownTrial, TrialResult

NOW = 1000.0


def spec(**kw) -> StudySpec:
    kw.setdefault("strategy", "random")
    return StudySpec(space=SoftPromptSpace(2, 3), lease_seconds=10, **kw)


def trial(id: int, client: str = "", deadline: float = NOW + 5, principal: str = "", **kw) -> Trial:
    return Trial(study="s", id=id, state=kw.pop("state", TrialState.ACTIVE),
                 prompt=Prompt(vector=(float(id),) * 6), client_id=client,
                 lease_deadline=deadline, principal=principal, **kw)


def plan(active, count=1, client="a", principal="", completed=0, done=False,
         examples_left=None, limits=None, **kw) -> rules.SuggestPlan:
    return rules.plan_suggestions("s", spec(**kw), limits or Limits(), active, completed, done,
                                  count, client, principal, NOW, examples_left)


# --- the objective --------------------------------------------------------------------
def test_objective_is_the_value_or_the_metric_and_negated_for_minimization():
    assert rules.objective(spec(), 0.5, {"acc": 0.9}) == 0.5
    assert rules.objective(spec(goal=Goal.MINIMIZE), 0.5, {}) == -0.5
    assert rules.objective(spec(objective="acc"), 0.5, {"acc": 0.9}) == 0.9
    assert rules.objective(spec(objective="loss", goal=Goal.MINIMIZE), 0, {"loss": 2}) == -2.0
    with pytest.raises(InvalidArgumentError, match=r"metric 'acc' but the result has only \['f1'"):
        rules.objective(spec(objective="acc"), 0.5, {"f1": 0.1})


def test_stored_objective_skips_results_without_it():
    assert rules.stored_objective(spec(), None, {}) is None  # a failed trial
    assert rules.stored_objective(spec(objective="acc"), 0.5, {}) is None
    assert rules.stored_objective(spec(objective="acc", goal=Goal.MINIMIZE), 0.5,
                                  {"acc": 0.25}) == -0.25


def test_noise_is_the_told_variance_of_the_value_only():
    told = trial(1, value=0.5, value_stderr=0.1)
    assert rules.noise(spec(), told) == pytest.approx(0.01)
    assert rules.noise(spec(), trial(1, value=0.5)) is None
    assert rules.noise(spec(objective="acc"), told) is None  # the stderr is of value


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, "1.0", None])
def test_check_finite_refuses_non_finite_numbers(bad):
    with pytest.raises(InvalidArgumentError, match="x must be a finite number"):
        rules.check_finite("x", bad)


# --- handing out trials ----------------------------------------------------------------
def test_a_client_gets_its_own_live_trials_back_first():
    active = [trial(1, "b"), trial(2, "a"), trial(3, "a")]
    got = plan(active, count=2)
    assert [t.id for t in got.lease] == [2, 3] and got.retry and got.new == 0
    got = plan(active, count=3)
    assert [t.id for t in got.lease] == [2, 3] and not got.retry and got.new == 1


def test_own_trials_need_the_same_principal_and_a_live_lease():
    active = [trial(1, "a", principal="p"), trial(2, "a", deadline=NOW - 1)]
    got = plan(active, count=1, principal="q")
    # Trial 1 is another principal's (held: not handed out); trial 2's lease expired, so
    # it comes back as an expired trial, not as the client's own.
    assert [t.id for t in got.lease] == [2] and got.reissued == 1 and not got.retry


def test_a_retry_returns_own_trials_even_once_the_study_is_done():
    assert plan([trial(1, "a")], done=True).lease[0].id == 1
    got = plan([trial(1, "a")], count=2, done=True)
    assert got.done and got.lease == [] and got.new == 0


def test_expired_trials_are_reissued_before_new_ones():
    active = [trial(1, "b", deadline=NOW - 1), trial(2, "b"), trial(3, "c", deadline=NOW - 5)]
    got = plan(active, count=3)
    assert [t.id for t in got.lease] == [1, 3] and got.reissued == 2 and got.new == 1


def test_the_trial_budget_counts_completed_and_active_trials():
    assert plan([trial(1, "b")], count=5, max_trials=4, completed=2).new == 1
    assert plan([trial(1, "b")], count=5, max_trials=3, completed=2).new == 0
    expired = [trial(1, "b", deadline=NOW - 1)]
    got = plan(expired, count=5, max_trials=3, completed=2)  # the budget is full
    assert [t.id for t in got.lease] == [1] and got.new == 0


def test_no_new_trials_once_the_example_budget_is_spoken_for():
    assert plan([], count=2, examples_left=0).new == 0
    assert plan([], count=2, examples_left=3).new == 2
    assert plan([], count=2, examples_left=None).new == 2


def test_the_active_cap_refuses_only_clients_holding_no_trial():
    active = [trial(1, "b"), trial(2, "a")]
    with pytest.raises(ResourceExhaustedError, match=r"study 's' has 2 active trials, its cap "
                                                     r"\(max_active_trials\) is 2"):
        plan(active, client="c", max_active_trials=2)
    got = plan(active, count=1, client="a", max_active_trials=2)
    assert [t.id for t in got.lease] == [2] and got.retry  # its own trial, at the cap
    got = plan([trial(1, "b")], count=5, max_active_trials=3)
    assert got.new == 2  # up to the cap
    got = plan([trial(1, "b", deadline=NOW - 1)], count=5, max_active_trials=1)
    assert [t.id for t in got.lease] == [1] and got.new == 0  # an expired trial is free


def test_a_client_holding_trials_at_the_cap_gets_no_new_ones():
    got = plan([trial(1, "b"), trial(2, "a")], count=2, client="a", max_active_trials=2)
    assert [t.id for t in got.lease] == [2] and got.new == 0


def test_the_memory_cap_applies_when_it_is_the_lower_one():
    one_trial = Limits(max_active_trial_bytes=SOFT_VALUE_BYTES * 6)
    with pytest.raises(ResourceExhaustedError, match="memory limit for active trials"):
        plan([trial(1, "b")], client="c", limits=one_trial, max_active_trials=5)


def test_leased_binds_the_trial_to_its_new_holder():
    t = rules.leased(trial(1, "a", principal="p"), "b", "q", NOW, 10)
    assert (t.client_id, t.principal, t.lease_deadline) == ("b", "q", NOW + 10)


# --- recording results --------------------------------------------------------------
def test_check_results_refuses_the_whole_batch():
    ok = TrialResult(1, 0.5, {})
    rules.check_results([ok])
    with pytest.raises(InvalidArgumentError, match="between 1 and 1000 results"):
        rules.check_results([])
    with pytest.raises(InvalidArgumentError, match=r"result 1 \(trial 2\): metric 'acc'"):
        rules.check_results([ok, TrialResult(2, 0.5, {"acc": math.nan})])
    with pytest.raises(InvalidArgumentError, match=r"trials \[1\] appear more than once"):
        rules.check_results([ok, ok])
    rules.check_results([TrialResult(1, math.nan, {}, failure_reason="oom")])  # value ignored


def test_ownership_and_holding():
    taken = trial(1, "a", principal="p")
    rules.check_owner(taken, "p", admin=False)
    rules.check_owner(taken, "q", admin=True)
    rules.check_owner(taken, "", admin=False)  # no principals configured
    with pytest.raises(PermissionDeniedError, match="taken by another principal"):
        rules.check_owner(taken, "q", admin=False)
    rules.check_may_complete(taken, "a", admin=False, now=NOW)
    rules.check_may_complete(taken, "", admin=False, now=NOW)
    rules.check_may_complete(taken, "b", admin=True, now=NOW)
    rules.check_may_complete(taken, "b", admin=False, now=NOW + 6)  # nobody holds it
    with pytest.raises(FailedPreconditionError, match="held by another worker"):
        rules.check_may_complete(taken, "b", admin=False, now=NOW)


def test_heartbeats_only_from_the_holder_of_an_active_trial():
    rules.check_heartbeat(trial(1, "a"), "a")
    rules.check_heartbeat(trial(1, "a"), "")
    with pytest.raises(FailedPreconditionError, match="only its holder extends its lease"):
        rules.check_heartbeat(trial(1, "a", deadline=NOW - 100), "b")
    with pytest.raises(FailedPreconditionError, match="is completed; only active trials"):
        rules.check_heartbeat(trial(1, "a", state=TrialState.COMPLETED), "a")


def test_finished_completes_or_fails_a_trial():
    done, obj = rules.finished(trial(1, "a"), TrialResult(1, 2, {"acc": 1.0}, value_stderr=0),
                               spec(goal=Goal.MINIMIZE), NOW, "")
    assert done.state is TrialState.COMPLETED and done.value == 2.0 and obj == -2.0
    assert done.complete_time == NOW and done.value_stderr == 0.0 and done.metrics == {"acc": 1}
    failed, obj = rules.finished(trial(1, "a"), TrialResult(1, 2, {}, failure_reason="oom"),
                                 spec(), NOW, "")
    assert failed.state is TrialState.FAILED and failed.value is None and obj is None


def test_a_result_is_checked_against_the_trials_examples():
    subset = trial(1, "a", examples=(3, 5, 8))
    assert rules.check_fidelity(subset, TrialResult(1, 0.5, {}), "") == 3
    assert rules.check_fidelity(subset, TrialResult(1, 0.5, {}, examples_scored=3), "") == 3
    assert rules.check_fidelity(trial(2), TrialResult(2, 0.5, {}, examples_scored=7), "") == 7
    with pytest.raises(InvalidArgumentError, match="scored on its 3 example_indices"):
        rules.check_fidelity(subset, TrialResult(1, 0.5, {}, examples_scored=2), "")
    with pytest.raises(InvalidArgumentError, match="value_stderr must be >= 0"):
        rules.check_fidelity(subset, TrialResult(1, 0.5, {}, value_stderr=-1.0), "")


def test_a_trial_is_completed_once():
    done = trial(1, "a", state=TrialState.COMPLETED, value=0.5, metrics={"acc": 1.0})
    assert rules.repeat_completion(done, TrialResult(1, 0.5, {"acc": 1.0})) is done
    with pytest.raises(FailedPreconditionError, match="already completed with a different"):
        rules.repeat_completion(done, TrialResult(1, 0.5, {}))
    with pytest.raises(FailedPreconditionError):
        rules.repeat_completion(done, TrialResult(1, 0.5, {}, failure_reason="oom"))
    failed = trial(1, "a", state=TrialState.FAILED, failure_reason="oom")
    assert rules.repeat_completion(failed, TrialResult(1, 0.0, {}, failure_reason="oom"))
    with pytest.raises(FailedPreconditionError, match="already failed"):
        rules.repeat_completion(failed, TrialResult(1, 0.0, {}))


def test_known_and_reference_trials_are_checked():
    rules.check_known(0, KnownTrial(Prompt(vector=(0.0,) * 6), 0.5, {}))
    with pytest.raises(InvalidArgumentError, match="trial 2: metric 'acc'"):
        rules.check_known(2, KnownTrial(Prompt(), 0.5, {"acc": math.inf}))
    ref = KnownTrial(Prompt(), 0.5, {})
    assert rules.check_reference([ref]) is ref
    with pytest.raises(InvalidArgumentError, match="one trial with an empty prompt"):
        rules.check_reference([ref, ref])
    with pytest.raises(InvalidArgumentError, match="one trial with an empty prompt"):
        rules.check_reference([KnownTrial(Prompt(vector=(1.0,)), 0.5, {})])
    with pytest.raises(InvalidArgumentError, match="reference value_stderr"):
        rules.check_reference([KnownTrial(Prompt(), 0.5, {}, value_stderr=math.nan)])


# --- budgets and pages ---------------------------------------------------------------
def test_budget_used_names_the_budget_that_ended_the_study():
    assert rules.budget_used(spec(), 100, examples_exhausted=False) == ""
    assert rules.budget_used(spec(max_trials=3), 2, examples_exhausted=False) == ""
    assert rules.budget_used(spec(max_trials=3), 3, examples_exhausted=False) == "trials"
    assert rules.budget_used(spec(max_trials=3), 3, examples_exhausted=True) == "examples"


def test_max_trials_stays_at_or_above_what_the_study_holds():
    rules.check_max_trials("s", 0, 5)  # no limit
    rules.check_max_trials("s", 5, 5)
    with pytest.raises(InvalidArgumentError, match="below the 5 trials study 's'"):
        rules.check_max_trials("s", 4, 5)


def test_lease_seconds_has_a_floor():
    rules.check_lease_seconds(spec(), Limits(min_lease_seconds=10))
    with pytest.raises(InvalidArgumentError, match="lease_seconds must be at least 11"):
        rules.check_lease_seconds(spec(), Limits(min_lease_seconds=11))


def test_pages():
    assert rules.page_size(0) == 100 and rules.page_size(1000) == 1000
    for bad in (-1, 1001):
        with pytest.raises(InvalidArgumentError, match="page_size must be in"):
            rules.page_size(bad)
    assert rules.trial_page_after("") == 0 and rules.trial_page_after("42") == 42
    for bad in ("x", "-1", str(2**62)):
        with pytest.raises(InvalidArgumentError, match="is not one this server issued"):
            rules.trial_page_after(bad)


def test_study_bytes_grows_with_what_the_spec_carries():
    small = Study(name="s", spec=spec())
    big_spec = StudySpec(space=HardPromptSpace(2, "v" * 64, top_n=3, top_n_scores=(0.1,) * 100),
                         strategy="random", labels={"team": "nlp"})
    big = Study(name="h", spec=big_spec)
    assert rules.study_bytes(small) == 1024
    assert rules.study_bytes(big) == 1024 + 9 * 100 + len("team") + len("nlp")
