"""Conversions between promptbo.v1 messages and the server's domain objects.

The only module of the server that knows both worlds; the servicer calls these and the
manager never sees a message. Invalid messages raise InvalidArgumentError. The study
spec's codec (:func:`spec_from_pb`, :func:`spec_to_pb`) is the one of :mod:`promptbo.spec`,
which the client uses too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from promptbo.errors import InvalidArgumentError
from promptbo.server.domain import Prompt, Study, StudyState, Trial, TrialState
from promptbo.server.recommend import Recommendation
from promptbo.server.transfer_sources import SourceStatus
from promptbo.spec import spec_from_pb, spec_to_pb
from promptbo.v1 import optimizer_service_pb2 as api
from promptbo.v1 import resources_pb2 as pb

_STUDY_STATES_PB = {StudyState.ACTIVE: pb.STUDY_STATE_ACTIVE,
                    StudyState.COMPLETED: pb.STUDY_STATE_COMPLETED}
_TRIAL_STATES_PB = {TrialState.ACTIVE: pb.TRIAL_STATE_ACTIVE,
                    TrialState.COMPLETED: pb.TRIAL_STATE_COMPLETED,
                    TrialState.FAILED: pb.TRIAL_STATE_FAILED}
_TRIAL_STATES: dict[int, TrialState] = {v: k for k, v in _TRIAL_STATES_PB.items()}

__all__ = [
    "UPDATABLE_SPEC_FIELDS", "prompt_from_pb", "prompt_to_pb", "recommendation_to_pb",
    "spec_from_pb", "spec_to_pb", "study_to_pb", "study_update_from_pb",
    "transfer_sources_to_pb", "trial_state_from_pb", "trial_to_pb",
]


def prompt_from_pb(msg: pb.Prompt) -> Prompt:
    return Prompt(
        token_ids=tuple(msg.token_ids),
        tokens=tuple(msg.tokens),
        text=msg.text,
        vector=tuple(msg.vector),
        pool_index=msg.pool_index if msg.HasField("pool_index") else None,
    )


def prompt_to_pb(p: Prompt) -> pb.Prompt:
    msg = pb.Prompt(token_ids=p.token_ids, tokens=p.tokens, text=p.text, vector=p.vector)
    if p.pool_index is not None:
        msg.pool_index = p.pool_index
    return msg


def trial_to_pb(t: Trial) -> pb.Trial:
    msg = pb.Trial(
        study=t.study,
        id=t.id,
        state=_TRIAL_STATES_PB[t.state],
        prompt=prompt_to_pb(t.prompt),
        client_id=t.client_id,
        value=t.value if t.value is not None else 0.0,
        metrics=t.metrics,
        failure_reason=t.failure_reason,
        source=t.source,
        principal=t.principal,
        example_indices=t.examples,
        examples_scored=t.examples_scored,
    )
    if t.value_stderr is not None:
        msg.value_stderr = t.value_stderr
    _set_time(msg.lease_deadline, t.lease_deadline)
    _set_time(msg.create_time, t.create_time)
    _set_time(msg.complete_time, t.complete_time)
    return msg


def trial_state_from_pb(state: int) -> TrialState | None:
    if state == pb.TRIAL_STATE_UNSPECIFIED:
        return None
    if state not in _TRIAL_STATES:
        raise InvalidArgumentError(f"unknown trial state {state}")
    return _TRIAL_STATES[state]


def study_to_pb(
    study: Study,
    counts: dict[TrialState, int] | None = None,
    best: Trial | None = None,
    examples_scored: int = 0,
) -> pb.Study:
    msg = pb.Study(
        name=study.name, state=_STUDY_STATES_PB[study.state], spec=spec_to_pb(study.spec),
        examples_scored=examples_scored,
    )
    _set_time(msg.create_time, study.create_time)
    if counts is not None:
        msg.trial_count = sum(counts.values())
        msg.completed_count = counts[TrialState.COMPLETED]
        msg.failed_count = counts[TrialState.FAILED]
        msg.active_count = counts[TrialState.ACTIVE]
    if best is not None:
        msg.best_trial.CopyFrom(trial_to_pb(best))
    return msg


def recommendation_to_pb(rec: Recommendation) -> api.Recommendation:
    return api.Recommendation(
        prompt=prompt_to_pb(rec.prompt), trial=trial_to_pb(rec.trial), estimate=rec.estimate,
        stderr=rec.stderr, lower=rec.lower, upper=rec.upper, examples=rec.examples,
        trials=rec.trials, posterior_mean=rec.posterior_mean, method=rec.method,
        candidates=rec.candidates, pooled_estimate=rec.pooled_estimate,
        pooled_examples=rec.pooled_examples,
    )


def transfer_sources_to_pb(sources: Sequence[SourceStatus]) -> list[pb.TransferSource]:
    """``study show``'s transfer sources (a weight not known yet is sent as 0 with a note)."""
    return [
        pb.TransferSource(study=s.study, weight=s.weight or 0.0, trials=s.trials, note=s.note)
        for s in sources
    ]


def _set_time(field: Timestamp, seconds: float) -> None:
    if seconds:
        field.FromNanoseconds(int(seconds * 1e9))


#: StudySpec fields UpdateStudy can change.
UPDATABLE_SPEC_FIELDS = ("max_trials", "max_active_trials", "labels")


def study_update_from_pb(spec: pb.StudySpec, mask_paths: Sequence[str]) -> dict[str, Any]:
    """The changes an UpdateStudy request asks for, as keyword arguments of
    :meth:`StudyManager.update_study`. Raises InvalidArgumentError for an empty mask or a
    path that cannot be changed."""
    if not mask_paths:
        raise InvalidArgumentError(
            f"update_mask names no field; give one or more of {', '.join(UPDATABLE_SPEC_FIELDS)}"
        )
    bad = [p for p in mask_paths if p not in UPDATABLE_SPEC_FIELDS]
    if bad:
        raise InvalidArgumentError(
            f"update_mask path(s) {', '.join(map(repr, bad))} cannot be changed; a study's "
            f"{', '.join(UPDATABLE_SPEC_FIELDS)} can (the rest defines what was searched)"
        )
    return {p: dict(spec.labels) if p == "labels" else int(getattr(spec, p)) for p in mask_paths}
