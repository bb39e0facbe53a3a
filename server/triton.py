"""Launch the real ``tritonserver`` bundled in the nvidia-pytriton wheel.

Set-up it needs (see shared/notes/triton.md): a backend directory holding the python backend plus
the stub built for the running Python; the running interpreter's libpython first on
``LD_LIBRARY_PATH`` (the system one is another patch release and breaks the stub); and the venv's
``bin`` first on ``PATH``. The stub's embedded interpreter runs isolated (it ignores PYTHONPATH) and
finds its prefix by looking up ``python3`` on PATH: so it lands in this venv, with its numpy and the
editable tokfilter install, instead of the base interpreter's site-packages (whose numpy 2 makes
every output tensor come back empty).
The server runs in its own session and process group and is stopped with them. A tritonserver that
was killed leaves its python-backend stubs running (reparented to init, still in its session):
``TritonProcess.stop`` kills whatever is left in the session and removes the stubs' shared memory.

Triton's administrative APIs (model repository: load with uploaded files, unload, index; shared
memory; trace and log settings, which write files) answer only requests carrying the admin secret
made at each start, on HTTP and gRPC alike, loopback too: without it anyone who reaches a port could
load a python-backend model, that is run code in the server. With an API key, inference, metadata,
model configs and statistics require it as well (header ``x-api-key``); health stays open for probes.
Both values are on tritonserver's command line (it takes them nowhere else), readable by local users
of the host unless ``/proc`` is mounted with ``hidepid``.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

from tokfilter.clients.filter_client import API_KEY_HEADER
from tokfilter.errors import TokfilterError
from tokfilter.paths import ARTIFACTS

PR_SET_PDEATHSIG = 1
# found through the installed package, not this interpreter's site-packages: a venv may take its
# dependencies from another environment's (a .pth line), as the installed-package test does
PYTRITON_SITE = Path(importlib.util.find_spec("pytriton").submodule_search_locations[0]).parent
PYTRITON_DIR = PYTRITON_SITE / "pytriton" / "tritonserver"
BACKENDS_DIR = ARTIFACTS / "triton_backends"
ADMIN_HEADER = "tokfilter-admin-key"
ADMIN_APIS = ("model-repository", "shared-memory", "trace", "logging")
KEYED_APIS = ("inference", "metadata", "model-config", "statistics")  # with an API key; health stays open
STUB = "triton_python_backend_stub"
SHM_PREFIX = "triton_python_backend_shm_region_"
EXIT_TIMEOUT_S = 3  # tritonserver's wait for in-flight requests at SIGTERM; then its process group is killed


def prepare_backends(dest: Path = BACKENDS_DIR) -> Path:
    """A backend directory with the python backend and the stub for this Python version."""
    stub = PYTRITON_DIR / "python_backend_stubs" / f"{sys.version_info.major}.{sys.version_info.minor}" / "triton_python_backend_stub"
    if not stub.is_file():
        raise TokfilterError(f"no Triton python-backend stub for Python {sys.version_info.major}.{sys.version_info.minor} in {PYTRITON_DIR}")
    target = dest / "python"
    if not (target / "triton_python_backend_stub").is_file():
        shutil.copytree(PYTRITON_DIR / "backends" / "python", target, dirs_exist_ok=True)
        shutil.copy2(stub, target / "triton_python_backend_stub")
    return dest


def triton_environment() -> dict[str, str]:
    env = dict(os.environ)
    libs = [sysconfig.get_config_var("LIBDIR"), str(PYTRITON_SITE / "nvidia_pytriton.libs"), env.get("LD_LIBRARY_PATH", "")]
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in libs if p)
    env["PATH"] = os.pathsep.join(p for p in (str(Path(sys.prefix) / "bin"), env.get("PATH", "")) if p)
    return env


def check_port_free(host: str, port: int, flag: str) -> None:
    """Raise a TokfilterError naming ``flag`` when ``host:port`` cannot be bound."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind: a listener blocks, TIME_WAIT does not
        try:
            sock.bind((host, port))
        except OSError as err:
            raise TokfilterError(f"{flag} {port}: cannot listen on {host}:{port} ({err.strerror}); pick another port") from err


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def check_api_key(api_key: str) -> None:
    """An API key travels as a header value on every protocol: printable ASCII, no spaces."""
    if not re.fullmatch(r"[!-~]{8,}", api_key):
        raise TokfilterError("--api-key must be at least 8 printable ASCII characters without spaces")


def restricted_api_flags(admin_secret: str, api_key: str | None) -> list[str]:
    """tritonserver flags that close the admin APIs to all but ``admin_secret`` and, with
    ``api_key``, the inference APIs to all but it (``<apis>:<header>=<value>``, one group per API)."""
    groups = [(ADMIN_APIS, ADMIN_HEADER, admin_secret)] + ([(KEYED_APIS, API_KEY_HEADER, api_key)] if api_key else [])
    return [f"--{flag}={','.join(apis)}:{header}={value}"
            for apis, header, value in groups for flag in ("http-restricted-api", "grpc-restricted-protocol")]


def die_with_parent() -> None:
    """``preexec_fn`` of server processes: the kernel sends them SIGTERM when their parent dies,
    even by SIGKILL (OOM killer), so that no server outlives the process that started it. (Linux
    ties this to the starting thread: start servers from a thread that lives as long as they do.)"""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def session_processes(sid: int) -> dict[int, list[str]]:
    """pid -> argv of the live (not zombie) processes of session ``sid``."""
    found = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
            if int(fields[3]) == sid and fields[0] != b"Z":
                with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                    found[int(entry.name)] = f.read().decode(errors="replace").split("\0")
        except (OSError, IndexError, ValueError):  # exited meanwhile
            continue
    return found


def cpu_ticks(pid: int) -> int | None:
    """User + system CPU time of ``pid`` in clock ticks, None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of proc(5))
    except (OSError, IndexError, ValueError):
        return None


def process_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped, does not)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return False


def stop_process_group(proc: subprocess.Popen, timeout: float = 15.0) -> None:
    """SIGTERM the process group of ``proc``, then SIGKILL it if it has not exited in ``timeout``."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


@dataclass
class TritonProcess:
    """A running tritonserver in explicit model-control mode (models are loaded through its API)."""

    proc: subprocess.Popen
    host: str
    http_port: int
    grpc_port: int
    metrics_port: int
    log_path: Path
    admin_secret: str
    api_key: str | None = None
    shm_regions: set[str] = field(default_factory=set)  # of its stubs, removed at stop

    @property
    def admin_headers(self) -> dict[str, str]:
        return {ADMIN_HEADER: self.admin_secret}

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    def log_tail(self, n: int = 30) -> str:
        lines = self.log_path.read_text(errors="replace").splitlines() if self.log_path.is_file() else []
        return "\n".join(lines[-n:])

    def wait_live(self, timeout: float = 60.0) -> None:
        import tritonclient.http as httpclient

        # closed in this thread: a gevent-based client collected in another prints AttributeError tracebacks
        client = httpclient.InferenceServerClient(self.http_url)
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise TokfilterError(f"tritonserver exited with code {self.proc.returncode}:\n{self.log_tail()}")
                try:
                    if client.is_server_live():
                        return
                except Exception:  # not listening yet
                    pass
                time.sleep(0.2)
            raise TokfilterError(f"tritonserver not live after {timeout:.0f} s:\n{self.log_tail()}")
        finally:
            client.close()

    def load(self, model: str, config_json: str) -> None:
        import tritonclient.http as httpclient
        from tritonclient.utils import InferenceServerException

        client = httpclient.InferenceServerClient(self.http_url, network_timeout=600.0, connection_timeout=600.0)
        try:
            client.load_model(model, headers=self.admin_headers, config=config_json)
        except InferenceServerException as err:
            raise TokfilterError(f"Triton could not load model {model!r}: {err}\n{self.log_tail()}") from err
        finally:
            client.close()

    def unload(self, model: str) -> None:
        import tritonclient.http as httpclient

        client = httpclient.InferenceServerClient(self.http_url, network_timeout=600.0, connection_timeout=600.0)
        try:
            client.unload_model(model, headers=self.admin_headers)
        finally:
            client.close()

    def stubs(self) -> dict[int, str]:
        """pid -> model of this server's python-backend stub processes (noting their shared memory)."""
        stubs = {}
        for pid, argv in session_processes(self.proc.pid).items():
            if len(argv) > 2 and Path(argv[0]).name == STUB:
                stubs[pid] = Path(argv[1]).parent.parent.name  # argv: stub, <repo>/<model>/<version>/model.py, shm region, ...
                if argv[2].startswith(SHM_PREFIX) and "/" not in argv[2]:
                    self.shm_regions.add(argv[2])
        return stubs

    def stop(self) -> int:
        """Stop tritonserver and its stubs; kill what a dead server left in its session and remove
        the stubs' shared memory. Returns how many processes were left over."""
        self.stubs()
        stop_process_group(self.proc, timeout=EXIT_TIMEOUT_S + 2)
        left = list(session_processes(self.proc.pid))
        for pid in left:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while any(process_alive(pid) for pid in left) and time.monotonic() < deadline:
            time.sleep(0.05)
        for region in self.shm_regions:
            with suppress(FileNotFoundError):
                os.unlink(f"/dev/shm/{region}")
        return len(left)


def start_triton(repo: Path, host: str, http_port: int, grpc_port: int, metrics_port: int, log_path: Path,
                 api_key: str | None = None) -> TritonProcess:
    """Start tritonserver on ``repo`` with no model loaded, its admin APIs behind a fresh secret and,
    with ``api_key``, its inference APIs behind the key; raise a clear error for a taken port."""
    if api_key:
        check_api_key(api_key)
    for flag, port in (("--http-port", http_port), ("--grpc-port", grpc_port), ("--metrics-port", metrics_port)):
        check_port_free(host, port, flag)
    backends = prepare_backends()
    cmd = [
        str(PYTRITON_DIR / "bin" / "tritonserver"),
        f"--model-repository={Path(repo).resolve()}",
        f"--backend-directory={backends}",
        "--model-control-mode=explicit",
        f"--http-address={host}", f"--http-port={http_port}",
        f"--grpc-address={host}", f"--grpc-port={grpc_port}",
        f"--metrics-address={host}", f"--metrics-port={metrics_port}",
        "--allow-metrics=true", f"--exit-timeout-secs={EXIT_TIMEOUT_S}", "--log-verbose=" + os.environ.get("TOKFILTER_TRITON_VERBOSE", "0"),
    ]
    admin_secret = secrets.token_urlsafe(32)
    cmd += restricted_api_flags(admin_secret, api_key)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as log:
        proc = subprocess.Popen(cmd, env=triton_environment(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=die_with_parent)
    triton = TritonProcess(proc, host, http_port, grpc_port, metrics_port, log_path, admin_secret, api_key)
    try:
        triton.wait_live()
    except BaseException:
        triton.stop()
        raise
    return triton
