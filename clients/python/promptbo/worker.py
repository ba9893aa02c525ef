"""The worker runtime: ask -> score -> tell, with leases, retries and clean shutdown.

A :class:`Worker` serves one study with one evaluator (anything with a
``score(prompts) -> list[Score]`` method, see :mod:`promptbo.evaluators`). Several
workers, on as many machines, can serve the same study.

- Trials it holds are heartbeated in the background while the evaluator runs.
- While the server is unreachable it retries with exponential backoff (capped).
- An evaluator error fails the trials of that batch with the error as the reason and
  the worker goes on; ``max_consecutive_failures`` failures in a row stop it.
- :meth:`Worker.stop` (wired to SIGTERM and the first Ctrl-C by the CLI) lets the current
  batch finish and be told, then returns; a second Ctrl-C fails the batch and returns.
- Fidelity: a trial's ``prompt.examples`` (the pool examples the server chose) reach the
  evaluator with the prompt; the score's standard error and example count are told.
- With ``reference=True`` (the CLI's default for classification evaluators) the worker
  first scores the empty prompt and records it as the study's unprompted reference,
  unless the study has one.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from promptbo.client import Study, Trial
from promptbo.errors import FailedPreconditionError, PromptboError, UnavailableError
from promptbo.types import Prompt, Score

log = logging.getLogger(__name__)


@dataclass
class WorkerStats:
    completed: int = 0
    failed: int = 0
    best_value: float = -math.inf
    best_trial: Trial | None = None
    seconds: float = 0.0


class Worker:
    """Serves ``study`` with ``evaluator`` until the budget is used up or it is stopped.

    Args:
        study: the study handle (from :meth:`promptbo.Client.get_study`).
        evaluator: has ``score(prompts: Sequence[Prompt]) -> list[Score]``.
        batch_size: trials asked and scored together.
        max_trials: stop after this many trials of this worker (None: until done).
        max_consecutive_failures: evaluator failures in a row that stop the worker.
        progress: a callable receiving the stats after each batch (None: no output).
        retry_seconds: cap of the backoff while the server is unreachable;
            ``give_up_seconds`` of unreachability end the worker with UnavailableError.
    """

    def __init__(
        self,
        study: Study,
        evaluator,
        *,
        batch_size: int = 1,
        max_trials: int | None = None,
        max_consecutive_failures: int = 3,
        progress: Callable[[WorkerStats, Study], None] | None = None,
        retry_seconds: float = 10.0,
        give_up_seconds: float = 600.0,
        minimize: bool = False,
        reference: bool = False,
    ) -> None:
        self.study = study
        self.evaluator = evaluator
        self.batch_size = batch_size
        self.max_trials = max_trials
        self.max_consecutive_failures = max_consecutive_failures
        self.progress = progress
        self.retry_seconds = retry_seconds
        self.give_up_seconds = give_up_seconds
        self.sign = -1.0 if minimize else 1.0
        self.reference = reference
        self.stats = WorkerStats()
        self._stop = threading.Event()
        self._abort = threading.Event()
        self._next: list[Trial] = []  # handed out with the last result, not yet scored

    def stop(self) -> None:
        """Finish the current batch, tell it, and return from :meth:`run`."""
        if self._stop.is_set():
            self._abort.set()
        self._stop.set()

    def run(self) -> WorkerStats:
        start = time.monotonic()
        failures_in_row = 0
        if self.reference and not self.study.done:
            self._record_reference()
        while not self._stop.is_set():
            n = self.batch_size
            if self.max_trials is not None:
                n = min(n, self.max_trials - self.stats.completed - self.stats.failed)
                if n <= 0:
                    break
            trials, self._next = self._next[:n], self._next[n:]
            if not trials:
                trials = self._with_retry(lambda n=n: self.study.ask(n))
            if not trials:
                if self.study.done:
                    break
                self._stop.wait(1.0)  # all trials in flight elsewhere, or capped
                continue
            ok = self._run_batch(trials)
            failures_in_row = 0 if ok else failures_in_row + 1
            self.stats.seconds = time.monotonic() - start
            if self.progress is not None:
                self.progress(self.stats, self.study)
            if failures_in_row >= self.max_consecutive_failures:
                raise PromptboError(
                    f"the evaluator failed {failures_in_row} batches in a row; last reason: "
                    f"{self._last_reason}"
                )
        self.stats.seconds = time.monotonic() - start
        if self._next:
            log.info("stopping with trials %s handed out but not scored; their leases will "
                     "expire and the server will hand them out again", [t.id for t in self._next])
        return self.stats

    _last_reason = ""

    def _record_reference(self) -> None:
        """Scores the empty prompt on the evaluator's whole split and records it as the
        study's reference, unless one exists (another worker's wins a race)."""
        from promptbo.errors import AlreadyExistsError

        if self._with_retry(self.study.recommendation).reference is not None:
            return
        scores = self._score([Prompt()])
        if isinstance(scores, BaseException):
            log.warning("scoring the unprompted reference failed: %s", scores)
            return
        with contextlib.suppress(AlreadyExistsError):  # another worker recorded one
            self._with_retry(lambda: self.study.add_reference(scores[0]))

    def _run_batch(self, trials: list[Trial]) -> bool:
        beat_stop = threading.Event()
        beater = threading.Thread(
            target=self._heartbeat, args=(trials, beat_stop), daemon=True,
            name="promptbo-heartbeat",
        )
        beater.start()
        try:
            scores = self._score([t.prompt for t in trials])
        except KeyboardInterrupt:
            scores = RuntimeError("worker interrupted")
            self._stop.set()
        finally:
            beat_stop.set()
            beater.join()
        if isinstance(scores, BaseException):
            reason = f"{type(scores).__name__}: {scores}"[:2000]
            self._last_reason = reason
            log.warning("evaluation failed for trials %s: %s", [t.id for t in trials], reason)
            for t in trials:
                self._tell(lambda t=t: self.study.fail(t, reason))
            self.stats.failed += len(trials)
            return False
        for done, score in zip(self._tell_batch(trials, scores), scores, strict=True):
            if done is None:
                continue
            self.stats.completed += 1
            if self.sign * score.value > self.sign * self.stats.best_value or (
                self.stats.best_trial is None
            ):
                self.stats.best_value = score.value
                self.stats.best_trial = done
        return True

    def _tell_batch(self, trials: list[Trial], scores: list[Score]) -> list[Trial | None]:
        """Tells a batch's results in one round trip that also brings the next batch.

        Returns the told trials, None where a result was not accepted (another worker
        holds that trial since our lease expired); those are then told one by one."""
        results = list(zip(trials, scores, strict=True))
        ask_next = self._next_batch_size(len(trials))
        try:
            told, self._next = self._with_retry(
                lambda: self.study.tell_many(results, ask_next)
            )
            return list(told)
        except FailedPreconditionError as err:
            log.warning("batch not accepted as a whole (%s); telling its results one by one",
                        err)
        return [
            self._tell(lambda t=t, s=s: self.study.tell(
                t, s.value, s.metrics, stderr=s.stderr, examples=s.examples))
            for t, s in zip(trials, scores, strict=True)
        ]

    def _next_batch_size(self, telling: int) -> int:
        """Trials of the next batch, 0 when this worker will not ask again; ``telling``
        results are about to be counted."""
        if self._stop.is_set():
            return 0
        n = self.batch_size
        if self.max_trials is not None:
            n = min(n, self.max_trials - self.stats.completed - self.stats.failed - telling)
        return max(n, 0)

    def _score(self, prompts: Sequence[Prompt]) -> list[Score] | BaseException:
        try:
            scores = list(self.evaluator.score(prompts))
            if len(scores) != len(prompts):
                raise ValueError(
                    f"the evaluator returned {len(scores)} scores for {len(prompts)} prompts"
                )
            return [s if isinstance(s, Score) else Score(float(s)) for s in scores]
        except Exception as exc:  # the evaluator's failure fails the trials, not the worker
            return exc

    def _tell(self, call):
        try:
            return self._with_retry(call)
        except FailedPreconditionError as err:
            # Our lease expired and another worker holds the trial: its result will count.
            log.warning("result not accepted: %s", err)
            return None

    def _heartbeat(self, trials: list[Trial], stop: threading.Event) -> None:
        lease = self.study.spec.lease_seconds
        while not stop.wait(max(0.5, lease / 3)):
            for t in trials:
                try:
                    self.study.heartbeat(t)
                except PromptboError as err:
                    log.debug("heartbeat of trial %d failed: %s", t.id, err)

    def _with_retry(self, call):
        delay, waited = 0.5, 0.0
        while True:
            try:
                return call()
            except UnavailableError:
                if waited >= self.give_up_seconds or self._abort.is_set():
                    raise
                log.warning("server unreachable; retrying in %.1fs", delay)
                time.sleep(delay)
                waited += delay
                delay = min(delay * 2, self.retry_seconds)


def print_progress(stats: WorkerStats, study: Study, stream=None) -> None:
    """A one-line progress display: trials done, best value, time per trial."""
    stream = stream or sys.stderr
    total = study.info.spec.max_trials
    done = stats.completed + stats.failed
    per = stats.seconds / max(done, 1)
    width = 24
    bar = ""
    if total:
        filled = int(width * min(done, total) / total)
        bar = "[" + "#" * filled + "." * (width - filled) + f"] {done}/{total} "
    else:
        bar = f"{done} trials "
    best = "-" if stats.best_trial is None else f"{stats.best_value:.4f}"
    text = f"\r{study.name}: {bar}best {best}  failed {stats.failed}  {per:.1f}s/trial"
    stream.write(text)
    stream.flush()
