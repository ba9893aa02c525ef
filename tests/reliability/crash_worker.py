"""A worker process for the crash drill: asks, scores a cheap objective, tells, and
appends every acknowledged result to a log as one JSON line. Survives server restarts."""

from __future__ import annotations

import json
import sys
import time

import numpy as np

import promptbo


def tell_until_answered(study, trial, value):
    """Retries a tell through server restarts; None if another worker holds the trial."""
    while True:
        try:
            return study.tell(trial, value)
        except promptbo.FailedPreconditionError:
            return None
        except promptbo.UnavailableError:
            time.sleep(0.2)


def main(address: str, study_name: str, log_path: str, worker_id: str) -> None:
    client = promptbo.Client(address, client_id=worker_id, timeout=5)
    study = None
    with open(log_path, "a") as log:
        while True:
            try:
                if study is None:
                    study = client.get_study(study_name)
                trials = study.ask(2)
                if not trials:
                    if study.done:
                        return
                    time.sleep(0.1)
                    continue
                for t in trials:
                    value = -float(np.sum(np.asarray(t.prompt.vector) ** 2))
                    time.sleep(0.05)
                    done = tell_until_answered(study, t, value)
                    if done is None:
                        continue  # lease lost to another worker while the server was down
                    log.write(json.dumps({"id": done.id, "value": done.value}) + "\n")
                    log.flush()
            except (promptbo.UnavailableError, promptbo.PromptboError) as err:
                if isinstance(err, promptbo.NotFoundError):
                    raise
                time.sleep(0.2)


if __name__ == "__main__":
    main(*sys.argv[1:5])
