"""Under torchrun (`trainer.devices=2`), SIGTERM to `sslkit` reaches every rank once; the ranks agree on
the stop step, rank 0 writes one checkpoint holding every rank's RNG state, and the run resumes from it
to the end, bit-identical to an uninterrupted multi-process run."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import pytest
import torch

from sslkit.engine import checkpoint as ckpt
from tests.conftest import ROOT, needs_fashion, run_cli

pytestmark = [pytest.mark.distributed, pytest.mark.slow, needs_fashion]
BASE = ["trainer.devices=2", "device=cpu", "data.subset=128", "data.batch_size=32", "trainer.epochs=2",
        "method.queue_size=64", "head.hidden_dim=32", "trainer.progress=lines", "trainer.log_every_steps=1",
        "trainer.checkpoint_every_steps=0", "trainer.precision=32", "trainer.channels_last=false"]
# precision and layout pinned: `auto` decides channels_last by a timed probe, which may differ between two runs
TOTAL = 8


def test_sigterm_under_torchrun_resumes_exactly(tmp_path):
    straight = tmp_path / "straight"
    res = run_cli("train", *BASE, f"out={straight}", timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]

    out = tmp_path / "stopped"
    env = dict(os.environ, OMP_NUM_THREADS="2", PYTHONWARNINGS="ignore")  # as run_cli: same float reductions
    proc = subprocess.Popen([sys.executable, "-m", "sslkit", "train", *BASE, f"out={out}"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith("step 2/"):
            proc.send_signal(signal.SIGTERM)
            break
    rest, _ = proc.communicate(timeout=600)
    text = "".join(seen) + rest
    assert proc.returncode != 0, text[-3000:]
    assert "stopped by SIGTERM after step" in text, text[-3000:]
    saved = ckpt.load(out)
    assert 2 <= saved["state"]["step"] < TOTAL

    stops = set(re.findall(r"stopped by SIGTERM after step (\d+)", text))
    assert stops == {str(saved["state"]["step"])}, text[-3000:]  # every rank stopped after the same step
    res = run_cli("train", f"trainer.resume={out}", timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    # bit-identical to `straight`: the checkpoint holds every rank's RNG state (`rng_ranks`, issue 25)
    resumed, uninterrupted = ckpt.load(out), ckpt.load(straight)
    assert resumed["state"] == uninterrupted["state"] and len(resumed["rng_ranks"]) == 2
    for key, value in uninterrupted["method"].items():
        torch.testing.assert_close(resumed["method"][key], value, rtol=0, atol=0, msg=key)
