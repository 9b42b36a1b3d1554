"""Issue 25 for the detection checkpoint: saved like a run's (a hard-linked `.prev.pt` kept before the
new file is renamed in), and a missing `detect_ckpt.pt` resumes from its `.prev.pt` with one notice."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sslkit.engine.checkpoint import previous_of
from sslkit.evaluation.detection.model import build_detector
from sslkit.evaluation.detection.train import FineTuneSettings, fine_tune
from tests.evaluation.detection.test_detect_train import CPU, SMALL, squares, tiny_resnet


def test_a_missing_detection_checkpoint_resumes_from_its_prev_exactly(tmp_path, capsys):
    settings = FineTuneSettings(steps=3, batch_size=2, lr=0.01, warmup_steps=1)
    data = squares(6, seed=0)

    def fresh() -> nn.Module:
        torch.manual_seed(0)
        return build_detector(tiny_resnet(), 1, **SMALL)

    straight = fresh()
    torch.manual_seed(5)
    fine_tune(straight, data, settings, CPU, tmp_path / "a.pt", checkpoint_every=1, log=lambda _m: None)

    def stop(message: str) -> None:
        if "step 2/3" in message:
            raise KeyboardInterrupt

    ckpt = tmp_path / "detect_ckpt.pt"
    interrupted = fresh()
    torch.manual_seed(5)
    with pytest.raises(KeyboardInterrupt):
        fine_tune(interrupted, data, settings, CPU, ckpt, checkpoint_every=1, log=stop)
    prev = previous_of(ckpt)
    assert prev.name == "detect_ckpt.prev.pt"
    assert torch.load(ckpt, weights_only=True)["step"] == 2 and torch.load(prev, weights_only=True)["step"] == 1
    assert ckpt.stat().st_ino != prev.stat().st_ino
    ckpt.unlink()  # killed inside the next save, as the old protocol allowed
    (tmp_path / ".detect_ckpt.pt.abcd1234").write_bytes(b"half a checkpoint")
    capsys.readouterr()
    resumed = fresh()
    messages: list[str] = []
    fine_tune(resumed, data, settings, CPU, ckpt, checkpoint_every=1, log=messages.append)
    notice = capsys.readouterr().err.strip().splitlines()
    assert len(notice) == 1 and "detect_ckpt.pt is missing" in notice[0] and "(step 1)" in notice[0]
    assert "resumed" in messages[0] and "step 1" in messages[0]
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=0, msg=name)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(("detect", ".detect"))) == [
        "detect_ckpt.prev.pt", "detect_ckpt.pt"]
