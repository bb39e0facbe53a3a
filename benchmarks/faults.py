"""Faults under load: how fast `tokfilter serve` heals, and whether a client notices.

A supervised server (Triton + gateway, `running_server`) on the trained models takes a steady load
from FilterClient threads. Then, ``--repeats`` times each: the token model's python-backend stub is
SIGKILLed, and tritonserver itself is SIGKILLed. Per fault: the FilterClient requests in flight
during it (sent, failed after retries, slowest), the time to heal (kill -> inference answers again:
a direct, non-retried inference is tried every 50 ms), how long /readyz took to say 503, and
whether it ever said ready while inference was failing. The baseline is the same run's request
latency before any fault. Goals: every fault healed within 30 s (moonshot 10 s), 0 failed requests.

    python benchmarks/faults.py [--models-dir artifacts/models] [--repeats 3] [--clients 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx

from tokfilter import paths
from tokfilter.clients.filter_client import FilterClient, key_headers
from tokfilter.modelcard import load_model_card
from tokfilter.server.model_repo import place_models
from tokfilter.server.serve import running_server
from tokfilter.server.supervisor import SupervisorSettings, probe_inputs, readiness_lies
from tokfilter.server.triton import free_port

RESULTS_DIR = Path(__file__).resolve().parent / "results"
HEAL_GOAL_S, HEAL_MOONSHOT_S = 30.0, 10.0
DETECT_S = 1.0  # /readyz may lag a fault by the supervisor's watch period (0.2 s) and one round
API_KEY = "faults-benchmark-key"
TEXTS = [
    "Metformin lowers blood glucose in type 2 diabetes; the usual starting dose is 500 mg twice a day. " * 6,
    "Mitochondria make ATP through oxidative phosphorylation in the inner membrane.",
    "The committee met on Tuesday to discuss the budget for the coming year. " * 3,
    "Take 200 mg ibuprofen for the fever and see a doctor if it lasts more than three days.",
]


class Recorder:
    """Timestamps of everything the load, the readiness poller and the prober saw."""

    def __init__(self):
        self.requests, self.readiness, self.probes = [], [], []  # (sent, received, ok)
        self.stop = threading.Event()

    def load(self, client: FilterClient) -> None:
        while not self.stop.is_set():
            sent = time.monotonic()
            try:
                client.filter(TEXTS)
                ok = True
            except Exception:  # counted: a failed request is the result
                ok = False
            self.requests.append((sent, time.monotonic(), ok))

    def poll_readyz(self, url: str) -> None:
        with httpx.Client(timeout=5) as http:
            while not self.stop.is_set():
                sent = time.monotonic()
                try:
                    ok = http.get(f"{url}/readyz").status_code == 200
                except httpx.HTTPError:
                    ok = False
                self.readiness.append((sent, time.monotonic(), ok))
                time.sleep(0.05)

    def probe(self, address: str) -> None:
        """A direct inference of the token model every 50 ms, never retried."""
        import tritonclient.grpc as grpcclient

        while not self.stop.is_set():
            client = grpcclient.InferenceServerClient(address)
            sent = time.monotonic()
            try:
                client.infer("token_classifier", probe_inputs("token_classifier"), headers=key_headers(API_KEY), client_timeout=5)
                ok = True
            except Exception:  # any failure is what is measured
                ok = False
            finally:
                client.close()
            self.probes.append((sent, time.monotonic(), ok))
            time.sleep(0.05)

    def wait_for(self, rows: list, condition, timeout: float) -> tuple | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = next((r for r in list(rows) if condition(r)), None)
            if found:
                return found
            time.sleep(0.05)
        return None


def latency_ms(rows: list) -> dict:
    times = sorted((r - s) * 1000 for s, r, _ in rows)
    if not times:
        return {"p50": None, "max": None}
    return {"p50": round(statistics.median(times), 1), "max": round(times[-1], 1)}


def changes(rows: list, killed: float, end: float) -> list:
    """[sent, received, ok, how many rows in a row] from 1 s before the kill to 1 s after the heal,
    in seconds from the kill: where the answers changed."""
    out = []
    for sent, received, ok in rows:
        if killed - 1 < sent < end + 1:
            if out and out[-1][2] == ok:
                out[-1][3] += 1
            else:
                out.append([round(sent - killed, 3), round(received - killed, 3), ok, 1])
    return out


def run_fault(rec: Recorder, kind: str, ep) -> dict:
    """Kill one process, wait until inference works again (or ``HEAL_GOAL_S`` * 2), describe it."""
    triton = ep.supervisor.triton
    pid = triton.proc.pid if kind == "tritonserver" else next(p for p, m in triton.stubs().items() if m == "token_classifier")
    killed = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    failed = rec.wait_for(rec.probes, lambda r: r[0] > killed and not r[2], 2 * HEAL_GOAL_S)
    healed = failed and rec.wait_for(rec.probes, lambda r: r[0] > failed[0] and r[2], 2 * HEAL_GOAL_S)
    ready = healed and rec.wait_for(rec.readiness, lambda r: r[0] > healed[0] and r[2], 10)
    not_ready = rec.wait_for(rec.readiness, lambda r: r[0] > killed and not r[2], 1)
    end = healed[1] if healed else time.monotonic()
    time.sleep(2)  # let the requests of the fault finish
    during = [r for r in rec.requests if r[0] < end and r[1] > killed]
    lying = [t for t in readiness_lies(list(rec.probes), list(rec.readiness), DETECT_S) if killed < t < end]

    return {
        "fault": kind,
        "healed": bool(healed),
        "heal_s": round(healed[1] - killed, 2) if healed else None,
        "readyz_503_after_s": round(not_ready[1] - killed, 2) if not_ready else None,
        "readyz_ready_again_after_s": round(ready[1] - killed, 2) if ready else None,
        "readyz_ready_while_failing": len(lying),
        "requests_during": len(during),
        "requests_failed": sum(1 for r in during if not r[2]),
        "request_latency_ms_during": latency_ms(during),
        "timeline": {"inference": changes(rec.probes, killed, end), "readyz": changes(rec.readiness, killed, end)},
    }


def markdown(result: dict) -> str:
    s = result["summary"]
    lines = [
        "# Faults under load (`benchmarks/faults.py`)",
        "",
        f"{result['host']['cpus']} CPUs, load average {result['host']['load_average']}; models `{result['models_dir']}` "
        f"({result['model']['layers']}-layer encoder, model.onnx {result['model']['onnx_mb']} MB, served {result['precision']}); "
        f"{result['clients']} FilterClient threads sending {len(TEXTS)} documents per call; "
        f"health round every {result['health_interval_s']} s, give-up budget {result['max_failures']} recoveries (above "
        "this run's kills).",
        "",
        "Heal time: kill -> a direct, non-retried inference answers again. Requests: FilterClient calls in flight "
        "at any time of the fault (retried by the client within its deadline).",
        "",
        "| fault | heal (s) | /readyz 503 after (s) | ready again (s) | ready while failing | requests during | failed | slowest (ms) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for f in result["faults"]:
        lines.append(f"| {f['fault']} | {f['heal_s']} | {f['readyz_503_after_s']} | {f['readyz_ready_again_after_s']} | "
                     f"{f['readyz_ready_while_failing']} | {f['requests_during']} | {f['requests_failed']} | "
                     f"{f['request_latency_ms_during']['max']} |")
    lines += [
        "",
        f"Before any fault: {s['baseline_requests']} requests, latency p50 {s['baseline_latency_ms']['p50']} ms, "
        f"max {s['baseline_latency_ms']['max']} ms. Supervisor events: {json.dumps(result['events'])}.",
        "",
        f"- Slowest heal: stub kill {s['max_heal_s']['stub']} s, tritonserver kill {s['max_heal_s']['tritonserver']} s "
        f"(goal <= {HEAL_GOAL_S:g} s: {'met' if s['heal_goal_met'] else 'NOT met'}; moonshot <= {HEAL_MOONSHOT_S:g} s: "
        f"{'met' if s['heal_moonshot_met'] else 'not met'}).",
        f"- Failed FilterClient requests during the faults: {s['requests_failed']} of {s['requests_during']} "
        f"(goal 0: {'met' if s['requests_failed'] == 0 else 'NOT met'}).",
        f"- /readyz said ready while inference was failing (between two failed inferences, more than {DETECT_S:g} s into "
        f"the failures): {s['readyz_lies']} times.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", type=Path, default=paths.MODELS_DIR)
    parser.add_argument("--repeats", type=int, default=3, help="kills of each kind (default: %(default)s)")
    parser.add_argument("--clients", type=int, default=2, help="FilterClient threads (default: %(default)s)")
    parser.add_argument("--precision", choices=["fp32", "int8"], default="fp32")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads per model instance")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args()
    if not (args.models_dir / "token_classifier" / "tokfilter.json").is_file():
        print(f"no trained models in {args.models_dir} (run `tokfilter train-classifier` or `make demo`); skipping")
        return
    card = load_model_card(args.models_dir / "token_classifier")
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repo"
        place_models(args.models_dir, repo)
        ports = {"grpc_port": free_port(), "http_port": free_port(), "metrics_port": free_port(), "gateway_port": free_port()}
        # every kill is a recovery: a budget above the run's kills, so that serve does not give up (its default
        # gives up after 5 recoveries in 5 minutes; tests/test_serve_supervision.py checks that)
        supervision = SupervisorSettings(max_failures=2 * args.repeats + 1)
        with running_server(repo, api_key=API_KEY, ort_threads=args.threads, precision=args.precision, log_dir=Path(tmp) / "logs",
                            supervision=supervision, **ports) as ep:
            rec = Recorder()
            clients = [FilterClient(ep.grpc_url, args.models_dir / "token_classifier", api_key=API_KEY, max_in_flight=2)
                       for _ in range(args.clients)]
            threads = [threading.Thread(target=rec.load, args=(c,)) for c in clients]
            threads += [threading.Thread(target=rec.poll_readyz, args=(ep.gateway_url,)),
                        threading.Thread(target=rec.probe, args=(ep.grpc_url.removeprefix("grpc://"),))]
            for t in threads:
                t.start()
            try:
                time.sleep(10)
                baseline = list(rec.requests)
                faults = []
                for i in range(args.repeats):
                    for kind in ("stub", "tritonserver"):
                        faults.append(run_fault(rec, kind, ep))
                        f = faults[-1]
                        print(f"[{len(faults)}/{2 * args.repeats}] {kind} kill: healed in {f['heal_s']} s, /readyz 503 after "
                              f"{f['readyz_503_after_s']} s, {f['requests_failed']}/{f['requests_during']} requests failed", flush=True)
                        time.sleep(3)
            finally:
                rec.stop.set()
                for t in threads:
                    t.join()
                for c in clients:
                    c.close()
            events = dict(ep.supervisor.events)
    heal = {k: [f["heal_s"] for f in faults if f["fault"] == k] for k in ("stub", "tritonserver")}
    max_heal = {k: (max(v) if v and None not in v else None) for k, v in heal.items()}
    summary = {
        "baseline_requests": len(baseline),
        "baseline_latency_ms": latency_ms(baseline),
        "max_heal_s": max_heal,
        "heal_goal_met": all(v is not None and v <= HEAL_GOAL_S for v in max_heal.values()),
        "heal_moonshot_met": all(v is not None and v <= HEAL_MOONSHOT_S for v in max_heal.values()),
        "requests_during": sum(f["requests_during"] for f in faults),
        "requests_failed": sum(f["requests_failed"] for f in faults),
        "readyz_lies": sum(f["readyz_ready_while_failing"] for f in faults),
    }
    result = {
        "host": {"cpus": os.cpu_count(), "load_average": [round(x, 1) for x in os.getloadavg()], "platform": platform.platform()},
        "models_dir": str(args.models_dir), "precision": args.precision, "clients": args.clients,
        "model": {"layers": card.extra.get("train_config", {}).get("layers"),
                  "onnx_mb": round((args.models_dir / "token_classifier" / "model.onnx").stat().st_size / 2**20, 1)},
        "health_interval_s": supervision.interval_s, "max_failures": supervision.max_failures, "faults": faults, "events": events, "summary": summary,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "faults.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "faults.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
