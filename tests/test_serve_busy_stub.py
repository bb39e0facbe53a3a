"""A probe that times out means "hung" only when the model's stubs use no CPU: a stub computing a
long dynamic batch is busy, and reloading it would drop the work in flight. Checked on real
processes: one that computes, one stopped with SIGSTOP (alive, not a zombie, using no CPU: what a
hung stub looks like), and one that is gone."""

import signal
import subprocess
import sys
import time

from tokfilter.server.supervisor import Supervisor


def idle_supervisor(tmp_path) -> Supervisor:
    """A supervisor that never launches anything: only its view of the stubs is used."""
    return Supervisor(launch=lambda: None, load=lambda triton, model: None, status_path=tmp_path / "status.json")


def test_a_computing_stub_is_busy_and_a_stopped_or_gone_one_is_not(tmp_path):
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    stopped = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        time.sleep(0.3)  # the interpreters start (CPU for all three)
        stopped.send_signal(signal.SIGSTOP)
        gone.wait()
        supervisor = idle_supervisor(tmp_path)
        supervisor._stubs = {burner.pid: "busy_model", stopped.pid: "hung_model", gone.pid: "gone_model"}
        # The first ask counts since start: the burner has computed, the gone one cannot. The
        # stopped one's start-up may round to zero clock ticks, so its first answer is not asserted.
        assert supervisor.stubs_computing("busy_model")
        supervisor.stubs_computing("hung_model")
        assert not supervisor.stubs_computing("gone_model")
        time.sleep(0.3)
        assert supervisor.stubs_computing("busy_model") and not supervisor.stubs_computing("hung_model")
        assert not supervisor.stubs_computing("gone_model")
        assert not supervisor.stubs_computing("unknown_model")  # a model without stubs does not compute
    finally:
        for proc in (burner, stopped):
            proc.kill()
            proc.wait()
