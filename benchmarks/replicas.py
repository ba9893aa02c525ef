"""Replica drill: several ``promptbo serve`` processes on one PostgreSQL database, worker
clients spread over them doing ask/tell on a few studies, and one replica at a time
``kill -9``ed mid-load and restarted on its port.

Each worker (a thread of this process) holds one client per replica under one client
id and fails over to the next replica when its current one is unreachable (UNAVAILABLE
or a deadline): a tell is retried there until it is answered, which is safe because a
repeated identical completion is acknowledged once. Afterwards:

- every result a worker got an OK for is stored, completed, with its value (``lost``);
- no trial was handed to a second worker while the first one's lease still ran
  (``double_handouts``; a lease starts no earlier than the ask was sent);
- no study holds more completed plus active trials than its budget (``over_budget``);
- ``promptbo admin check --storage URL`` exits 0 (``admin_check_rc``).

    python -m benchmarks.replicas --storage postgresql://postgres@127.0.0.1:54329/db \\
        --kills 10 --workers 8 --budget 100000 --wind-down 20

Prints one JSON object of figures (and writes it to ``--out`` if given).
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

import promptbo

#: Where the server processes run, so that ``promptbo`` resolves to this checkout.
REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Replica:
    """One server process, restarted on the port it first bound."""

    url: str
    folder: Path
    index: int
    port: int = 0
    #: More ``promptbo serve`` arguments (``--shared-storage`` for a SQLite file).
    extra: tuple[str, ...] = ()
    proc: subprocess.Popen | None = None
    log: IO[str] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 120.0) -> None:
        """Starts the server (port 0 the first time) and waits until it answers."""
        port_file = self.folder / f"replica{self.index}.port"
        port_file.unlink(missing_ok=True)
        if self.log is None:
            self.log = (self.folder / f"replica{self.index}.log").open("a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "promptbo.cli", "--log-level", "warning", "serve",
             "--storage", self.url, "--host", "127.0.0.1", "--port", str(self.port),
             "--port-file", str(port_file), "--prefetch", "0", "--suggest-workers", "1",
             *self.extra],
            stdout=self.log, stderr=self.log, cwd=REPO_ROOT,
        )
        deadline = time.monotonic() + timeout
        while not port_file.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"replica {self.index} did not start; see {self.log.name}")
            time.sleep(0.05)
        self.port = int(port_file.read_text())
        with promptbo.Client(self.address) as c:
            c.wait_ready(max(1.0, deadline - time.monotonic()))

    def kill(self) -> None:
        """``kill -9``: no cleanup, connections dropped mid-call."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()
        if self.log is not None:
            self.log.close()
            self.log = None


@dataclass
class Ledger:
    """What the workers saw, shared by their threads."""

    lease_seconds: float
    lock: threading.Lock = field(default_factory=threading.Lock)
    acked: dict[tuple[str, int], float] = field(default_factory=dict)
    #: (study, trial id) -> (worker, monotonic time its ask was sent)
    holder: dict[tuple[str, int], tuple[str, float]] = field(default_factory=dict)
    handouts: int = 0
    double_handouts: list[str] = field(default_factory=list)
    conflicting_acks: list[str] = field(default_factory=list)
    failovers: int = 0
    lost_leases: int = 0
    errors: list[str] = field(default_factory=list)

    def handed(self, key: tuple[str, int], worker: str, sent: float, received: float) -> None:
        with self.lock:
            self.handouts += 1
            before = self.holder.get(key)
            # The first lease ran at least until its ask was sent + lease_seconds.
            if (before is not None and before[0] != worker and key not in self.acked
                    and received < before[1] + self.lease_seconds - 0.05):
                self.double_handouts.append(f"{key} to {before[0]} and {worker}")
            self.holder[key] = (worker, sent)

    def told(self, key: tuple[str, int], value: float) -> None:
        with self.lock:
            if self.acked.get(key, value) != value:
                self.conflicting_acks.append(str(key))
            self.acked[key] = value
            self.holder.pop(key, None)


def _worker(name: str, addresses: list[str], studies: list[str], ledger: Ledger,
            stop: threading.Event, start: int) -> None:
    clients = [promptbo.Client(a, client_id=name, timeout=5) for a in addresses]
    current = start % len(clients)
    turn = 0

    def failover() -> None:
        nonlocal current
        current = (current + 1) % len(clients)
        with ledger.lock:
            ledger.failovers += 1
        time.sleep(0.05)

    handles: dict[tuple[int, str], Any] = {}

    def study(which: str):
        key = (current, which)
        if key not in handles:
            handles[key] = clients[current].get_study(which)
        return handles[key]

    done: set[str] = set()
    try:
        while not stop.is_set() and len(done) < len(studies):
            which = studies[turn % len(studies)]
            turn += 1
            if which in done:
                continue
            try:
                sent = time.monotonic()
                trials = study(which).ask(1)
                received = time.monotonic()
            except (promptbo.UnavailableError, promptbo.ResourceExhaustedError) as err:
                if isinstance(err, promptbo.UnavailableError):
                    failover()
                else:
                    time.sleep(0.05)
                continue
            if not trials:
                if study(which).done:
                    done.add(which)
                else:
                    time.sleep(0.05)
                continue
            for t in trials:
                ledger.handed((which, t.id), name, sent, received)
                value = -float(np.sum(np.asarray(t.prompt.vector) ** 2))
                time.sleep(0.01)  # the evaluation
                while not stop.is_set():
                    try:
                        out = study(which).tell(t, value)
                    except promptbo.FailedPreconditionError:
                        with ledger.lock:
                            ledger.lost_leases += 1  # held by another worker since
                        break
                    except promptbo.UnavailableError:
                        failover()
                        continue
                    ledger.told((which, out.id), out.value)
                    break
    except Exception as err:  # reported in the figures
        with ledger.lock:
            ledger.errors.append(f"{name}: {type(err).__name__}: {err}")
    finally:
        for c in clients:
            c.close()


def run_drill(
    url: str, *, replicas: int = 3, workers: int = 6, studies: int = 2, budget: int = 60,
    kills: int = 3, kill_every: float = 2.0, lease_seconds: float = 30.0,
    seconds: float = 600.0, folder: Path | None = None, wind_down: int = 0,
) -> dict[str, Any]:
    """Runs the drill on the (empty or not) PostgreSQL database ``url``; returns figures.

    ``budget`` trials per study; ``kills`` replicas are killed, one at a time, every
    ``kill_every`` seconds (each restarted before the next kill); the drill stops when
    every study is complete or after ``seconds``. With ``wind_down`` > 0, once the kills
    are done each study's budget is lowered (UpdateStudy) to what it holds plus
    ``wind_down``, so a generous ``budget`` outlasts the kills and the load still ends
    soon after them with every study complete."""
    work = Path(folder or tempfile.mkdtemp(prefix="promptbo-replicas-"))
    servers = [Replica(url, work, i) for i in range(replicas)]
    tag = uuid.uuid4().hex[:8]  # studies of their own in a database that has others
    names = [f"drill-{tag}-{i}" for i in range(studies)]
    ledger = Ledger(lease_seconds)
    stop = threading.Event()
    t0 = time.monotonic()
    killed = 0
    try:
        for s in servers:
            s.start()
        start_s = time.monotonic() - t0
        with promptbo.Client(servers[0].address) as c:
            for name in names:
                c.create_study(name, promptbo.SoftPromptSpace(2, 2), strategy="random",
                               max_trials=budget, lease_seconds=lease_seconds)
        addresses = [s.address for s in servers]
        threads = [
            threading.Thread(target=_worker, args=(f"w{k}", addresses, names, ledger, stop, k))
            for k in range(workers)
        ]
        t1 = time.monotonic()
        for th in threads:
            th.start()
        deadline = t1 + seconds
        restart_s: list[float] = []
        while killed < kills and time.monotonic() < deadline:
            time.sleep(kill_every)
            if not any(th.is_alive() for th in threads):
                break
            victim = servers[killed % replicas]
            victim.kill()
            killed += 1
            r0 = time.monotonic()
            victim.start()
            restart_s.append(time.monotonic() - r0)
        if wind_down and killed == kills:
            _wind_down(addresses, names, wind_down)
        for th in threads:
            th.join(timeout=max(1.0, deadline - time.monotonic()))
        stop.set()
        for th in threads:
            th.join(timeout=30)
        load_s = time.monotonic() - t1
    finally:
        stop.set()
        for s in servers:
            s.stop()
    return _verify(url, names, budget, ledger, killed, load_s, start_s, restart_s)


def _wind_down(addresses: list[str], names: list[str], extra: int) -> None:
    """Lowers each study's budget to its completed plus active trials plus ``extra``
    (retried while workers race the change)."""
    for name in names:
        for attempt in range(50):
            address = addresses[attempt % len(addresses)]
            try:
                with promptbo.Client(address, timeout=10) as c:
                    info = c.get_study(name).info
                    held = info.completed_count + info.active_count
                    if info.spec.max_trials and held + extra >= info.spec.max_trials:
                        break
                    c.update_study(name, max_trials=held + extra)
                break
            except (promptbo.InvalidArgumentError, promptbo.UnavailableError):
                time.sleep(0.1)


def _verify(url: str, names: list[str], budget: int, ledger: Ledger, killed: int,
            load_s: float, start_s: float, restart_s: list[float]) -> dict[str, Any]:
    from promptbo.server.domain import StudyState, TrialState
    from promptbo.server.storage import open_storage

    store = open_storage(url, read_only=True)
    try:
        stored: dict[tuple[str, int], float | None] = {}
        over_budget = []
        completed = 0
        states = []
        for name in names:
            counts = store.count_trials(name)
            study = store.get_study(name)
            states.append(study.state.value)
            held = counts[TrialState.COMPLETED] + counts[TrialState.ACTIVE]
            if held > budget or (study.spec.max_trials and held > study.spec.max_trials):
                over_budget.append(name)
            completed += counts[TrialState.COMPLETED]
            for t in store.list_trials(name, TrialState.COMPLETED):
                stored[(name, t.id)] = t.value
        problems = store.check_integrity()
    finally:
        store.close()
    lost = [k for k, v in ledger.acked.items() if stored.get(k) != v]
    check = subprocess.run(
        [sys.executable, "-m", "promptbo.cli", "admin", "check", "--storage", url],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=120,
    )
    return {
        "replicas_killed": killed,
        "results_acknowledged": len(ledger.acked),
        "results_stored": completed,
        "results_lost": len(lost),
        "acknowledged_twice_differently": len(ledger.conflicting_acks),
        "handouts": ledger.handouts,
        "double_handouts": len(ledger.double_handouts),
        "double_handout_examples": ledger.double_handouts[:5],
        "failovers": ledger.failovers,
        "lost_leases": ledger.lost_leases,
        "over_budget": over_budget,
        "studies_complete": all(s == StudyState.COMPLETED.value for s in states),
        "integrity_problems": problems,
        "admin_check_rc": check.returncode,
        "worker_errors": ledger.errors[:5],
        "load_seconds": round(load_s, 1),
        "first_start_seconds": round(start_s, 1),
        "restart_seconds_mean": round(sum(restart_s) / len(restart_s), 1) if restart_s else 0,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--storage", required=True, help="postgresql://USER@HOST/DB")
    p.add_argument("--replicas", type=int, default=3)
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--studies", type=int, default=2)
    p.add_argument("--budget", type=int, default=200, help="trials per study")
    p.add_argument("--kills", type=int, default=10)
    p.add_argument("--kill-every", type=float, default=2.0)
    p.add_argument("--lease-seconds", type=float, default=30.0)
    p.add_argument("--seconds", type=float, default=900.0)
    p.add_argument("--wind-down", type=int, default=20,
                   help="after the kills, lower each budget to what is held plus this")
    p.add_argument("--out", default="")
    args = p.parse_args(argv)
    figures = run_drill(
        args.storage, replicas=args.replicas, workers=args.workers, studies=args.studies,
        budget=args.budget, kills=args.kills, kill_every=args.kill_every,
        lease_seconds=args.lease_seconds, seconds=args.seconds, wind_down=args.wind_down,
    )
    text = json.dumps(figures, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    ok = (figures["results_lost"] == 0 and figures["studies_complete"]
          and figures["double_handouts"] == 0 and not figures["over_budget"]
          and figures["admin_check_rc"] == 0)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
