"""A non-editable install works: the wheel built from this tree, installed into a fresh virtual
environment (its dependencies taken from this one's site-packages through a .pth line, without the
editable finder), filters a tiny corpus and serves it from a working directory of its own, with
``artifacts/`` and the model repository there, not in site-packages."""

import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import httpx
import pytest

from tokfilter.server.triton import free_port
from tokfilter.training.pretrain.tokenizer import corpus_texts, train_target_tokenizer

pytestmark = pytest.mark.slow
CHECKOUT = Path(__file__).resolve().parents[1]


def source_tree(dest: Path) -> Path:
    """The files git would commit (tracked and untracked-not-ignored), so no build/ or artifacts/
    of the checkout leaks into the wheel."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=CHECKOUT, capture_output=True,
                            check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        if (CHECKOUT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(CHECKOUT / name, dest / name)
    return dest


def fresh_venv(venv: Path, wheel: Path) -> Path:
    """A venv holding only the wheel; its dependencies come from this environment's site-packages
    (a path line in a .pth file adds the folder without running the editable install's .pth)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = Path(subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--quiet",
                    "--no-deps", "--ignore-installed", "--no-index", str(wheel)], check=True)
    return site


def test_wheel_filters_and_serves_from_its_own_working_directory(tiny_corpus_dir, tiny_joint_model_dir, tmp_path):
    src = source_tree(tmp_path / "src")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path / "dist"), str(src)], check=True)
    (wheel,) = (tmp_path / "dist").glob("tokfilter-*.whl")
    site = fresh_venv(tmp_path / "venv", wheel)
    bin_dir = tmp_path / "venv" / "bin"

    work = tmp_path / "work"  # a working directory with the default artifacts/ layout, holding only the joint model
    shutil.copytree(tiny_joint_model_dir, work / "artifacts" / "models" / "joint_classifier")
    train_target_tokenizer(corpus_texts([str(tiny_corpus_dir / "test.jsonl")]), work / "artifacts" / "target_tokenizer" / "tokenizer.json", 400)
    lines = (tiny_corpus_dir / "test.jsonl").read_text().splitlines(keepends=True)[:8]
    (work / "docs.jsonl").write_text("".join(lines))
    env = {k: v for k, v in os.environ.items() if k not in ("TOKFILTER_ARTIFACTS", "PYTHONPATH")}
    env["TOKFILTER_ORT_THREADS"] = "1"

    def run(*args: str) -> subprocess.CompletedProcess:
        proc = subprocess.run(args, cwd=work, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"{args}:\n{proc.stdout}\n{proc.stderr}"
        return proc

    where = json.loads(run(str(bin_dir / "python"), "-c", "import json, tokfilter, tokfilter.paths as p; print(json.dumps("
                           "[tokfilter.__file__, str(p.ARTIFACTS), str(p.MODEL_REPO_DIR), str(p.MODEL_CONFIGS_DIR)]))").stdout)
    assert Path(where[0]).is_relative_to(site), "tokfilter imported from elsewhere than the installed wheel"
    assert where[1:3] == [str(work / "artifacts"), str(work / "artifacts" / "model_repo")]
    assert Path(where[3], "token_classifier", "config.pbtxt").is_file()  # the configs shipped as package data

    run(str(bin_dir / "tokfilter"), "filter", "docs.jsonl", "--out", "shards", "--no-progress")
    manifest = json.loads((work / "shards" / "manifest.json").read_text())
    assert manifest["complete"] and manifest["counts"]["docs"] == len(lines)
    assert manifest["token_model"]["model_name"] == manifest["doc_model"]["model_name"] == "joint_classifier"

    run(str(bin_dir / "tokfilter"), "model-repo")
    for model in ("token_classifier", "doc_classifier", "filter_text"):
        assert (work / "artifacts" / "model_repo" / model / "config.pbtxt").is_file()
        assert (work / "artifacts" / "model_repo" / model / "1" / "model.py").is_file()

    gateway = free_port()
    ports = ["--grpc-port", str(free_port()), "--http-port", str(free_port()), "--metrics-port", str(free_port()),
             "--gateway-port", str(gateway), "--ort-threads", "1"]
    with open(tmp_path / "serve.log", "w") as log:
        server = subprocess.Popen([str(bin_dir / "tokfilter"), "serve", *ports], cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline, ready = time.monotonic() + 180, False
        while not ready and time.monotonic() < deadline and server.poll() is None:
            try:
                ready = httpx.get(f"http://127.0.0.1:{gateway}/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                time.sleep(0.5)
        assert ready, (tmp_path / "serve.log").read_text()
        reply = httpx.post(f"http://127.0.0.1:{gateway}/v1/filter", timeout=60,
                           json={"documents": [{"id": "a", "text": json.loads(lines[0])["text"]}]})
        assert reply.status_code == 200 and reply.json()["results"][0]["id"] == "a", reply.text
        server.send_signal(signal.SIGTERM)
        assert server.wait(60) == 0, (tmp_path / "serve.log").read_text()
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    assert (work / "artifacts" / "triton_backends" / "python").is_dir()  # written in the working directory
