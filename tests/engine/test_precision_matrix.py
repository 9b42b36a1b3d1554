"""Every path `auto` (or a user) can pick, forced, on whatever CPU runs the suite (issue 19).

The axes: precision {32, bf16} x memory format {NCHW, channels_last} x BN {MoCo's split shuffle-BN,
none} x method {mocov1, mocov2, simclr, simclr with gradient caching (`chunk_size`)}. Each cell trains
two steps of a narrow small-stem ResNet-18 at 16 px through the engine's own loop (`engine.fit`, the
autocast and memory format it applies) on views from the batched augmentation. A bf16 cell must run
its convolutions in bf16 (checked by a hook, so an autocast that silently did nothing fails), give a
finite loss, and agree with the same cell in fp32, from the same weights and views, within a stated
tolerance. On a CPU without native BF16 the bf16 cells run emulated: slow per op, fine at this size.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from sslkit.augment.batched import BatchedAugment
from sslkit.augment.recipe import AugRecipe
from sslkit.build import build_method
from sslkit.config import as_dict, compose
from sslkit.data.base import TensorImageDataset
from sslkit.data.loader import train_loader
from sslkit.devices import World
from sslkit.engine.logger import NullLogger
from sslkit.engine.loop import FitInputs, LoopSettings, fit
from sslkit.engine.schedule import build_scheduler

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIZE, BATCH, STEPS = 16, 8, 2
WORLD = World(0, 0, 1, torch.device("cpu"))
# bf16 keeps 8 bits of mantissa: a loss of ~log(K) agrees with fp32 to about 1e-2 relative after two steps
BF16_RTOL = 3e-2
# the first gradient through ~20 BN layers on 4-image BN groups: cosine 0.91-0.95 to fp32 and norm within 8%
# measured on this matrix (a wrong bf16 backward gives a cosine near 0)
GRAD_COSINE, GRAD_NORM_RTOL = 0.85, 0.15

TINY = ["backbone.small_images=true", "backbone.width=8", f"data.image_size={SIZE}", f"data.batch_size={BATCH}",
        "head.hidden_dim=32", "head.out_dim=16"]
METHODS = {
    "mocov1": ["method=mocov1", "method.queue_size=32", "method.split_bn_groups=2"],
    "mocov2": ["method=mocov2", "method.queue_size=32", "method.split_bn_groups=2"],
    "simclr": ["method=simclr"],
    # 16 images in BN chunks of 8 views (issue 22's layout): 4 chunks, trained by gradient caching
    "simclr_chunked": ["method=simclr", "method.chunk_size=8", "data.batch_size=16"],
}
CELLS = [(m, bn, cl) for m in ("mocov1", "mocov2") for bn in ("split", "none") for cl in (False, True)] + \
        [(m, "-", cl) for m in ("simclr", "simclr_chunked") for cl in (False, True)]


class Recorder(NullLogger):
    def __init__(self) -> None:
        super().__init__()
        self.losses: list[float] = []
        self.grads: list[torch.Tensor] = []

    def log(self, record: dict) -> None:
        self.losses.append(float(record["loss"]))


def images() -> TensorImageDataset:
    g = torch.Generator().manual_seed(0)
    return TensorImageDataset(torch.randint(0, 256, (4 * BATCH, 3, SIZE, SIZE), generator=g, dtype=torch.uint8),
                              torch.arange(4 * BATCH) % 4, 4)


def train_cell(method_name: str, bn: str, channels_last: bool, precision: str, run_dir: Path) -> tuple[
        Recorder, set[torch.dtype], nn.Module]:
    """Two engine steps of one cell: the losses and gradients seen, the first conv's output dtypes, the method."""
    overrides = TINY + METHODS[method_name] + ([f"method.shuffle_bn={bn}"] if bn != "-" else [])
    cfg = compose(overrides)
    torch.manual_seed(0)
    method = build_method(cfg)
    if channels_last:
        method.to(memory_format=torch.channels_last)
    conv_dtypes: set[torch.dtype] = set()
    first_conv = next(m for m in method.backbone.modules() if isinstance(m, nn.Conv2d))
    first_conv.register_forward_hook(lambda mod, inp, out: conv_dtypes.add(out.dtype))
    aug = BatchedAugment(AugRecipe.from_config(as_dict(cfg.aug)))
    opt = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.05, momentum=0.9)
    sched = build_scheduler(opt, {"schedule": "cosine", "warmup_epochs": 0}, STEPS, STEPS)
    settings = LoopSettings(epochs=1, total_steps=STEPS, steps_per_epoch=4, log_every=1, checkpoint_every=0,
                            precision=precision, channels_last=channels_last)
    logger = Recorder()
    params = [p for p in method.parameters() if p.requires_grad]
    opt.register_step_pre_hook(lambda *_: logger.grads.append(
        torch.cat([p.grad.flatten() if p.grad is not None else torch.zeros(p.numel()) for p in params])))
    torch.manual_seed(1)  # the views' random draws: the same in both precisions
    loader = train_loader(images(), int(cfg.data.batch_size), seed=0)
    fit(FitInputs(method, loader, lambda x: [aug(x) for _ in range(method.n_views)], opt, sched, WORLD, settings,
                  run_dir, logger))
    return logger, conv_dtypes, method


@pytest.mark.parametrize("method_name,bn,channels_last", CELLS,
                         ids=[f"{m}-{bn}-{'cl' if cl else 'nchw'}" for m, bn, cl in CELLS])
def test_every_forced_path_trains_and_bf16_agrees_with_fp32(method_name, bn, channels_last, tmp_path):
    fp32, dtypes32, m32 = train_cell(method_name, bn, channels_last, "32", tmp_path / "fp32")
    bf16, dtypes16, m16 = train_cell(method_name, bn, channels_last, "bf16", tmp_path / "bf16")
    assert dtypes32 == {torch.float32} and dtypes16 == {torch.bfloat16}  # autocast really ran (or really not)
    assert len(fp32.losses) == len(bf16.losses) == STEPS
    assert all(torch.isfinite(torch.tensor(fp32.losses + bf16.losses)))
    # step 1 starts from the same weights and views: the loss and the gradient agree within bf16's precision
    # (step 2 starts from weights that already differ by one bf16-sized step: only finite is asserted)
    assert abs(bf16.losses[0] - fp32.losses[0]) <= BF16_RTOL * abs(fp32.losses[0])
    g32, g16 = fp32.grads[0], bf16.grads[0]
    assert torch.nn.functional.cosine_similarity(g16, g32, dim=0) > GRAD_COSINE
    assert abs(float(g16.norm() / g32.norm()) - 1) < GRAD_NORM_RTOL
    for name, p in m16.named_parameters():  # autocast keeps fp32 master weights
        assert p.dtype == torch.float32 and torch.isfinite(p).all(), name
    if hasattr(m16, "queue"):  # MoCo's queue holds fp32 keys from the bf16 key encoder
        assert m16.queue.keys.dtype == torch.float32 and torch.isfinite(m16.queue.keys).all()
