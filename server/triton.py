"""Launch the real ``tritonserver`` bundled in the nvidia-pytriton wheel.

Set-up it needs (see shared/notes/triton.md): a backend directory holding the python backend plus
the stub built for the running Python; the running interpreter's libpython first on
``LD_LIBRARY_PATH`` (the system one is another patch release and breaks the stub); and the venv's
``bin`` first on ``PATH``. The stub's embedded interpreter runs isolated (it ignores PYTHONPATH) and
finds its prefix by looking up ``python3`` on PATH: so it lands in this venv, with its numpy and the
editable tokfilter install, instead of the base interpreter's site-packages (whose numpy 2 makes
every output tensor come back empty).
The server runs in its own process group and is stopped with it, so no stub outlives it.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path

from tokfilter.errors import TokfilterError
from tokfilter.paths import ARTIFACTS

PR_SET_PDEATHSIG = 1
PYTRITON_DIR = Path(sysconfig.get_paths()["purelib"]) / "pytriton" / "tritonserver"
BACKENDS_DIR = ARTIFACTS / "triton_backends"


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
    site_dir = sysconfig.get_paths()["purelib"]
    libs = [sysconfig.get_config_var("LIBDIR"), str(Path(site_dir) / "nvidia_pytriton.libs"), env.get("LD_LIBRARY_PATH", "")]
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in libs if p)
    env["PATH"] = os.pathsep.join(p for p in (str(Path(sys.prefix) / "bin"), env.get("PATH", "")) if p)
    return env


def check_port_free(host: str, port: int, flag: str) -> None:
    """Raise a TokfilterError naming ``flag`` when ``host:port`` cannot be bound."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError as err:
            raise TokfilterError(f"{flag} {port}: cannot listen on {host}:{port} ({err.strerror}); pick another port") from err


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def die_with_parent() -> None:
    """``preexec_fn`` of server processes: the kernel sends them SIGTERM when their parent dies,
    even by SIGKILL (OOM killer), so that no server outlives the process that started it. (Linux
    ties this to the starting thread: start servers from a thread that lives as long as they do.)"""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


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

        client = httpclient.InferenceServerClient(self.http_url)
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

    def load(self, model: str, config_json: str) -> None:
        import tritonclient.http as httpclient
        from tritonclient.utils import InferenceServerException

        client = httpclient.InferenceServerClient(self.http_url, network_timeout=600.0, connection_timeout=600.0)
        try:
            client.load_model(model, config=config_json)
        except InferenceServerException as err:
            raise TokfilterError(f"Triton could not load model {model!r}: {err}\n{self.log_tail()}") from err

    def stop(self) -> None:
        stop_process_group(self.proc)


def start_triton(repo: Path, host: str, http_port: int, grpc_port: int, metrics_port: int, log_path: Path) -> TritonProcess:
    """Start tritonserver on ``repo`` with no model loaded; raise a clear error for a taken port."""
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
        "--allow-metrics=true", "--log-verbose=" + os.environ.get("TOKFILTER_TRITON_VERBOSE", "0"),
    ]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, env=triton_environment(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=die_with_parent)
    triton = TritonProcess(proc, host, http_port, grpc_port, metrics_port, log_path)
    try:
        triton.wait_live()
    except BaseException:
        triton.stop()
        raise
    return triton
