"""Issue 25's soak: a run that checkpoints every step is SIGKILLed at a random instant, resumed, 20
times, then finishes. Its weights and queue equal an uninterrupted run's bit for bit, every step is
logged once, and no temporary file is left. It counts the kills that landed inside a save.

    nice -n 19 .venv/bin/pytest -q -s -m slow tests/engine/test_kill_soak.py
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from sslkit.engine import checkpoint as ckpt
from sslkit.files import read_metrics
from tests.conftest import ROOT, needs_fashion

pytestmark = [needs_fashion, pytest.mark.slow]
KILLS = 20
STEPS = 90
RUN = ["data.subset=128", "data.batch_size=16", "method.queue_size=64", "head.hidden_dim=32", "backbone.width=16",
       f"trainer.max_steps={STEPS}", "trainer.checkpoint_every_steps=1", "trainer.progress=none",
       "trainer.log_every_steps=1", "trainer.precision=32", "trainer.channels_last=false", "trainer.threads=1",
       "data.num_workers=0"]
# the child: `sslkit <args>`, writing B before and E after each checkpoint save to $SOAK_MARKER
CHILD = """
import os, sys
import sslkit.engine.state as state
marker = os.open(os.environ["SOAK_MARKER"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
real = state.save_atomic
def save_atomic(obj, path, keep_previous=None):
    os.write(marker, b"B")
    real(obj, path, keep_previous=keep_previous)
    os.write(marker, b"E")
state.save_atomic = save_atomic
from sslkit.app.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _start(args: list[str], marker: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", SOAK_MARKER=str(marker))
    return subprocess.Popen([sys.executable, "-c", CHILD, *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _wait_for(marker: Path, letter: str, count: int, proc: subprocess.Popen[bytes]) -> bool:
    """Until `marker` holds `count` of `letter`; False if the process ended first."""
    while proc.poll() is None:
        if marker.is_file() and marker.read_bytes().count(letter.encode()) >= count:
            return True
        time.sleep(0.005)
    return False


def test_twenty_random_kills_lose_nothing(tmp_path, record_property):
    rng = random.Random(int(os.environ.get("SOAK_SEED", "25")))
    straight = _start(["train", *RUN, f"out={tmp_path / 'straight'}"], tmp_path / "straight.marker")
    run, marker = tmp_path / "run", tmp_path / "run.marker"
    inside, between, lives = 0, 0, 0
    while inside + between < KILLS:
        args = ["train", *RUN, f"out={run}"] if lives == 0 else ["train", f"trainer.resume={run}"]
        before = marker.read_bytes() if marker.is_file() else b""
        proc = _start(args, marker)
        lives += 1
        # the first life is killed only after its first checkpoint exists; later ones once they are training
        ready = _wait_for(marker, "E" if lives == 1 else "B", before.count(b"B" if lives > 1 else b"E") + 1, proc)
        assert ready, f"life {lives} ended before it was killed: {proc.stderr.read().decode()[-3000:]}"  # type: ignore[union-attr]
        time.sleep(rng.uniform(0.0, 1.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL
        if marker.read_bytes().endswith(b"B"):
            inside += 1
            os.write(os.open(marker, os.O_WRONLY | os.O_APPEND), b"E")  # close the killed save's pair
        else:
            between += 1
    proc = _start(["train", f"trainer.resume={run}"], marker)
    _, err = proc.communicate(timeout=1800)
    assert proc.returncode == 0, err.decode()[-3000:]
    _, err = straight.communicate(timeout=1800)
    assert straight.returncode == 0, err.decode()[-3000:]

    a = torch.load(tmp_path / "straight" / ckpt.LAST, weights_only=True)
    b = torch.load(run / ckpt.LAST, weights_only=True)
    assert a["state"] == b["state"] and b["state"]["step"] == STEPS
    assert a["method"].keys() == b["method"].keys() and "queue.keys" in b["method"]
    for key in a["method"]:
        torch.testing.assert_close(b["method"][key], a["method"][key], rtol=0, atol=0, msg=key)
    for key, value in a["optimizer"]["state"].items():
        torch.testing.assert_close(b["optimizer"]["state"][key]["momentum_buffer"], value["momentum_buffer"],
                                   rtol=0, atol=0)
    assert [r["step"] for r in read_metrics(run) if "loss" in r] == list(range(1, STEPS + 1))
    temps = [str(p.relative_to(run)) for p in run.rglob(".*")]
    assert temps == [], temps
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.pt", "prev.pt"]
    result = {"kills": inside + between, "inside_a_save": inside, "between_saves": between,
              "saves": marker.read_bytes().count(b"B"), "steps": STEPS}
    record_property("soak", result)
    print(f"\nsoak: {json.dumps(result)}")  # the figure docs/reliability.md quotes
