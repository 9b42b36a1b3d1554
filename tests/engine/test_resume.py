"""A run interrupted mid-epoch and resumed ends bit-identical to an uninterrupted run."""

import json
import os
import signal

import pytest
import torch

from sslkit.app.train import train
from sslkit.config import compose
from sslkit.engine import checkpoint as ckpt
from sslkit.engine.checkpoint import config_of, load_run
from sslkit.engine.signals import Interrupted
from sslkit.files import save_atomic
from sslkit.methods.mocov2 import MoCoV2
from tests.conftest import needs_fashion

pytestmark = needs_fashion
BASE = ["data.subset=128", "data.batch_size=32", "trainer.max_steps=4", "method.queue_size=48",
        "trainer.progress=none", "trainer.log_every_steps=1", "head.hidden_dim=64", "trainer.checkpoint_every_steps=0"]


def _weights(run_dir):
    return ckpt.load(run_dir)["method"]


def test_interrupted_run_resumes_exactly(tmp_path, monkeypatch):
    straight = train(compose(BASE + [f"out={tmp_path / 'a'}"]))

    original = MoCoV2.after_step

    def interrupt_at_step_2(self, progress):  # a real SIGINT, delivered inside step 2
        original(self, progress)
        if progress == pytest.approx(0.5):
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(MoCoV2, "after_step", interrupt_at_step_2)
    with pytest.raises(Interrupted, match="stopped by SIGINT after step 2") as stopped:
        train(compose(BASE + [f"out={tmp_path / 'b'}"]))
    assert stopped.value.exit_code == 130
    monkeypatch.setattr(MoCoV2, "after_step", original)
    saved, run_dir = load_run(str(tmp_path / "b"))
    assert saved["state"] == {"epoch": 0, "step": 2, "batch_in_epoch": 2}
    train(config_of(saved), saved)  # what `sslkit train trainer.resume=<run dir>` does

    a, b = _weights(straight), _weights(run_dir)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps[-2:] == [3, 4] and steps == sorted(set(steps))  # continues, never repeats a step


def test_checkpoint_holds_everything_to_continue(tmp_path):
    run = train(compose(BASE + ["trainer.max_steps=2", f"out={tmp_path / 'c'}"]))
    saved = ckpt.load(run)
    assert {"method", "optimizer", "scheduler", "scaler", "rng", "state", "config"} <= saved.keys()
    assert {"queue.keys", "queue.ptr", "backbone_k.conv1.weight"} <= saved["method"].keys()
    assert int(saved["method"]["queue.ptr"]) == (2 * 32) % 48  # wrapped around once
    assert not list((run / "checkpoints").glob(".*"))  # no temporary files left behind


def test_atomic_save_keeps_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "last.pt"
    save_atomic({"format": ckpt.FORMAT, "v": 1}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        save_atomic({"v": Unpicklable()}, path)
    assert torch.load(path)["v"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]
