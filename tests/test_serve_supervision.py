"""`tokfilter serve` heals itself and tells the truth about readiness, on the real server under a
small load from FilterClient: the token model's stub and then tritonserver are SIGKILLed; requests
sent during the faults succeed after retry, /readyz is never ready while inference fails, SIGTERM
stops everything within 10 s with no orphan, and too many failures end serve with exit code 1."""

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import tritonclient.grpc as grpcclient
from fastapi.testclient import TestClient

from tokfilter.clients.filter_client import FilterClient, key_headers
from tokfilter.server.gateway import create_app
from tokfilter.paths import ARTIFACTS
from tokfilter.server.model_repo import place_models
from tokfilter.server.serve import ServerEndpoints
from tokfilter.server.supervisor import probe_inputs, readiness_lies
from tokfilter.server.triton import SHM_PREFIX, STUB, free_port

pytestmark = pytest.mark.slow
API_KEY = "supervision-key"
DETECT_S = 1.0  # /readyz may lag a fault by the supervisor's watch period (0.2 s) and a health check
HEAL_S = 30.0
TEXTS = ["The patient was given insulin for type 2 diabetes; the dose was raised after a week. " * 4,
         "Mitochondria make ATP in the cell.", "Aspirin thins the blood."]


@dataclass
class Served:
    """A `tokfilter serve` process."""

    proc: subprocess.Popen
    repo: Path
    endpoints: ServerEndpoints
    output: Path

    @property
    def status_path(self) -> Path:
        return ARTIFACTS / "logs" / f"status-{self.endpoints.grpc_port}.json"


def our_processes(repo: Path) -> dict[int, list[str]]:
    """pid -> argv of every tritonserver and stub process serving ``repo``."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
            except OSError:
                continue
            if str(repo) in " ".join(argv) and Path(argv[0]).name in (STUB, "tritonserver"):
                found[int(entry.name)] = argv
    return found


def start_serve(repo: Path, tmp_path: Path, *flags: str) -> Served:
    ports = {"grpc_port": free_port(), "http_port": free_port(), "metrics_port": free_port(), "gateway_port": free_port()}
    cmd = [sys.executable, "-m", "tokfilter.cli", "serve", "--repo", str(repo), "--ort-threads", "1", "--api-key", API_KEY, *flags]
    cmd += [f"--{k.replace('_', '-')}={v}" for k, v in ports.items()]
    output = tmp_path / "serve.log"
    with open(output, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while "models ready" not in output.read_text():
        assert proc.poll() is None and time.monotonic() < deadline, output.read_text()
        time.sleep(0.2)
    return Served(proc, repo, ServerEndpoints("127.0.0.1", **ports), output)


def tiny_repo(tiny_models_dir: Path, path: Path) -> Path:
    place_models(tiny_models_dir, path)
    return path.resolve()


@pytest.fixture(scope="module")
def served(tiny_models_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("supervised")
    served = start_serve(tiny_repo(tiny_models_dir, tmp / "repo"), tmp, "--health-interval", "1")
    yield served
    if served.proc.poll() is None:
        served.proc.kill()
        served.proc.wait()


def probe(url: str) -> bool:
    """One token-model inference straight to Triton, not retried."""
    client = grpcclient.InferenceServerClient(url.removeprefix("grpc://"))
    try:
        client.infer("token_classifier", probe_inputs("token_classifier"), headers=key_headers(API_KEY), client_timeout=5)
        return True
    except Exception:
        return False
    finally:
        client.close()


def in_process_gateway(served: Served, tiny_models_dir: Path, retry_deadline_s: float = 60.0) -> tuple:
    """The gateway app in this process on the real server, and the FilterClients it makes."""
    clients = []

    def make_client() -> FilterClient:
        clients.append(FilterClient(served.endpoints.grpc_url, tiny_models_dir / "token_classifier", api_key=API_KEY, retry_deadline_s=retry_deadline_s))
        return clients[-1]

    return create_app(make_client, served.status_path, api_key=API_KEY), clients


def test_a_gateway_bug_is_a_500_with_a_logged_request_id(served, tiny_models_dir, caplog):
    app, clients = in_process_gateway(served, tiny_models_dir)
    request = {"json": {"documents": [{"id": "a", "text": "insulin"}]}, "headers": {"X-API-Key": API_KEY}}
    with TestClient(app, raise_server_exceptions=False) as http:
        ok = http.post("/v1/filter", **request)
        assert ok.status_code == 200 and len(ok.headers["X-Request-ID"]) == 32
        clients[0].pipeline = None  # a bug of the gateway's own: its client lost its pipeline
        bug = http.post("/v1/filter", **request)
    assert bug.status_code == 500
    request_id = bug.json()["request_id"]
    assert bug.headers["X-Request-ID"] == request_id and "internal error" in bug.json()["error"]
    assert any(request_id in r.getMessage() and r.exc_info for r in caplog.records)  # logged with its traceback


def test_faults_heal_under_load_and_readyz_never_says_ready_while_inference_fails(served, tiny_models_dir):
    stop = threading.Event()
    calls, readiness, probes = [], [], []  # (sent, received, ok)

    def load(client: FilterClient):
        while not stop.is_set():
            sent = time.monotonic()
            try:
                client.filter(TEXTS)
                calls.append((sent, time.monotonic(), None))
            except Exception as err:  # recorded: the assertion below names it
                calls.append((sent, time.monotonic(), err))

    def poll_readyz():
        with httpx.Client(timeout=5) as http:
            while not stop.is_set():
                sent = time.monotonic()
                try:
                    ok = http.get(f"{served.endpoints.gateway_url}/readyz").status_code == 200
                except httpx.HTTPError:
                    ok = False
                readiness.append((sent, time.monotonic(), ok))
                time.sleep(0.05)

    def poll_inference():
        while not stop.is_set():
            sent = time.monotonic()
            ok = probe(served.endpoints.grpc_url)
            probes.append((sent, time.monotonic(), ok))
            time.sleep(0.05)

    client = FilterClient(served.endpoints.grpc_url, tiny_models_dir / "token_classifier", api_key=API_KEY, max_in_flight=2, retry_deadline_s=60)
    short = TestClient(in_process_gateway(served, tiny_models_dir, retry_deadline_s=1.0)[0])
    short.__enter__()
    threads = [threading.Thread(target=f, args=a) for f, a in ((load, (client,)), (poll_readyz, ()), (poll_inference, ()))]
    for t in threads:
        t.start()
    faults = {}
    try:
        time.sleep(1)
        for fault in ("stub", "tritonserver"):
            processes = our_processes(served.repo)
            if fault == "stub":
                pid = next(p for p, argv in processes.items() if argv[1] == str(served.repo / "token_classifier" / "1" / "model.py"))
            else:
                pid = next(p for p, argv in processes.items() if Path(argv[0]).name == "tritonserver")
            killed = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            if fault == "tritonserver":  # the gateway answers 503 once its client's retry deadline has passed
                answer = short.post("/v1/filter", json={"documents": [{"id": "a", "text": "insulin"}]}, headers={"X-API-Key": API_KEY})
                assert answer.status_code == 503 and "retry deadline" in answer.json()["error"], answer.text
            while not any(s > killed and not ok for s, _, ok in probes):
                assert time.monotonic() - killed < HEAL_S, f"no inference failed after the {fault} kill"
                time.sleep(0.05)
            first_failure = next(s for s, _, ok in probes if s > killed and not ok)
            while not any(s > first_failure and ok for s, _, ok in probes) or not readiness[-1][2]:
                assert time.monotonic() - killed < HEAL_S, f"not healed {HEAL_S:.0f} s after the {fault} kill"
                time.sleep(0.05)
            faults[fault] = (killed, next(r for s, r, ok in probes if s > first_failure and ok))
            time.sleep(1)
    finally:
        stop.set()
        for t in threads:
            t.join()
        client.close()
        short.__exit__(None, None, None)

    for fault, (killed, healed) in faults.items():
        assert healed - killed < HEAL_S
        during = [c for c in calls if c[0] < healed and c[1] > killed]
        assert during, f"no FilterClient request was in flight during the {fault} fault"
        assert any(not ok for s, _, ok in readiness if killed < s < healed), f"/readyz stayed ready through the {fault} fault"
    assert [err for _, _, err in calls if err] == [], "FilterClient requests failed"
    assert readiness_lies(probes, readiness, DETECT_S) == [], "/readyz said ready while inference was failing"
    metrics = httpx.get(f"{served.endpoints.gateway_url}/metrics").text
    assert 'tokfilter_supervisor_events_total{event="model_reloaded"}' in metrics
    assert 'tokfilter_supervisor_events_total{event="triton_restarted"}' in metrics


def test_a_filter_job_rides_out_a_triton_restart_without_resume(served, tiny_corpus_dir, tiny_models_dir, tmp_path):
    from tokfilter.clients.engines.local import FilterSettings, run_local
    from tokfilter.clients.readers import iter_records
    from tokfilter.clients.shards.writer import open_shards
    from tokfilter.training.pretrain.tokenizer import corpus_texts, train_target_tokenizer

    corpus = tmp_path / "corpus.jsonl"  # 48 documents: 12 buffers
    corpus.write_text("".join((tiny_corpus_dir / "train.jsonl").read_text().splitlines(keepends=True)[:48]))
    inputs = [str(corpus)]
    target = train_target_tokenizer(corpus_texts(inputs), tmp_path / "tokenizer.json", vocab_size=400)
    settings = FilterSettings(token_model=str(tiny_models_dir / "token_classifier"), doc_model=str(tiny_models_dir / "doc_classifier"),
                              target_tokenizer=str(target), buffer_docs=4, shard_tokens=2000, max_in_flight=2,
                              server=served.endpoints.grpc_url, api_key=API_KEY, retry_deadline_s=60)
    out, result = tmp_path / "shards", {}

    def filter_job():
        try:
            result["manifest"] = run_local(inputs, out, settings, show_progress=False)
        except Exception as err:  # reported by the assertion below
            result["error"] = err

    job = threading.Thread(target=filter_job)
    job.start()
    deadline = time.monotonic() + 120
    while not list(out.glob("shard-*.docs.json")):
        assert job.is_alive() and time.monotonic() < deadline, "the job wrote no shard"
        time.sleep(0.1)
    assert job.is_alive(), "the job ended before the fault"
    os.kill(next(p for p, argv in our_processes(served.repo).items() if Path(argv[0]).name == "tritonserver"), signal.SIGKILL)
    job.join(180)
    assert "error" not in result, repr(result.get("error"))
    assert result["manifest"]["complete"]
    _, shards = open_shards(out)
    written = [d for s in shards for d in s.doc_ids]
    expected = [r.doc_id for r in iter_records(inputs[0], 0)]
    assert sorted(written) == sorted(expected) and len(written) == len(set(written))  # none lost, none twice


def test_sigterm_stops_everything_within_10_s_without_orphans(served):
    processes = our_processes(served.repo)
    assert any(Path(argv[0]).name == STUB for argv in processes.values())
    regions = {argv[2] for argv in processes.values() if len(argv) > 2 and argv[2].startswith(SHM_PREFIX)}
    start = time.monotonic()
    served.proc.send_signal(signal.SIGTERM)
    assert served.proc.wait(10) == 0, served.output.read_text()[-3000:]
    assert time.monotonic() - start < 10
    assert our_processes(served.repo) == {}
    assert not [r for r in regions if Path("/dev/shm", r).exists()]
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{served.endpoints.gateway_url}/healthz", timeout=2)


def test_too_many_failures_stop_serve_with_exit_code_1(tiny_models_dir, tmp_path):
    served = start_serve(tiny_repo(tiny_models_dir, tmp_path / "repo"), tmp_path, "--max-failures", "1")
    try:
        (served.repo / "token_classifier" / "1" / "model.onnx").unlink()  # so that no restart can load the model
        os.kill(next(p for p, argv in our_processes(served.repo).items() if Path(argv[0]).name == "tritonserver"), signal.SIGKILL)
        assert served.proc.wait(60) == 1
    finally:
        if served.proc.poll() is None:
            served.proc.kill()
    output = served.output.read_text()
    assert "error: giving up: 2 recoveries" in output and "restart_failed" in output, output[-3000:]
    assert our_processes(served.repo) == {}


def test_a_dead_gateway_ends_serve_with_exit_code_1(tiny_models_dir, tmp_path):
    served = start_serve(tiny_repo(tiny_models_dir, tmp_path / "repo"), tmp_path)
    gateway = [int(e.name) for e in Path("/proc").iterdir() if e.name.isdigit() and f"--port\0{served.endpoints.gateway_port}\0".encode()
               in (e / "cmdline").read_bytes()]
    try:
        os.kill(gateway[0], signal.SIGKILL)
        assert served.proc.wait(30) == 1
    finally:
        if served.proc.poll() is None:
            served.proc.kill()
    assert "error: giving up: the gateway exited with code -9" in served.output.read_text()
    assert our_processes(served.repo) == {}
