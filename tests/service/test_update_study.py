"""UpdateStudy, CreateStudy's validate_only and the ALREADY_EXISTS message, through the
client suite (in-process servicer and a real server on port 0)."""

from __future__ import annotations

import pytest

import promptbo
from promptbo.errors import AlreadyExistsError, InvalidArgumentError, NotFoundError


def _finish(study, n: int) -> None:
    for trial in study.ask(n):
        study.tell(trial, float(trial.id))


def test_raising_the_budget_reactivates_a_completed_study(client):
    study = client.create_study("grow", promptbo.SoftPromptSpace(2, 3), strategy="random",
                                max_trials=2)
    _finish(study, 2)
    assert study.ask(1) == [] and client.get_study("grow").done
    grown = client.update_study("grow", max_trials=4)
    assert not grown.done and grown.info.spec.max_trials == 4
    assert grown.info.completed_count == 2
    _finish(study, 2)
    assert client.get_study("grow").done
    assert len(list(study.trials(state="completed"))) == 4
    assert study.ask(1) == []


def test_update_checks_the_budget_and_the_mask(client):
    study = client.create_study("cap", promptbo.SoftPromptSpace(2, 3), strategy="random",
                                max_trials=5)
    trials = study.ask(3)
    study.tell(trials[0], 1.0)
    with pytest.raises(InvalidArgumentError, match="below the 3 trials"):
        client.update_study("cap", max_trials=2)
    assert client.get_study("cap").info.spec.max_trials == 5  # unchanged
    capped = client.update_study("cap", max_active_trials=1, max_trials=0)
    assert (capped.info.spec.max_trials, capped.info.spec.max_active_trials) == (0, 1)
    with pytest.raises(InvalidArgumentError, match="needs max_trials"):
        client.update_study("cap")
    with pytest.raises(NotFoundError):
        client.update_study("nope", max_trials=3)


def test_update_mask_refuses_fields_that_define_the_search(client):
    from promptbo.v1 import optimizer_service_pb2 as api

    client.create_study("fixed", promptbo.SoftPromptSpace(2, 3), strategy="random")
    req = api.UpdateStudyRequest(name="fixed")
    req.spec.strategy = "gp"
    req.update_mask.paths.append("strategy")
    with pytest.raises(InvalidArgumentError, match="'strategy' cannot be changed"):
        client._call("UpdateStudy", req)
    with pytest.raises(InvalidArgumentError, match="names no field"):
        client._call("UpdateStudy", api.UpdateStudyRequest(name="fixed"))


def test_already_exists_names_the_differing_fields(client):
    client.create_study("s", promptbo.SoftPromptSpace(2, 3), strategy="random", max_trials=20)
    with pytest.raises(AlreadyExistsError) as err:
        client.create_study("s", promptbo.SoftPromptSpace(2, 3), strategy="random",
                            max_trials=40)
    assert "max_trials: 20 there, 40 here" in str(err.value)
    assert "promptbo study update s --max-trials" in str(err.value)
    with pytest.raises(AlreadyExistsError) as err:
        client.create_study("s", promptbo.SoftPromptSpace(3, 3), strategy="gp", max_trials=20)
    assert "soft.prompt_length: 2 there, 3 here" in str(err.value)
    assert "strategy: 'random' there, 'gp' here" in str(err.value)
    assert "study delete" in str(err.value)


def test_validate_only_checks_without_creating(client, vocab_table):
    with pytest.raises(InvalidArgumentError, match="unknown strategy 'bayes'"):
        client.create_study("v", promptbo.SoftPromptSpace(2, 3), strategy="bayes",
                            validate_only=True)
    # A hard space whose vocabulary is not uploaded yet: the strategy is still checked.
    with pytest.raises(InvalidArgumentError, match="unknown strategy 'bayes'"):
        client.create_study("v", promptbo.HardPromptSpace(2, "not-uploaded"), strategy="bayes",
                            validate_only=True)
    would = client.create_study("v", promptbo.HardPromptSpace(2, "not-uploaded"),
                                strategy="random", max_trials=3, validate_only=True)
    assert would.info.spec.max_trials == 3
    assert client.list_studies() == []
    vocab_id = client.upload_vocabulary(vocab_table)
    client.create_study("v", promptbo.HardPromptSpace(2, vocab_id), strategy="random",
                        max_trials=3)
    # The existing study: equal apart from the unknown vocabulary -> fine; else named.
    client.create_study("v", promptbo.HardPromptSpace(2, "not-uploaded"), strategy="random",
                        max_trials=3, validate_only=True)
    with pytest.raises(AlreadyExistsError, match="max_trials: 3 there, 5 here"):
        client.create_study("v", promptbo.HardPromptSpace(2, "not-uploaded"),
                            strategy="random", max_trials=5, validate_only=True)
    assert [s.name for s in client.list_studies()] == ["v"]


def test_update_replaces_the_labels(client):
    client.create_study("lab", promptbo.SoftPromptSpace(2, 3), strategy="random",
                        labels={"team": "nlp"})
    study = client.update_study("lab", labels={"team": "nlp", "promptbo.setup/evaluator": "x"})
    assert dict(study.info.spec.labels) == {"team": "nlp", "promptbo.setup/evaluator": "x"}
    assert dict(client.get_study("lab").info.spec.labels) == dict(study.info.spec.labels)
    assert dict(client.update_study("lab", labels={}).info.spec.labels) == {}
