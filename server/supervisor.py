"""Supervision of the Triton server behind ``tokfilter serve``: notice what died, heal it, and say
honestly whether the service is ready.

A health round (every ``interval_s``, and at once when a watched process dies) checks that
tritonserver lives and that every served model answers a tiny inference. Beside the rounds, a
watcher thread looks at tritonserver and its stub processes every 0.2 s: when one exits, the status
says not ready at once (a round can take seconds under load) and a round starts. What a round finds:

- a model fails its inference (its python-backend stub died: "Stub process ... is not healthy"):
  the model is unloaded and loaded again through Triton's model-control API (with the admin secret);
  a probe that only times out counts towards a reload (after ``TIMEOUTS_BEFORE_RELOAD`` in a row)
  only while the model's stubs use no CPU: a stub that computes is busy behind a long queue (one
  execution of a full dynamic batch takes minutes on a small CPU), not hung, and reloading it would
  drop the work in flight;
- tritonserver is gone or not live: the stubs it left (reparented to init, still in its session)
  are killed, their shared-memory regions removed, and Triton is started again with every model;
  a restart that fails is retried with doubling pauses;
- more than ``max_failures`` recoveries within ``failure_window_s``, or the gateway (a watched
  companion process) exited: everything is stopped and ``failed`` says why (``tokfilter serve``
  exits non-zero, so that an orchestrator restarts it).

Each round's result and the event counts go to a JSON status file, written atomically, which the
gateway (another process) reads for ``/readyz`` and ``/metrics``: ready only while every model
answered the latest round.
"""

from __future__ import annotations

import bisect
import json
import logging
import os
import signal
import subprocess
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tokfilter.clients.filter_client import key_headers
from tokfilter.errors import TokfilterError
from tokfilter.server.model_repo import SERVED_MODELS
from tokfilter.server.triton import TritonProcess, cpu_ticks, process_alive, stop_process_group

log = logging.getLogger("tokfilter.serve")
WATCH_S = 0.2  # how often the processes are looked at between rounds
TIMEOUTS_BEFORE_RELOAD = 3  # a model that only times out is busy, not necessarily dead
STATUS_STALE_S = 30.0  # a status older than this is not believed (the supervisor itself is stuck)


@dataclass(frozen=True)
class SupervisorSettings:
    interval_s: float = 2.0
    probe_timeout_s: float = 10.0
    max_failures: int = 5
    failure_window_s: float = 300.0
    max_backoff_s: float = 16.0


def probe_inputs(model: str):
    """The smallest request ``model`` answers: one 3-token window, or one short text."""
    import tritonclient.grpc as grpcclient

    if model == "filter_text":
        text = grpcclient.InferInput("text", [1, 1], "BYTES")
        text.set_data_from_numpy(np.array([[b"health check"]], dtype=np.object_))
        return [text]
    ids = np.array([[0, 5, 7]], dtype=np.int64)
    inputs = [grpcclient.InferInput("input_ids", [1, 3], "INT64"), grpcclient.InferInput("attention_mask", [1, 3], "INT64")]
    inputs[0].set_data_from_numpy(ids)
    inputs[1].set_data_from_numpy(np.ones_like(ids))
    return inputs


def read_status(path: Path) -> dict | None:
    """The supervisor's latest status, or None when there is none yet."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def status_is_ready(status: dict | None, now: float | None = None) -> tuple[bool, str]:
    """Whether a status says ready (and is fresh), with the reason when it does not."""
    if status is None:
        return False, "no health check has run yet"
    if status.get("failed"):
        return False, status["failed"]
    age = (time.time() if now is None else now) - status["checked_at"]
    if age > STATUS_STALE_S:
        return False, f"the last health check is {age:.0f} s old"
    if not status["ready"]:
        failing = {m: r["error"] for m, r in status["models"].items() if r["error"]}
        return False, status.get("reason") or f"failing: {failing}"
    return True, "ready"


def readiness_lies(probes: list[tuple], readiness: list[tuple], grace_s: float) -> list[float]:
    """When /readyz said ready while inference was failing: the criterion tests and benchmarks apply.

    ``probes`` and ``readiness`` are (sent, received, ok) rows of direct inferences and /readyz
    answers, in order. A "ready" sent at t is a lie when the inferences sent last before t and first
    after t both failed, in a run of failures that began at least ``grace_s`` before t (a fault can
    precede its detection by the watch period). A probe thread that falls silent proves nothing."""
    sent_times, failing_since, since = [p[0] for p in probes], [], None
    for sent, _, ok in probes:  # for each probe, when its run of failures began (None: it answered)
        since = None if ok else (sent if since is None else since)
        failing_since.append(since)
    lies = []
    for sent, _, ok in readiness:
        i = bisect.bisect_right(sent_times, sent)  # probes[i - 1]: the last sent before, probes[i]: the first after
        if ok and 0 < i < len(probes) and not probes[i][2] and failing_since[i - 1] is not None \
                and sent - failing_since[i - 1] >= grace_s:
            lies.append(sent)
    return lies


class Supervisor:
    """Starts Triton with every model through ``launch()``, then keeps it healthy: one thread runs
    the rounds and the recoveries, another watches the processes.

    ``launch()`` returns a live TritonProcess with every model loaded (raising TokfilterError
    otherwise); ``load(triton, model)`` loads one model again."""

    def __init__(self, launch: Callable[[], TritonProcess], load: Callable[[TritonProcess, str], None], status_path: Path,
                 api_key: str | None = None, settings: SupervisorSettings = SupervisorSettings()):
        self.launch, self.load, self.status_path, self.settings = launch, load, Path(status_path), settings
        self.headers = key_headers(api_key)
        self.events: Counter = Counter()
        self.failed: str | None = None
        self._last_event = ""
        self.triton: TritonProcess | None = None
        self._recoveries: deque[float] = deque()
        self._timeouts: Counter = Counter()
        self._stub_ticks: dict[str, dict[int, int | None]] = {}  # model -> stub pid -> CPU ticks at the last timed-out probe
        self._stubs: dict[int, str] = {}  # pid -> model of the stubs the watcher looks at
        self._died_at = 0.0  # when the watcher last saw a process exit
        self._stop = threading.Event()
        self._wake = threading.Event()  # the watcher asks for a round
        self._lock = threading.Lock()  # self.triton against stop()
        self._status_lock = threading.Lock()  # events, the status file and the watcher's view
        self._threads: list[threading.Thread] = []
        self._companions: list[tuple[subprocess.Popen, str]] = []

    # -- life cycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Launch Triton, run a first round (every model must answer), start watching."""
        self.triton = self.launch()
        results = self._probe_models()
        failing = {m: e for m, e in results.items() if e}
        if failing:
            self.triton.stop()
            raise TokfilterError(f"models loaded but failing their first inference: {failing}")
        self._publish(results)
        self._stubs = self.triton.stubs()
        # the rounds' thread starts Triton again when needed: it must live as long as the server
        # (die_with_parent ties tritonserver to the thread that started it)
        self._threads = [threading.Thread(target=self._run, name="tokfilter-supervisor", daemon=True),
                         threading.Thread(target=self._watch, name="tokfilter-watcher", daemon=True)]
        for thread in self._threads:
            thread.start()

    def watch(self, proc: subprocess.Popen, name: str) -> None:
        """Watch ``proc`` too (the gateway): if it exits, give up; stop it with the rest."""
        self._companions.append((proc, name))

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        for proc, _ in self._companions:  # SIGTERM first, so that they stop beside Triton
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        with self._lock:
            if self.triton is not None:
                self.triton.stop()
        for proc, _ in self._companions:
            stop_process_group(proc, timeout=3)
        for thread in self._threads:
            thread.join(timeout=10)

    # -- the loop -------------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.settings.interval_s)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                if not self._round():
                    self._wake.set()  # not well yet: the next round at once
            except Exception as err:  # a bug here must not end supervision: logged, and the next round in interval_s
                log.exception("supervisor: health round failed")
                self._event("round_failed", repr(err))
            if self.failed:
                return

    def _watch(self) -> None:
        """Every 0.2 s: has tritonserver or one of its stubs exited? Then not ready, and a round."""
        reported = None
        while not self._stop.wait(WATCH_S) and not self.failed:
            exited = [f"the {name} exited with code {proc.returncode}" for proc, name in self._companions if proc.poll() is not None]
            if exited and not self._stop.is_set():
                self._give_up(exited[0])
                return
            triton = self.triton
            if triton.proc.poll() is not None:
                fault = None if reported == triton.proc.pid else f"tritonserver exited with code {triton.proc.returncode}"
                reported = triton.proc.pid
                with self._status_lock:
                    self._stubs = {}  # the restart kills them
            else:
                with self._status_lock:
                    gone = sorted(pid for pid in self._stubs if not process_alive(pid))
                    for pid in gone:
                        del self._stubs[pid]
                fault = f"python-backend stub process {gone} exited" if gone else None
            if fault and not self._stop.is_set():
                with self._status_lock:
                    self._died_at = time.monotonic()
                self._event("process_died", fault)
                self._publish({}, reason=fault)
                self._wake.set()

    def _round(self) -> bool:
        """Check and heal; returns whether all was well (False: run the next round at once)."""
        started = time.monotonic()
        triton = self.triton
        if triton.proc.poll() is not None or not self._live(triton):
            self._publish({}, reason="tritonserver is not live")
            self._restart()
            return False
        with self._status_lock:  # new stubs join; one that died unseen stays for the watcher to report
            self._stubs.update(triton.stubs())
        results = self._probe_models()
        if self._stop.is_set():  # stopping: the failures are ours
            return True
        if not self._publish(results, checked_since=started):  # a process died meanwhile: the results are stale
            return False
        failing = {m: e for m, e in results.items() if e}
        if failing and (triton.proc.poll() is not None or not self._live(triton)):  # Triton went during the round
            return False  # the next round restarts it
        to_reload = []
        for model, error in failing.items():
            if "deadline" in error.lower():
                if self.stubs_computing(model):
                    self._event("model_busy", f"{model}: probe timed out while its stubs compute")
                    self._timeouts[model] = 0
                    continue
                self._event("model_failed", f"{model}: {error}")
                self._timeouts[model] += 1
                if self._timeouts[model] < TIMEOUTS_BEFORE_RELOAD:
                    continue
            else:
                self._event("model_failed", f"{model}: {error}")
            to_reload.append(model)
        if to_reload and not self._count_recovery():  # one recovery per round, however many models it reloads
            return False
        for model in to_reload:
            self._reload(model)
        return not failing

    # -- checks ---------------------------------------------------------------------------------

    def _grpc(self, triton: TritonProcess):
        import tritonclient.grpc as grpcclient

        return grpcclient.InferenceServerClient(triton.grpc_url)

    def _live(self, triton: TritonProcess) -> bool:
        client = self._grpc(triton)
        try:
            return client.is_server_live(client_timeout=self.settings.probe_timeout_s)
        except Exception:  # any failure to answer is "not live"
            return False
        finally:
            client.close()

    def stubs_computing(self, model: str) -> bool:
        """Whether the stubs of ``model`` used CPU since this was last asked (the first ask: since
        they started; a stub that is gone does not compute)."""
        with self._status_lock:
            pids = [pid for pid, m in self._stubs.items() if m == model]
        ticks = {pid: cpu_ticks(pid) for pid in pids}
        before, self._stub_ticks[model] = self._stub_ticks.get(model, {}), ticks
        return any(t is not None and t > before.get(pid, 0) for pid, t in ticks.items())

    def _probe_models(self) -> dict[str, str | None]:
        """Each model's error on a tiny inference, None where it answered."""
        client = self._grpc(self.triton)
        results = {}
        try:
            for model in SERVED_MODELS:
                try:
                    client.infer(model, probe_inputs(model), headers=self.headers, client_timeout=self.settings.probe_timeout_s)
                    results[model] = None
                    self._timeouts[model] = 0
                except Exception as err:  # the probe's whole point: any failure means not ready
                    results[model] = str(err) or type(err).__name__
        finally:
            client.close()
        return results

    # -- recovery -------------------------------------------------------------------------------

    def _count_recovery(self) -> bool:
        """Record a recovery; past the budget, stop everything and return False."""
        now = time.monotonic()
        self._recoveries.append(now)
        while self._recoveries and now - self._recoveries[0] > self.settings.failure_window_s:
            self._recoveries.popleft()
        if len(self._recoveries) <= self.settings.max_failures:
            return True
        self._give_up(f"{len(self._recoveries)} recoveries within {self.settings.failure_window_s:g} s "
                      f"(--max-failures {self.settings.max_failures}); the last problem: {self._last_event}")
        return False

    def _give_up(self, reason: str) -> None:
        """Stop Triton and say why: ``tokfilter serve`` exits 1 with it."""
        self.failed = f"giving up: {reason}"
        self._event("gave_up", self.failed)
        with self._lock:
            self.triton.stop()
        self._publish({}, reason=self.failed)

    def _reload(self, model: str) -> None:
        start = time.monotonic()
        with self._status_lock:  # its stubs end now: not a fault for the watcher
            self._stubs = {pid: m for pid, m in self._stubs.items() if m != model}
        try:
            self.triton.unload(model)
            self.load(self.triton, model)
        except Exception as err:  # Triton refused or died meanwhile: the next round sees it
            self._event("reload_failed", f"{model}: {err}")
            return
        self._timeouts[model] = 0
        self._event("model_reloaded", f"{model} in {time.monotonic() - start:.1f} s")

    def _restart(self) -> None:
        """Stop what is left of Triton (its orphaned stubs too) and launch it again, with doubling
        pauses between failed attempts."""
        backoff = 1.0
        while not self._stop.is_set():
            if not self._count_recovery():
                return
            with self._status_lock:
                self._stubs = {}
            with self._lock:
                left = self.triton.stop()
            if left:
                self._event("orphans_killed", f"{left} processes of the dead tritonserver")
            start = time.monotonic()
            try:
                triton = self.launch()
            except Exception as err:  # whatever failed, the next attempt starts from scratch
                self._event("restart_failed", (str(err) or repr(err)).splitlines()[0])
                self._stop.wait(backoff)
                backoff = min(2 * backoff, self.settings.max_backoff_s)
                continue
            with self._lock:
                if self._stop.is_set():  # stopped meanwhile: this server must not outlive stop()
                    triton.stop()
                    return
                self.triton = triton
            self._event("triton_restarted", f"in {time.monotonic() - start:.1f} s")
            return

    # -- reporting ------------------------------------------------------------------------------

    def _event(self, name: str, detail: str) -> None:
        with self._status_lock:
            self.events[name] += 1
            self._last_event = f"{name}: {detail}"
        log.warning("supervisor: %s: %s", name, detail)

    def _publish(self, results: dict[str, str | None], reason: str | None = None, checked_since: float | None = None) -> bool:
        """Write the status file atomically (the gateway reads it at every probe); results checked
        since ``checked_since`` are not written when a process died meanwhile (returns False)."""
        models = {m: {"ready": results.get(m, "unchecked") is None, "error": results.get(m, reason or "unchecked")}
                  for m in SERVED_MODELS}
        status = {"ready": reason is None and all(r["ready"] for r in models.values()), "models": models, "reason": reason,
                  "checked_at": time.time(), "failed": self.failed, "triton_pid": self.triton.proc.pid if self.triton else None}
        with self._status_lock:
            if checked_since is not None and self._died_at > checked_since:
                return False
            status["events"] = dict(self.events)
            tmp = self.status_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(status))
            os.replace(tmp, self.status_path)
        return True
