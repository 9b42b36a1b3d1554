"""SIGINT, SIGTERM and SIGUSR1 stop training at a step boundary; the resumed run is bit-identical to an
uninterrupted one (real `sslkit train` subprocesses, signals sent while they train)."""

import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from sslkit.engine import checkpoint as ckpt
from tests.conftest import ROOT, needs_fashion, run_cli

pytestmark = needs_fashion
# 2 epochs of 4 steps; a checkpoint only at epoch ends, so a stop mid-epoch must write its own.
BASE = ["data.subset=128", "data.batch_size=32", "trainer.epochs=2", "method.queue_size=48", "head.hidden_dim=64",
        "trainer.progress=lines", "trainer.log_every_steps=1", "trainer.checkpoint_every_steps=0", "seed=7",
        "trainer.channels_last=false"]  # fixed: auto times a probe, which a loaded machine can decide the other way
TOTAL = 8


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    out = tmp_path_factory.mktemp("signals") / "straight"
    res = run_cli("train", *BASE, f"out={out}")
    assert res.returncode == 0, res.stderr[-3000:]
    return ckpt.load(out)


def _train_and_signal(out, signum, after_step=2):
    """Start `sslkit train`, send `signum` once it has logged step `after_step`; return (rc, stdout, stderr)."""
    env = dict(os.environ, OMP_NUM_THREADS="2", PYTHONWARNINGS="ignore")
    proc = subprocess.Popen([sys.executable, "-m", "sslkit", "train", *BASE, f"out={out}"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith(f"step {after_step}/"):
            proc.send_signal(signum)
            break
    stdout, stderr = proc.communicate(timeout=300)
    return proc.returncode, "".join(lines) + stdout, stderr


def _check_stop_and_resume(tmp_path, straight, signum):
    out = tmp_path / "run"
    rc, _, stderr = _train_and_signal(out, signum)
    name = signal.Signals(signum).name
    assert rc == 128 + signum, (rc, stderr[-3000:])
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"sslkit: stopped: stopped by {name} after step "), stderr
    saved = ckpt.load(out)
    stopped_at = saved["state"]["step"]
    assert 2 <= stopped_at < TOTAL and f"after step {stopped_at};" in lines[0]
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, stopped_at + 1))  # it finished the step it was in, and no more

    res = run_cli("train", f"trainer.resume={out}")
    assert res.returncode == 0, res.stderr[-3000:]
    resumed = ckpt.load(out)
    assert resumed["state"] == straight["state"]
    a, b = straight["method"], resumed["method"]
    assert a.keys() == b.keys()
    for key in a:  # weights, momentum encoder and queue alike
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=0, msg=key)


@pytest.mark.slow  # two CLI trainings, ~50 s on 2 cores; the handlers themselves: tests/engine/test_process_state.py
def test_sigterm_stops_at_a_step_boundary_and_resumes_exactly(tmp_path, straight):
    _check_stop_and_resume(tmp_path, straight, signal.SIGTERM)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGUSR1])
def test_sigint_and_sigusr1_stop_and_resume_exactly(tmp_path, straight, signum):
    _check_stop_and_resume(tmp_path, straight, signum)


@pytest.mark.slow
def test_ctrl_c_to_the_process_group_with_dataloader_workers(tmp_path):
    """A terminal's Ctrl-C reaches every process of the group; the DataLoader workers ignore it, so the
    main process still stops cleanly at a step boundary."""
    from PIL import Image

    for cls in ("a", "b"):
        (tmp_path / "imgs" / "train" / cls).mkdir(parents=True)
        for i in range(16):
            Image.new("RGB", (40, 40), (10 * i, 0, 0)).save(tmp_path / "imgs" / "train" / cls / f"{i}.png")
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="2", PYTHONWARNINGS="ignore")
    root = tmp_path / "imgs"
    proc = subprocess.Popen([sys.executable, "-m", "sslkit", "train", "data=imagefolder", f"data.root={root}",
                             "data.image_size=32", "data.batch_size=8", "data.num_workers=2", "method.queue_size=16",
                             "head.hidden_dim=32", "trainer.epochs=50", "trainer.progress=lines",
                             "trainer.log_every_steps=1", f"out={out}"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    for line in proc.stdout:
        if line.startswith("step 3/"):
            os.killpg(proc.pid, signal.SIGINT)
            break
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130, stderr[-3000:]
    assert stderr.strip().splitlines()[-1].startswith("sslkit: stopped: stopped by SIGINT after step "), stderr
    assert "Traceback" not in stderr and ckpt.load(out)["state"]["step"] >= 3
