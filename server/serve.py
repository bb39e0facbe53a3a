"""``tokfilter serve``: Triton on the model repository plus the REST gateway, started and stopped
together.

``running_server(...)`` is the one way to start them (the CLI, tests, benchmarks and the demo use
it): it checks ports and model files first, starts tritonserver in explicit model-control mode,
loads each model with the asked-for instance count and ONNX Runtime threads, waits until every
model answers an inference, starts the gateway and waits for its /readyz. A supervisor
(``tokfilter.server.supervisor``) then keeps Triton healthy: it reloads a model whose stub died,
restarts a Triton that died, and gives up (``tokfilter serve`` exits 1) after too many failures.
Both run in their own process groups and are stopped with them on exit, SIGINT or SIGTERM, so
nothing is left behind.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

from tokfilter.engines import ENGINES
from tokfilter.errors import TokfilterError
from tokfilter.paths import ARTIFACTS, MODEL_REPO_DIR
from tokfilter.server.model_repo import SERVED_MODELS, ConfigOverrides, missing_model_files, served_config
from tokfilter.server.supervisor import Supervisor, SupervisorSettings
from tokfilter.server.triton import TritonProcess, check_port_free, die_with_parent, start_triton, stop_process_group


@dataclass
class ServerEndpoints:
    host: str
    grpc_port: int
    http_port: int
    metrics_port: int
    gateway_port: int | None
    supervisor: Supervisor | None = None

    @property
    def grpc_url(self) -> str:
        return f"grpc://{self.host}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"

    @property
    def gateway_url(self) -> str | None:
        return f"http://{self.host}:{self.gateway_port}" if self.gateway_port else None


def load_models(triton: TritonProcess, repo: Path, overrides: ConfigOverrides, models: tuple[str, ...] = SERVED_MODELS) -> None:
    """Load ``models`` together (each stub's start-up is mostly waiting on imports)."""
    configs = {model: served_config(repo, model, overrides) for model in models}
    with ThreadPoolExecutor(len(configs)) as pool:
        for done in [pool.submit(triton.load, model, config) for model, config in configs.items()]:
            done.result()


def start_gateway(endpoints: ServerEndpoints, model_dir: Path, api_key: str | None, status_path: Path, log_path: Path,
                  timeout: float = 60.0) -> subprocess.Popen:
    """The gateway in its own process (so it does not share a GIL with its callers)."""
    import httpx

    env = dict(os.environ)
    env.pop("TOKFILTER_API_KEY", None)
    if api_key:
        env["TOKFILTER_API_KEY"] = api_key
    cmd = [sys.executable, "-m", "tokfilter.server.gateway", "--triton", endpoints.grpc_url, "--host", endpoints.host,
           "--port", str(endpoints.gateway_port), "--model-dir", str(model_dir), "--status-file", str(status_path)]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=die_with_parent)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise TokfilterError(f"gateway exited with code {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{endpoints.gateway_url}/readyz", timeout=2).status_code == 200:
                return proc
        time.sleep(0.2)
    stop_process_group(proc)
    raise TokfilterError(f"gateway not ready after {timeout:.0f} s:\n{log_path.read_text()[-3000:]}")


@contextlib.contextmanager
def running_server(
    repo: Path = MODEL_REPO_DIR,
    host: str = "127.0.0.1",
    grpc_port: int = 8001,
    http_port: int = 8000,
    metrics_port: int = 8002,
    gateway_port: int | None = 8080,
    api_key: str | None = None,
    instances: int | None = None,
    ort_threads: int | None = None,
    precision: str | None = None,
    engine: str | None = None,
    engine_precision: str | None = None,
    log_dir: Path = ARTIFACTS / "logs",
    supervision: SupervisorSettings = SupervisorSettings(),
) -> Iterator[ServerEndpoints]:
    """Triton (+ the gateway unless ``gateway_port`` is None) serving ``repo``, ready on entry,
    supervised, stopped on exit."""
    repo = Path(repo)
    overrides = ConfigOverrides(instances, ort_threads, precision, engine, engine_precision)
    missing = missing_model_files(repo)
    if missing:
        raise TokfilterError(f"model file missing: {missing[0]} ({len(missing)} missing; run `tokfilter model-repo`)")
    if gateway_port is not None:
        check_port_free(host, gateway_port, "--gateway-port")
    log_dir.mkdir(parents=True, exist_ok=True)
    endpoints = ServerEndpoints(host, grpc_port, http_port, metrics_port, gateway_port)

    def launch() -> TritonProcess:
        triton = start_triton(repo, host, http_port, grpc_port, metrics_port, log_dir / f"triton-{grpc_port}.log", api_key)
        try:
            load_models(triton, repo, overrides)
        except BaseException:
            triton.stop()
            raise
        return triton

    status_path = log_dir / f"status-{grpc_port}.json"
    supervisor = Supervisor(launch, lambda triton, model: load_models(triton, repo, overrides, (model,)),
                            status_path, api_key, supervision)
    supervisor.start()
    try:
        if gateway_port is not None:
            gateway = start_gateway(endpoints, repo / "token_classifier" / "1", api_key, status_path, log_dir / f"gateway-{gateway_port}.log")
            supervisor.watch(gateway, "gateway")
        yield replace(endpoints, supervisor=supervisor)
    finally:  # the gateway too (start_gateway stops one that failed to start)
        supervisor.stop()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repo", type=Path, default=MODEL_REPO_DIR, help="Triton model repository (default: %(default)s)")
    parser.add_argument("--host", default="127.0.0.1", help="address every endpoint listens on (default: %(default)s)")
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--metrics-port", type=int, default=8002)
    parser.add_argument("--gateway-port", type=int, default=8080)
    parser.add_argument("--api-key", default=os.environ.get("TOKFILTER_API_KEY"), help="require this key on the gateway and on Triton's inference over gRPC and HTTP (env TOKFILTER_API_KEY)")
    parser.add_argument("--instances", type=int, default=None, help="model instances per model (default: the config's)")
    parser.add_argument("--ort-threads", type=int, default=None, help="ONNX Runtime threads per instance (0: all cores)")
    parser.add_argument("--precision", choices=["fp32", "int8"], default=None, help="model file to serve (default: the config's, fp32)")
    parser.add_argument("--engine", choices=ENGINES, default=None,
                        help="engine of the window models and filter_text (default: the config's, auto: by the CPU, docs/engines.md)")
    parser.add_argument("--engine-precision", default=None, metavar="fp32|bf16|fp16",
                        help="precision the engine runs the fp32 model file at (default: the engine's; see docs/engines.md)")
    defaults = SupervisorSettings()
    parser.add_argument("--health-interval", type=float, default=defaults.interval_s, metavar="SECONDS",
                        help="seconds between health checks (Triton live, a tiny inference per model) (default: %(default)s)")
    parser.add_argument("--max-failures", type=int, default=defaults.max_failures,
                        help="recoveries (model reloads, Triton restarts) allowed within --failure-window before serve "
                             "stops and exits 1 (default: %(default)s)")
    parser.add_argument("--failure-window", type=float, default=defaults.failure_window_s, metavar="SECONDS",
                        help="the window in which --max-failures counts recoveries (default: %(default)s)")


def main(args: argparse.Namespace) -> int:
    stop = {"signal": None}

    def on_signal(signum, _frame):
        stop["signal"] = signum

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.health_interval <= 0 or args.max_failures < 0 or args.failure_window <= 0:
        raise TokfilterError("--health-interval and --failure-window must be > 0, --max-failures >= 0")
    supervision = SupervisorSettings(interval_s=args.health_interval, max_failures=args.max_failures, failure_window_s=args.failure_window)
    with running_server(args.repo, args.host, args.grpc_port, args.http_port, args.metrics_port, args.gateway_port,
                        args.api_key, args.instances, args.ort_threads, args.precision, args.engine, args.engine_precision,
                        supervision=supervision) as ep:
        print(f"Triton gRPC   {ep.grpc_url}\nTriton HTTP   {ep.http_url}\nMetrics       {ep.metrics_url}\n"
              f"REST gateway  {ep.gateway_url}  (POST /v1/filter, OpenAPI at /docs)\n"
              f"models ready: {', '.join(SERVED_MODELS)}; stop with Ctrl-C", flush=True)
        while stop["signal"] is None and not ep.supervisor.failed:
            time.sleep(0.2)
    if ep.supervisor.failed and stop["signal"] is None:  # (a stop signal to the whole group also ends the gateway)
        print(f"tokfilter serve: error: {ep.supervisor.failed}", file=sys.stderr, flush=True)
        return 1
    print("stopped", flush=True)
    return 0
