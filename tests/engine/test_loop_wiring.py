"""`engine.fit` on a tiny MoCo and in-memory images, in one process and a second: two epochs reshuffle
with DistributedSampler's (seed + epoch) order, a run interrupted in epoch 1 resumes bit-identical
to an uninterrupted one, and a NaN loss stops training with a one-line error."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch

from sslkit.build import method_defaults
from sslkit.data.base import TensorImageDataset
from sslkit.data.loader import ResumableSampler, train_loader
from sslkit.devices import World
from sslkit.engine import checkpoint as ckpt
from sslkit.engine.logger import NullLogger
from sslkit.engine.loop import FitInputs, LoopSettings, TrainingDiverged, fit
from sslkit.engine.schedule import build_scheduler
from sslkit.engine.signals import Interrupted
from sslkit.engine.state import restore
from sslkit.errors import UserError, one_line
from sslkit.methods.mocov2 import MoCoV2
from tests.conftest import TinyEncoder

IMAGES, BATCH, EPOCHS, SEED = 32, 8, 2, 5
STEPS = EPOCHS * IMAGES // BATCH  # 4 steps per epoch
WORLD = World(0, 0, 1, torch.device("cpu"))
HEAD = {"kind": "mlp", "hidden_dim": 16, "out_dim": 8, "batch_norm": False}


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def dataset() -> TensorImageDataset:
    g = torch.Generator().manual_seed(0)
    return TensorImageDataset(torch.randint(0, 255, (IMAGES, 3, 6, 6), generator=g, dtype=torch.uint8),
                              torch.arange(IMAGES) % 4, 4)


def make_views(images: torch.Tensor) -> list[torch.Tensor]:
    x = images.float() / 255
    return [x + 0.1 * torch.randn_like(x), x.flip(-1) + 0.1 * torch.randn_like(x)]  # draws from the global RNG


def parts():
    torch.manual_seed(0)
    method = MoCoV2(TinyEncoder(8), 8, HEAD,
                    **method_defaults("mocov2", queue_size=12, momentum=0.9, split_bn_groups=2))
    opt = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.05, momentum=0.9)
    sched = build_scheduler(opt, {"schedule": "cosine", "warmup_epochs": 0.5}, STEPS, STEPS // EPOCHS)
    return method, opt, sched


def fit_inputs(run_dir: Path | None, method, opt, sched, views=make_views, epochs: int = EPOCHS,
               log_every: int = 1, checkpoint_every: int = 0, logger=None, **extra) -> FitInputs:
    """The tiny run's inputs: 4 steps per epoch on `dataset()`."""
    loader = train_loader(dataset(), BATCH, seed=SEED)
    per_epoch = IMAGES // BATCH
    settings = LoopSettings(epochs=epochs, total_steps=per_epoch * epochs, steps_per_epoch=per_epoch,
                            log_every=log_every, checkpoint_every=checkpoint_every)
    return FitInputs(method, loader, views, opt, sched, WORLD, settings, run_dir, logger or NullLogger(), **extra)


def run(run_dir: Path, method, opt, sched, state=None, views=make_views, log_every: int = 1):
    return fit(fit_inputs(run_dir, method, opt, sched, views, log_every=log_every), state)


@pytest.fixture
def epochs_seen(monkeypatch) -> list[tuple[int, list[int]]]:
    seen: list[tuple[int, list[int]]] = []
    original = ResumableSampler.__iter__

    def record(self):
        indices = list(original(self))
        seen.append((self.epoch, indices))
        return iter(indices)

    monkeypatch.setattr(ResumableSampler, "__iter__", record)
    return seen


def reference_order(epoch: int) -> list[int]:
    """DistributedSampler with one replica: randperm seeded with seed + epoch."""
    return torch.randperm(IMAGES, generator=torch.Generator().manual_seed(SEED + epoch)).tolist()


def test_two_epochs_reshuffle_and_an_interrupted_run_resumes_exactly(tmp_path, epochs_seen, monkeypatch):
    torch.manual_seed(123)
    method, opt, sched = parts()
    state = run(tmp_path / "straight", method, opt, sched)
    assert (state.epoch, state.step) == (EPOCHS, STEPS)
    assert epochs_seen == [(0, reference_order(0)), (1, reference_order(1))]  # set_epoch(epoch) each epoch
    straight = {k: v.clone() for k, v in method.state_dict().items()}
    epochs_seen.clear()

    torch.manual_seed(123)
    method, opt, sched = parts()
    original = MoCoV2.after_step

    def stop_at_step_6(self, progress):
        original(self, progress)
        if progress == pytest.approx(6 / STEPS):
            os.kill(os.getpid(), signal.SIGINT)  # epoch 1, after 2 of its 4 batches: stop at this step's end

    monkeypatch.setattr(MoCoV2, "after_step", stop_at_step_6)
    with pytest.raises(Interrupted):
        run(tmp_path / "resumed", method, opt, sched)
    monkeypatch.setattr(MoCoV2, "after_step", original)
    saved = ckpt.load(tmp_path / "resumed")
    assert saved["state"] == {"epoch": 1, "step": 6, "batch_in_epoch": 2}

    torch.manual_seed(999)  # the checkpoint's RNG state, not this, must drive the rest
    method, opt, sched = parts()
    state = run(tmp_path / "resumed", method, opt, sched, restore(saved, method, opt, sched, None))
    assert state.step == STEPS
    assert epochs_seen[-1] == (1, reference_order(1)[2 * BATCH:])  # the rest of epoch 1's order
    resumed = method.state_dict()
    assert resumed.keys() == straight.keys()
    for key, value in straight.items():
        torch.testing.assert_close(resumed[key], value, rtol=0, atol=0, msg=key)


def test_nan_loss_stops_training_with_a_one_line_error(tmp_path):
    method, opt, sched = parts()
    with pytest.raises(TrainingDiverged) as info:
        run(tmp_path / "nan", method, opt, sched, views=lambda images: [images.float() * float("nan")] * 2)
    assert isinstance(info.value, UserError) and info.value.exit_code == 2
    message = one_line(info.value)
    assert message.startswith("loss became nan at step 1;") and "optim.lr" in message, message
    assert "\n" not in str(info.value)


def test_channels_last_runs_give_the_method_channels_last_images_and_leave_other_tensors():
    from sslkit.engine.loop import _memory_format

    views = [torch.randn(2, 3, 8, 8), torch.randn(2, 3, 4, 4), torch.randn(2, 5)]
    out = _memory_format(views, True)
    assert all(v.is_contiguous(memory_format=torch.channels_last) and not v.is_contiguous() for v in out[:2])
    assert out[2] is views[2]
    assert _memory_format(views, False) is views


class RecordingLogger(NullLogger):
    def __init__(self) -> None:
        self.records: list[dict] = []
        self.messages: list[str] = []

    def log(self, record: dict) -> None:
        self.records.append(record)

    def message(self, text: str) -> None:
        self.messages.append(text)


def test_epoch_hooks_run_at_each_epoch_end_on_the_encoder_and_their_values_are_logged(tmp_path):
    """The kNN monitor's route: each hook gets the epoch number and the method's encoder, its values
    go to the log with the step and epoch and to one message line, and training goes on in train mode."""
    method, opt, sched = parts()
    seen = []

    def hook(epoch, encoder):
        seen.append((epoch, encoder is method.encoder()))
        encoder.eval()
        return {"knn_top1": 10.0 * epoch}

    logger = RecordingLogger()
    fit(fit_inputs(tmp_path, method, opt, sched, log_every=100, logger=logger, epoch_hooks=(hook,)))
    assert seen == [(1, True), (2, True)]
    epochs = [r for r in logger.records if "knn_top1" in r]
    assert epochs == [{"step": 4, "epoch": 1, "knn_top1": 10.0}, {"step": 8, "epoch": 2, "knn_top1": 20.0}]
    assert "epoch 1: knn_top1=10" in logger.messages and "epoch 2: knn_top1=20" in logger.messages
    assert method.training
    assert [r["step"] for r in logger.records if "loss" in r] == [STEPS]  # log_every > steps: the last step only


def test_checkpoints_at_every_nth_step_and_each_epoch_end(tmp_path):
    from sslkit.engine.state import TrainState

    method, opt, sched = parts()
    state = TrainState()
    steps: list[int] = []
    fit(fit_inputs(tmp_path, method, opt, sched, log_every=100, checkpoint_every=3,
                   on_checkpoint=lambda: steps.append(state.step)), state)
    assert steps == [3, 4, 6, 8, 8]  # steps 3 and 6, the ends of epochs 1 and 2, and the end of the run


def test_autocast_is_bf16_for_bf16_only_and_fp16_is_a_no_op_on_cpu():
    from sslkit.engine.loop import autocast

    cpu = torch.device("cpu")
    for precision, on in (("bf16", True), ("fp16", False), ("32", False)):
        with autocast(cpu, precision):
            assert torch.is_autocast_enabled("cpu") is on, precision
            if on:
                assert torch.get_autocast_dtype("cpu") == torch.bfloat16
