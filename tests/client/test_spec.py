"""The study spec of :mod:`promptbo.spec`: its defaults, checks and both codecs."""

from __future__ import annotations

import dataclasses

import pytest

from promptbo.errors import FailedPreconditionError, InvalidArgumentError
from promptbo.spec import (
    DEFAULT_LEASE_SECONDS,
    DEFAULT_PCA_DIMS,
    Goal,
    HardPromptSpace,
    PoolSpace,
    SoftPromptSpace,
    StudySpec,
    spec_from_json,
    spec_from_pb,
    spec_to_json,
    spec_to_pb,
)
from promptbo.v1 import resources_pb2 as pb

#: A spec with every field away from its default (a value that float32 keeps exactly).
FULL = StudySpec(
    space=SoftPromptSpace(3, 8, intrinsic_dim=4, bound=2.5, embedding_std=0.25),
    strategy="turbo", strategy_options={"num_initial": "6"}, goal=Goal.MINIMIZE,
    objective="loss", max_trials=40, max_active_trials=4, lease_seconds=12.5, seed=7,
    labels={"team": "nlp"}, pool_size=100, max_examples=500, examples_per_trial=10,
    transfer_from=("a", "b"), transfer="init",
)
SPACES = (
    FULL.space,
    HardPromptSpace(2, "v" * 64, pca_dims=8, top_n=3, top_n_scores=(0.5, 1.5, -2.0)),
    HardPromptSpace(2, "v" * 64, allowed=(4, 1, 9)),
    PoolSpace("p" * 64),
)
SPECS = [dataclasses.replace(FULL, space=s) for s in SPACES] + [StudySpec(s) for s in SPACES]

#: JSON texts storage wrote before :mod:`promptbo.spec` took the codec over (and one from
#: before fidelity and transfer existed); each must keep loading as this spec.
STORED = [
    ('{"space":{"kind":"hard","prompt_length":3,"vocabulary_id":"vvvvvvvv","pca_dims":16,'
     '"top_n":2,"top_n_scores":[0.5,1.5],"allowed":[]},"strategy":"gp","strategy_options":'
     '{"num_initial":"4"},"goal":"maximize","objective":"value","max_trials":0,'
     '"max_active_trials":0,"lease_seconds":300.0,"seed":0,"labels":{"team":"nlp"}}',
     StudySpec(HardPromptSpace(3, "vvvvvvvv", top_n=2, top_n_scores=(0.5, 1.5)),
               strategy_options={"num_initial": "4"}, labels={"team": "nlp"})),
    ('{"space":{"kind":"soft","prompt_length":2,"embedding_dim":8,"intrinsic_dim":4,'
     '"bound":2.0,"embedding_std":0.5},"strategy":"gp","strategy_options":{},"goal":'
     '"minimize","objective":"loss","max_trials":30,"max_active_trials":3,"lease_seconds":'
     '60.0,"seed":9,"labels":{},"pool_size":100,"max_examples":1000,"examples_per_trial":10,'
     '"transfer_from":["a","b"],"transfer":"init"}',
     StudySpec(SoftPromptSpace(2, 8, intrinsic_dim=4, bound=2.0, embedding_std=0.5),
               goal=Goal.MINIMIZE, objective="loss", max_trials=30, max_active_trials=3,
               lease_seconds=60.0, seed=9, pool_size=100, max_examples=1000,
               examples_per_trial=10, transfer_from=("a", "b"), transfer="init")),
    ('{"space":{"kind":"pool","pool_id":"pppppppp"},"strategy":"zopo","strategy_options":{},'
     '"goal":"maximize","objective":"value","max_trials":0,"max_active_trials":0,'
     '"lease_seconds":300.0,"seed":0,"labels":{}}',
     StudySpec(PoolSpace("pppppppp"), strategy="zopo")),
    ('{"space":{"kind":"soft","prompt_length":1,"embedding_dim":4},"strategy":"random"}',
     StudySpec(SoftPromptSpace(1, 4), strategy="random")),
]


def test_defaults_are_defined_once():
    spec = StudySpec(HardPromptSpace(4, "v"))
    assert spec.space.pca_dims == DEFAULT_PCA_DIMS == 16
    assert (spec.strategy, spec.goal, spec.objective, spec.transfer) == (
        "gp", Goal.MAXIMIZE, "value", "both")
    assert spec.lease_seconds == DEFAULT_LEASE_SECONDS == 300.0
    soft = SoftPromptSpace(4, 8)
    assert (soft.intrinsic_dim, soft.bound, soft.embedding_std) == (0, 1.0, 1.0)


def test_sequences_and_maps_are_normalized():
    space = HardPromptSpace(2, "v", top_n=2, top_n_scores=[1, 2])
    assert space.top_n_scores == (1.0, 2.0) and isinstance(space.top_n_scores, tuple)
    spec = StudySpec(space, transfer_from=["a"])
    assert spec.transfer_from == ("a",)


@pytest.mark.parametrize("spec", SPECS)
def test_protobuf_roundtrip_is_exact(spec):
    assert spec_from_pb(spec_to_pb(spec)) == spec
    assert spec_from_pb(spec_to_pb(spec, changed_only=True)) == spec


def test_protobuf_writes_every_field():
    msg = spec_to_pb(FULL)
    assert msg.soft == pb.SoftPromptSpace(
        prompt_length=3, embedding_dim=8, intrinsic_dim=4, bound=2.5, embedding_std=0.25)
    assert (msg.strategy, dict(msg.strategy_options), msg.goal, msg.objective) == (
        "turbo", {"num_initial": "6"}, pb.GOAL_MINIMIZE, "loss")
    assert (msg.max_trials, msg.max_active_trials, msg.lease_seconds, msg.seed) == (
        40, 4, 12.5, 7)
    assert (dict(msg.labels), msg.pool_size, msg.max_examples, msg.examples_per_trial) == (
        {"team": "nlp"}, 100, 500, 10)
    assert (list(msg.transfer_from), msg.transfer) == (["a", "b"], "init")
    hard = spec_to_pb(StudySpec(SPACES[1])).hard
    assert (hard.pca_dims, hard.filter.top_n.n, list(hard.filter.top_n.scores)) == (
        8, 3, [0.5, 1.5, -2.0])
    assert list(spec_to_pb(StudySpec(SPACES[2])).hard.filter.allowed.indices) == [4, 1, 9]


def test_reports_show_defaults_and_requests_carry_only_what_was_set():
    spec = StudySpec(HardPromptSpace(4, "v"), seed=3)
    full = spec_to_pb(spec)
    assert (full.hard.pca_dims, full.strategy, full.lease_seconds) == (16, "gp", 300.0)
    assert full.transfer == ""  # written only with sources
    sent = spec_to_pb(spec, changed_only=True)
    assert sent == pb.StudySpec(hard=pb.HardPromptSpace(prompt_length=4, vocabulary_id="v"),
                                seed=3)


def test_unset_message_fields_take_the_defaults():
    msg = pb.StudySpec(soft=pb.SoftPromptSpace(prompt_length=2, embedding_dim=4))
    assert spec_from_pb(msg) == StudySpec(SoftPromptSpace(2, 4))
    msg = pb.StudySpec(hard=pb.HardPromptSpace(prompt_length=2, vocabulary_id="v"))
    assert spec_from_pb(msg).space.pca_dims == DEFAULT_PCA_DIMS


@pytest.mark.parametrize(("msg", "error"), [
    (pb.StudySpec(), "needs a search space"),
    (pb.StudySpec(pool=pb.PoolSpace(pool_id="p"), goal=7), "unknown goal 7"),
    (pb.StudySpec(hard=pb.HardPromptSpace(
        prompt_length=2, vocabulary_id="v",
        filter=pb.VocabularyFilter(top_n=pb.VocabularyFilter.TopN()))), "needs n >= 1"),
    (pb.StudySpec(soft=pb.SoftPromptSpace(prompt_length=600, embedding_dim=4)),
     r"prompt_length must be in \[1, 512\], got 600"),
    (pb.StudySpec(pool=pb.PoolSpace(pool_id="p"), examples_per_trial=3),
     "need a labeled pool"),
])
def test_invalid_messages_are_refused(msg, error):
    with pytest.raises(InvalidArgumentError, match=error):
        spec_from_pb(msg)


@pytest.mark.parametrize("spec", SPECS)
def test_json_roundtrip_is_exact(spec):
    assert spec_from_json(spec_to_json(spec)) == spec


def test_json_writes_every_value_but_unused_later_fields():
    text = spec_to_json(StudySpec(HardPromptSpace(4, "v")))
    assert '"pca_dims":16' in text and '"lease_seconds":300.0' in text
    for key in ("pool_size", "max_examples", "examples_per_trial", "transfer_from", "transfer"):
        assert f'"{key}"' not in text


@pytest.mark.parametrize(("text", "spec"), STORED)
def test_specs_stored_by_earlier_versions_still_load(text, spec):
    assert spec_from_json(text) == spec


def test_json_from_a_newer_version_is_refused_clearly():
    with pytest.raises(FailedPreconditionError, match="unknown space kind 'graph'"):
        spec_from_json('{"space":{"kind":"graph"}}')
    with pytest.raises(FailedPreconditionError, match="unknown field.*colour"):
        spec_from_json('{"space":{"kind":"pool","pool_id":"p"},"colour":"red"}')
