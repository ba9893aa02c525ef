"""Every resource a client can make the server hold, bounded: the limits and their checks.

:class:`Limits` gathers the bounds one server applies (each documented, with its default,
in ``docs/operations.md``); :class:`StudyManager` and the servicers read them from there.
The helpers estimate sizes from a spec alone, so a request that could not be served is
refused with INVALID_ARGUMENT (a spec) or clamped (a count) *before* anything is
allocated or stored.

Size estimates (bytes):

- one trial in a response: ``4 * L * D`` for a soft prompt (packed float32) plus a fixed
  overhead; for a hard prompt ``L`` token ids and token strings (at most
  ``MAX_TOKEN_BYTES`` each);
- a study in memory: for a soft prompt with a projection, the ``(L*D) x k`` float32
  matrix; for every model-based study the acquisition's starting pool and history,
  ``8 * dim * (raw_samples + max_points)``, where ``dim`` is the search dimension.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from promptbo.errors import InvalidArgumentError
from promptbo.server.domain import HardPromptSpace, PoolSpace, SoftPromptSpace, StudySpec
from promptbo.server.pool_upload import MAX_POOL_TEXT_BYTES

#: Bytes a trial message carries besides its prompt (ids, state, times, client id).
TRIAL_OVERHEAD_BYTES = 512
#: Bytes assumed per token string of a hard prompt in a response.
MAX_TOKEN_BYTES = 64
#: Bytes kept free in every response for its own fields (study, next_page_token).
RESPONSE_HEADROOM_BYTES = 4096
#: Memory of one soft-prompt value of an active trial held by the server (a Python float
#: in a tuple).
SOFT_VALUE_BYTES = 32
#: Strategies whose state does not grow with the search dimension beyond one point.
_LIGHT_STRATEGIES = ("random", "index")


@dataclass(frozen=True)
class Limits:
    """The bounds of one server (defaults in brackets).

    - ``max_message_bytes`` [64 MiB]: largest request or response.
    - ``max_study_memory_bytes`` [1 GiB]: estimated memory of one study's engine.
    - ``max_add_trials`` [1000]: trials per AddTrials request.
    - ``max_inline_prompt_bytes`` [64 KiB]: a cheap suggestion runs on the event loop only
      when its response is at most this large.
    - ``max_watch_streams`` [256] and ``max_watch_streams_per_client`` [8]: open
      WatchStudy streams in all and per client (principal, else peer address).
    - ``min_lease_seconds`` [1.0]: the shortest lease a study may ask for.
    - ``max_active_trial_bytes`` [1 GiB]: memory of one study's active soft-prompt trials
      (``SOFT_VALUE_BYTES`` per value); beyond it SuggestTrials hands out no new trials.
    """

    max_message_bytes: int = 64 * 1024 * 1024
    max_study_memory_bytes: int = 1024**3
    max_add_trials: int = 1000
    max_inline_prompt_bytes: int = 64 * 1024
    max_watch_streams: int = 256
    max_watch_streams_per_client: int = 8
    min_lease_seconds: float = 1.0
    max_active_trial_bytes: int = 1024**3

    @property
    def response_budget(self) -> int:
        """Bytes of a response left for its repeated items."""
        return max(self.max_message_bytes - RESPONSE_HEADROOM_BYTES, 1)


def trial_bytes(spec: StudySpec) -> int:
    """Upper estimate of one trial's size in a response."""
    space = spec.space
    if isinstance(space, SoftPromptSpace):
        return TRIAL_OVERHEAD_BYTES + 4 * space.size
    if isinstance(space, PoolSpace):
        return TRIAL_OVERHEAD_BYTES + MAX_POOL_TEXT_BYTES
    assert isinstance(space, HardPromptSpace)
    return TRIAL_OVERHEAD_BYTES + space.prompt_length * (10 + MAX_TOKEN_BYTES)


def search_dim(spec: StudySpec) -> int:
    """The dimension the engine searches (before any PCA for hard prompts: an upper bound;
    0 for pools, whose engines work on the pool's own table, bounded when it is uploaded)."""
    space = spec.space
    if isinstance(space, SoftPromptSpace):
        return space.intrinsic_dim or space.size
    if isinstance(space, PoolSpace):
        return 0
    assert isinstance(space, HardPromptSpace)
    return space.prompt_length * (space.pca_dims or 1)


def study_memory_bytes(spec: StudySpec) -> int:
    """Estimate of the memory one study's engine holds (see the module docstring)."""
    space = spec.space
    total = 0
    if isinstance(space, SoftPromptSpace) and space.intrinsic_dim:
        total += 4 * space.size * space.intrinsic_dim
    if spec.strategy not in _LIGHT_STRATEGIES:
        opts = spec.strategy_options
        raw = _int_option(opts, "raw_samples", 256)
        points = _int_option(opts, "max_points", 2048)
        total += 8 * search_dim(spec) * (raw + points)
    return total


def check_spec(spec: StudySpec, limits: Limits) -> None:
    """Refuses a spec whose trial cannot be delivered or whose engine would exceed the
    study memory budget. Raises InvalidArgumentError saying what to shrink."""
    per_trial = trial_bytes(spec)
    if per_trial > limits.response_budget:
        raise InvalidArgumentError(
            f"one trial of this spec takes about {per_trial} bytes, more than the server's "
            f"message limit of {limits.max_message_bytes} bytes; shrink prompt_length x "
            "embedding_dim or raise --max-message-mb"
        )
    need = study_memory_bytes(spec)
    if need > limits.max_study_memory_bytes:
        raise InvalidArgumentError(
            f"this spec needs about {need >> 20} MiB for its engine (projection matrix and "
            f"search state), more than the per-study limit of "
            f"{limits.max_study_memory_bytes >> 20} MiB; lower intrinsic_dim, prompt_length "
            "or embedding_dim, or raise --max-study-mb"
        )


def active_trial_cap(spec: StudySpec, limits: Limits) -> int:
    """How many active trials of ``spec`` fit ``max_active_trial_bytes`` (0: no cap, hard
    prompts are small)."""
    space = spec.space
    if not isinstance(space, SoftPromptSpace):
        return 0
    return max(1, limits.max_active_trial_bytes // (SOFT_VALUE_BYTES * space.size))


def max_trials_per_response(spec: StudySpec, limits: Limits) -> int:
    """How many trials of ``spec`` fit in one response (at least one)."""
    return max(1, limits.response_budget // trial_bytes(spec))


def clip(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, marked when cut."""
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


def _int_option(options: Mapping[str, str], name: str, default: int) -> int:
    try:
        return int(options.get(name) or default)
    except ValueError:
        return default  # the engine reports the bad option itself
