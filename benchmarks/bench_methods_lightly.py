"""The six non-contrastive methods side by side with lightly (issue 20 item 5): throughput and kNN after
equal steps, on Fashion-MNIST, with the same settings.

For each of byol, simsiam, barlow_twins, vicreg, dino, swav:

sslkit:  the unmodified `sslkit.app.train.train(compose([...]))` with `method=<name>`, fp32
         (`trainer.precision=32`), 2 threads, the in-memory Fashion-MNIST training set, batched
         augmentation of the method's views on the main process, the engine loop (logging every 10
         steps, scheduler, EMA / centre / hooks) and its channels_last probe (a run of >= 50 steps times it).
lightly: the same method built from lightly 1.6's parts: torchvision resnet18 (fc removed), the
         lightly.models.modules heads (named heads where they match sslkit's layer for layer, else
         lightly's generic `ProjectionHead` with the same layers and biases), lightly.loss losses,
         lightly.models.utils (deactivate_requires_grad, update_momentum, get_weight_decay_parameters),
         lightly.utils.scheduler.cosine_schedule, lightly.utils.lars.LARS where the method uses LARS
         (torch SGD / AdamW otherwise), lightly.transforms for the views, in a torch DataLoader
         (num_workers=0, the faster setting in bench_e2e_lightly.py) over the same images as RGB PIL
         images; per-view forwards as lightly's examples.
Both:    the same ResNet-18 at 32 px, head sizes, optimiser (type, lr x B/256, weight decay, which
         parameters are out of decay / LARS adaptation, per-group lr rules), warm-up and cosine
         schedule (per step), momentum schedule, batch size, fp32, and number of optimizer steps.

Timing: as bench_e2e_lightly.py (its Interleaver): sslkit's loader is wrapped so that after every
`--block` sslkit steps one block of `--block` lightly steps runs in the same process (a fresh DataLoader
iterator per block); the first step of every block and the warm-up are not timed; images/s = batch /
median step time; the ratio is the median of same-round ratios (> 1: sslkit faster). lightly runs one
extra untimed step at the end so both have taken exactly the same number of optimizer steps.

Quality: the kNN top-1 (k = 20 and k = 200, T = 0.1) of each framework's evaluation encoder (DINO: the
teacher backbone, as sslkit's; the others: the online backbone), by the same evaluator
(`sslkit.evaluation.features.backbone_features` + `sslkit.evaluation.knn.knn_accuracy`) on a stratified
subset of the training set as the bank and of the test set as queries, plus a random-init ResNet-18.

Run:  .venv/bin/python benchmarks/bench_methods_lightly.py --threads 1 --rounds 12 --knn-train 10000 --knn-test 2000
      (the run in docs/benchmarks.md: 51 steps per method and framework, about 20 minutes on 2 cores);
      --losses-only times the Barlow Twins / VICReg losses alone.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torchvision
from _common import interleaved, machine_info, report
from bench_e2e_lightly import FMNIST_MEAN, FMNIST_STD, Interleaver, PILImages, log
from torch import nn

METHODS = ("byol", "simsiam", "barlow_twins", "vicreg", "dino", "swav")
NORMALIZE = {"mean": FMNIST_MEAN, "std": FMNIST_STD}


# ----------------------------------------------------------------------------------------- settings
@dataclass
class Setting:
    """One method's sslkit overrides and the numbers the lightly build reads (printed in full)."""

    overrides: list[str]
    optimizer: str  # lars | sgd | adamw
    lr: float  # base lr, x B/256
    weight_decay: float
    exclude_bias_and_norm: bool  # biases / norm parameters: no weight decay (and, LARS, no adaptation)
    warmup_epochs: float
    min_lr_ratio: float
    wd_end: float | None = None  # DINO: cosine weight-decay schedule


def settings(args: argparse.Namespace) -> dict[str, Setting]:
    d, n_dino, n_swav = args.proj_dim, args.dino_local, args.swav_local
    return {
        "byol": Setting(["method=byol"], "lars", 0.2, 1.5e-6, True, 10.0, 0.0),
        "simsiam": Setting(["method=simsiam"], "sgd", 0.05, 1e-4, False, 0.0, 0.0),
        "barlow_twins": Setting(["method=barlow_twins", f"head.hidden_dim={d}", f"head.out_dim={d}"],
                                "lars", 0.2, 1.5e-6, True, 10.0, 0.001),
        "vicreg": Setting(["method=vicreg", f"head.hidden_dim={d}", f"head.out_dim={d}"],
                          "lars", 0.2, 1e-6, True, 10.0, 0.001),
        "dino": Setting(["method=dino", f"method.out_dim={args.dino_out_dim}", "method.freeze_last_layer=0",
                         f"views={{set:dino,n_local:{n_dino}}}"], "adamw", 0.0005, 0.04, True, 10.0, 0.002,
                        wd_end=0.4),
        "swav": Setting(["method=swav", "method.queue_length=0", "method.freeze_prototypes=0",
                         f"views={{set:swav,n_local:{n_swav}}}"], "lars", 0.3, 1e-6, False, 10.0, 0.001),
    }


def warmup_steps(s: Setting, total: int, steps_per_epoch: int) -> int:
    """sslkit's rule (configs/optim/*.yaml max_warmup_fraction 0.2): warmup_epochs capped at 20% of the run."""
    return min(int(round(s.warmup_epochs * steps_per_epoch)), int(0.2 * total), max(0, total - 1))


# ------------------------------------------------------------------------------------------ lightly
def resnet18() -> nn.Module:
    model = torchvision.models.resnet18(weights=None)
    model.fc = nn.Identity()
    return model


def head(*blocks: tuple[int, int, bool, bool, bool]) -> nn.Module:
    """lightly's generic ProjectionHead from (in, out, batch norm, relu, bias) blocks."""
    from lightly.models.modules.heads import ProjectionHead

    return ProjectionHead([(i, o, nn.BatchNorm1d(o) if bn else None, nn.ReLU() if act else None, bias)
                           for i, o, bn, act, bias in blocks])


def frozen_in_place(module: nn.Module) -> nn.Module:
    from lightly.models.utils import deactivate_requires_grad

    deactivate_requires_grad(module)
    return module


def frozen(module: nn.Module) -> nn.Module:
    """A copy of `module` without gradients (a momentum / target network)."""
    return frozen_in_place(copy.deepcopy(module))


class LightlyMethod:
    """One method from lightly's parts: `model` (nn.ModuleDict), `transform`, `encoder()`, `loss(views, step)`
    and the hooks the step runs around the optimizer."""

    def __init__(self, name: str, args: argparse.Namespace) -> None:
        from lightly import loss as L
        from lightly.models.modules import heads as H
        from lightly.transforms import BYOLTransform, DINOTransform, SimSiamTransform, SwaVTransform
        from lightly.transforms.byol_transform import BYOLView1Transform, BYOLView2Transform

        self.name, size, d = name, args.image_size, args.proj_dim
        self.local = max(1, round(size * 96 / 224))  # sslkit.augment.views.local_size: 14 px at 32 px
        byol_views = BYOLTransform(
            view_1_transform=BYOLView1Transform(input_size=size, gaussian_blur=1.0, solarization_prob=0.0,
                                                normalize=NORMALIZE),
            view_2_transform=BYOLView2Transform(input_size=size, gaussian_blur=0.1, solarization_prob=0.2,
                                                normalize=NORMALIZE))
        m = nn.ModuleDict({"backbone": resnet18()})
        if name == "byol":
            m["projector"] = head((512, 4096, True, True, True), (4096, 256, False, False, True))
            m["predictor"] = head((256, 4096, True, True, True), (4096, 256, False, False, True))
            m["target_backbone"], m["target_projector"] = frozen(m["backbone"]), frozen(m["projector"])
            self.transform, self.criterion = byol_views, L.NegativeCosineSimilarity()
        elif name == "simsiam":
            m["projector"] = H.SimSiamProjectionHead(512, 2048, 2048)
            m["predictor"] = H.SimSiamPredictionHead(2048, 512, 2048)
            self.transform = SimSiamTransform(input_size=size, normalize=NORMALIZE)
            self.criterion = L.NegativeCosineSimilarity()
        elif name == "barlow_twins":
            m["projector"] = head((512, d, True, True, False), (d, d, True, True, False), (d, d, False, False, False))
            self.transform, self.criterion = byol_views, L.BarlowTwinsLoss(lambda_param=5e-3,
                                                                           gather_distributed=False)
        elif name == "vicreg":
            m["projector"] = head((512, d, True, True, True), (d, d, True, True, True), (d, d, False, False, False))
            self.transform = byol_views
            self.criterion = L.VICRegLoss(lambda_param=25.0, mu_param=25.0, nu_param=1.0)
        elif name == "dino":
            def dino_head() -> nn.Module:
                return H.DINOProjectionHead(512, 2048, 256, args.dino_out_dim, batch_norm=False,
                                            freeze_last_layer=0, norm_last_layer=True)

            m["head"], teacher_head = dino_head(), dino_head()  # weight_norm: no deepcopy, so a second head
            teacher_head.load_state_dict(m["head"].state_dict())  # ... starting equal to the student's
            m["teacher_backbone"], m["teacher_head"] = frozen(m["backbone"]), teacher_head
            frozen_in_place(teacher_head)
            self.transform = DINOTransform(global_crop_size=size, local_crop_size=self.local,
                                           n_local_views=args.dino_local, normalize=NORMALIZE)
            self.criterion = L.DINOLoss(output_dim=args.dino_out_dim, warmup_teacher_temp=0.04, teacher_temp=0.07,
                                        warmup_teacher_temp_epochs=30, student_temp=0.1, center_momentum=0.9)
        elif name == "swav":
            m["projector"] = head((512, 2048, True, True, True), (2048, 128, False, False, True))
            m["prototypes"] = H.SwaVPrototypes(128, 3000, n_steps_frozen_prototypes=0)
            self.transform = SwaVTransform(crop_sizes=(size, self.local), crop_counts=(2, args.swav_local),
                                           crop_min_scales=(0.14, 0.05), crop_max_scales=(1.0, 0.14),
                                           normalize=NORMALIZE)
            self.criterion = L.SwaVLoss(temperature=0.1, sinkhorn_iterations=3, sinkhorn_epsilon=0.05)
        else:
            raise ValueError(name)
        self.model = m.train()

    def trainable(self) -> list[nn.Module]:
        return [mod for key, mod in self.model.items() if not key.startswith(("target_", "teacher_"))]

    def encoder(self) -> nn.Module:
        return self.model["teacher_backbone" if self.name == "dino" else "backbone"]

    def loss(self, views: Sequence[torch.Tensor], step: int) -> torch.Tensor:
        m = self.model
        if self.name in ("byol", "simsiam"):
            z = [m["projector"](m["backbone"](x)) for x in views]
            p = [m["predictor"](zi) for zi in z]
            if self.name == "simsiam":
                return 0.5 * (self.criterion(p[0], z[1].detach()) + self.criterion(p[1], z[0].detach()))
            with torch.no_grad():
                t = [m["target_projector"](m["target_backbone"](x)) for x in views]
            # BYOL's L + L~ (eq. 2) = 4 + 2 (D(p1, z'2) + D(p2, z'1)), D lightly's negative cosine: sslkit's scale
            return 4.0 + 2.0 * (self.criterion(p[0], t[1]) + self.criterion(p[1], t[0]))
        if self.name in ("barlow_twins", "vicreg"):
            return self.criterion(*[m["projector"](m["backbone"](x)) for x in views])
        if self.name == "dino":
            with torch.no_grad():
                teacher = [m["teacher_head"](m["teacher_backbone"](x)) for x in views[:2]]
            student = [m["head"](m["backbone"](x)) for x in views]
            return self.criterion(teacher, student, epoch=0)  # sslkit: int(epoch) = 0 throughout a < 1-epoch run
        m["prototypes"].normalize()  # SwAV, lightly's example: prototypes on the sphere before the forward
        scores = [m["prototypes"](nn.functional.normalize(m["projector"](m["backbone"](x)), dim=1)) for x in views]
        return self.criterion(scores[:2], scores[2:])

    def after_backward(self) -> None:
        if self.name == "dino":  # per-parameter clipping at 3.0 (main_dino.py's clip_gradients)
            for mod in self.trainable():
                for p in mod.parameters():
                    if p.grad is not None:
                        torch.nn.utils.clip_grad_norm_(p, 3.0)
            self.model["head"].cancel_last_layer_gradients(current_epoch=0)  # freeze_last_layer=0: a no-op

    @torch.no_grad()
    def after_step(self, step: int, total: int) -> None:
        from lightly.models.utils import update_momentum
        from lightly.utils.scheduler import cosine_schedule

        pairs = {"byol": [("backbone", "target_backbone"), ("projector", "target_projector")],
                 "dino": [("backbone", "teacher_backbone"), ("head", "teacher_head")]}.get(self.name, [])
        tau = cosine_schedule(step, total + 1, 0.996, 1.0)  # 1 - 0.004 (cos(pi k / K) + 1) / 2, as sslkit
        for online, target in pairs:
            update_momentum(self.model[online], self.model[target], m=tau)


class LightlyRunner:
    """A LightlyMethod trained in blocks of steps (fresh DataLoader iterator each), sslkit's schedules."""

    def __init__(self, name: str, s: Setting, args: argparse.Namespace, images: torch.Tensor, total: int,
                 steps_per_epoch: int) -> None:
        from lightly.models.utils import get_weight_decay_parameters
        from lightly.utils.lars import LARS

        self.method = LightlyMethod(name, args)
        self.dataset = PILImages(images, self.method.transform)
        self.s, self.args, self.total, self.step = s, args, total, 0
        self.warmup = warmup_steps(s, total, steps_per_epoch)
        lr = s.lr * args.batch_size / 256
        modules = self.method.trainable()
        if name == "simsiam":  # SGD, wd on every parameter; the predictor's rate fixed (--fix-pred-lr)
            rest = [p for key, mod in self.method.model.items() if key in ("backbone", "projector")
                    for p in mod.parameters()]
            groups = [{"params": rest, "fixed": False},
                      {"params": list(self.method.model["predictor"].parameters()), "fixed": True}]
        elif s.exclude_bias_and_norm:
            decay, no_decay = get_weight_decay_parameters(modules)
            decay, no_decay = [p for p in decay if p.requires_grad], [p for p in no_decay if p.requires_grad]
            # Barlow Twins: biases and norms at 0.0048 / 0.2 of the rate (official param_biases group)
            groups = [{"params": decay}, {"params": no_decay, "weight_decay": 0.0,
                                          "lr_scale": 0.024 if name == "barlow_twins" else 1.0}]
        else:
            groups = [{"params": [p for mod in modules for p in mod.parameters() if p.requires_grad]}]
        for g in groups:
            g.setdefault("lr_scale", 1.0)
            g["lr"] = lr * g["lr_scale"]
        self.base_lr = lr
        if s.optimizer == "lars":  # groups with weight_decay 0 are excluded from adaptation
            self.optimizer: torch.optim.Optimizer = LARS(groups, lr=lr, momentum=0.9, weight_decay=s.weight_decay,
                                                         trust_coefficient=0.001)
        elif s.optimizer == "sgd":
            self.optimizer = torch.optim.SGD(groups, lr=lr, momentum=0.9, weight_decay=s.weight_decay)
        else:
            self.optimizer = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8,
                                               weight_decay=s.weight_decay)

    def lr_factor(self, step: int) -> float:
        """Linear warm-up then cosine to min_lr_ratio, per step (lightly's cosine_schedule)."""
        from lightly.utils.scheduler import cosine_schedule

        if step < self.warmup:
            return (step + 1) / self.warmup
        return cosine_schedule(step - self.warmup, self.total - self.warmup + 1, 1.0, self.s.min_lr_ratio)

    def set_schedules(self, step: int) -> None:
        from lightly.utils.scheduler import cosine_schedule

        factor = self.lr_factor(step)
        for g in self.optimizer.param_groups:
            g["lr"] = self.base_lr * g["lr_scale"] * (1.0 if g.get("fixed") else factor)
            if self.s.wd_end is not None and g["weight_decay"] > 0:  # DINO: wd 0.04 -> 0.4 on a cosine
                g["weight_decay"] = cosine_schedule(step, self.total + 1, self.s.weight_decay, self.s.wd_end)

    def block(self, steps: int) -> list[float]:
        """Seconds of each of `steps` training steps (batch wait + augmentation + step)."""
        loader = torch.utils.data.DataLoader(self.dataset, batch_size=self.args.batch_size, shuffle=True,
                                             drop_last=True, num_workers=0)
        times, it, loss = [], iter(loader), torch.zeros(())
        for _ in range(steps):
            start = time.perf_counter()
            views, _ = next(it)
            self.set_schedules(self.step)
            loss = self.method.loss(views, self.step)
            loss.backward()
            self.method.after_backward()
            self.optimizer.step()
            self.optimizer.zero_grad()
            self.method.after_step(self.step, self.total)
            self.step += 1
            times.append(time.perf_counter() - start)
        del it
        self.last_loss = float(loss.detach())
        if not math.isfinite(self.last_loss):
            raise RuntimeError(f"lightly {self.method.name} diverged")
        return times


# ------------------------------------------------------------------------------------------- run
def sslkit_run(name: str, s: Setting, args: argparse.Namespace, runner: LightlyRunner, total: int,
               workdir: Path) -> tuple[dict[str, list[list[float]]], Path]:
    """One real `sslkit train` of `name` with lightly blocks interleaved; per-round per-step seconds."""
    import sslkit.app.train
    import sslkit.engine.hardware
    from sslkit.config import compose

    interleaver = Interleaver(args, {"lightly": runner}, "sslkit")
    cfg = compose([*s.overrides, "data=fashion_mnist", f"data.batch_size={args.batch_size}",
                   f"data.image_size={args.image_size}", f"trainer.max_steps={total}", "trainer.progress=none",
                   f"trainer.threads={args.threads}", "trainer.precision=32", "device=cpu", "seed=0",
                   f"out={workdir / name}"])
    real_train_loader = sslkit.app.train.train_loader
    # a run this short would keep NCHW untimed (PROBE_MIN_STEPS); a real run times the channels_last probe
    min_steps = 0 if args.probe_layout else sslkit.engine.hardware.PROBE_MIN_STEPS
    with mock_attr(sslkit.app.train, "train_loader", lambda *a, **kw: interleaver.wrap(real_train_loader(*a, **kw))), \
            mock_attr(sslkit.engine.hardware, "PROBE_MIN_STEPS", min_steps), \
            contextlib.redirect_stdout(io.StringIO()):  # train() prints a summary line
        run_dir = Path(sslkit.app.train.train(cfg))
    if interleaver.rounds_done != args.rounds:
        raise RuntimeError(f"only {interleaver.rounds_done} of {args.rounds} rounds ran")
    runner.block(total - runner.step)  # the untimed last step(s): both frameworks end after `total` steps
    layout = "channels_last" if "channels_last: true" in (run_dir / "config.yaml").read_text() else "NCHW"
    how = "chosen by its timed probe" if args.probe_layout or total >= 50 else "a short run's untimed NCHW"
    log(f"  sslkit ran {total} steps ({layout}, {how}); lightly ran {runner.step} steps "
        f"(last loss {runner.last_loss:.4f})")
    return interleaver.times, run_dir


@contextlib.contextmanager
def mock_attr(obj: Any, attr: str, value: Any):
    from unittest import mock

    with mock.patch.object(obj, attr, value):
        yield


def time_losses(args: argparse.Namespace) -> None:
    """Forward + backward of the redundancy-reduction losses alone on (batch, proj_dim) embeddings, interleaved:
    sslkit's pure functions against lightly's loss modules (where the VICReg step's time goes)."""
    from lightly.loss import BarlowTwinsLoss, VICRegLoss

    from sslkit.losses.barlow_twins import barlow_twins_loss
    from sslkit.losses.vicreg import vicreg_loss

    g = torch.Generator().manual_seed(0)
    a = torch.randn(args.batch_size, args.proj_dim, generator=g).requires_grad_()
    b = torch.randn(args.batch_size, args.proj_dim, generator=g).requires_grad_()
    vic, bt = VICRegLoss(lambda_param=25.0, mu_param=25.0, nu_param=1.0), BarlowTwinsLoss(5e-3, False)
    times = interleaved({
        "sslkit vicreg_loss": lambda: vicreg_loss(a, b, 25.0, 25.0, 1.0).backward(),
        "lightly VICRegLoss": lambda: vic(a, b).backward(),
        "sslkit barlow_twins_loss": lambda: barlow_twins_loss(a, b, 5e-3).backward(),
        "lightly BarlowTwinsLoss": lambda: bt(a, b).backward(),
    }, repeats=10, warmup=2)
    log(report(times, None, f"loss forward + backward alone, ({args.batch_size}, {args.proj_dim}) embeddings, "
                            "per call"))


class KNN:
    """The same evaluator for every encoder: sslkit's features and weighted kNN on fixed subsets."""

    def __init__(self, args: argparse.Namespace) -> None:
        from sslkit.config import compose
        from sslkit.data import build_dataset

        self.data = compose(["data=fashion_mnist", f"data.image_size={args.image_size}"]).data
        self.bank = build_dataset(self.data, "train", subset=args.knn_train)
        self.queries = build_dataset(self.data, "test", subset=args.knn_test)

    def __call__(self, encoder: nn.Module) -> dict[int, float]:
        from sslkit.evaluation.features import backbone_features
        from sslkit.evaluation.knn import knn_accuracy

        cpu = torch.device("cpu")
        train = backbone_features(encoder, self.bank, self.data, cpu, progress="none")
        test = backbone_features(encoder, self.queries, self.data, cpu, progress="none")
        acc = knn_accuracy(train, self.bank.targets.long(), test, self.queries.targets.long(), ks=(20, 200),
                           temperature=0.1, num_classes=10)
        return {k: v["top1"] for k, v in acc.items()}


def sslkit_encoder(run_dir: Path) -> nn.Module:
    """The exported evaluation encoder (backbone.pt: the method's `encoder()`) in a fresh ResNet-18."""
    model = resnet18()
    model.load_state_dict(torch.load(run_dir / "backbone.pt", map_location="cpu", weights_only=True))
    return model


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--block", type=int, default=4, help="steps per block; the first of each is not timed")
    p.add_argument("--rounds", type=int, default=6, help="blocks per framework and method")
    p.add_argument("--warmup", type=int, default=2, help="warm-up steps per framework, not timed")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--proj-dim", type=int, default=2048, help="Barlow Twins / VICReg projector widths")
    p.add_argument("--dino-out-dim", type=int, default=4096)
    p.add_argument("--dino-local", type=int, default=4)
    p.add_argument("--swav-local", type=int, default=4)
    p.add_argument("--no-probe-layout", dest="probe_layout", action="store_false",
                   help="keep the untimed NCHW of a run under 50 steps instead of the channels_last probe")
    p.add_argument("--losses-only", action="store_true",
                   help="only time the Barlow Twins / VICReg losses alone (sslkit's against lightly's) and exit")
    p.add_argument("--knn-train", type=int, default=5000, help="kNN bank: stratified training images")
    p.add_argument("--knn-test", type=int, default=1000, help="kNN queries: stratified test images")
    args = p.parse_args(argv)
    if args.block < 2 or args.warmup < 1:
        p.error("--block must be >= 2 and --warmup >= 1")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if unknown := [m for m in methods if m not in METHODS]:
        p.error(f"unknown methods {unknown}; valid: {', '.join(METHODS)}")
    torch.set_num_threads(args.threads)
    cpu = (f"torch.backends.cpu.get_cpu_capability() = {torch.backends.cpu.get_cpu_capability()}, "
           f"torch.ops.mkldnn._is_mkldnn_bf16_supported() = {torch.ops.mkldnn._is_mkldnn_bf16_supported()}")
    log(machine_info({"argv": " ".join(sys.argv[1:]) or "(defaults)", "cpu": cpu,
                      "nice": os.nice(0)}))
    time_losses(args)
    if args.losses_only:
        return
    total = args.warmup + args.rounds * args.block + 1
    log(f"Fashion-MNIST train set (60000 images), torchvision ResNet-18 (fc removed), {args.image_size} px, "
        f"batch {args.batch_size}, fp32 both, {total} optimizer steps per method and framework; "
        f"{args.rounds} rounds x {args.block}-step blocks ({args.block - 1} timed), {args.warmup} warm-up steps; "
        f"kNN bank {args.knn_train} train / {args.knn_test} test images (stratified), T 0.1")

    from sslkit.data import build_dataset

    images = build_dataset({"name": "fashion_mnist"}, "pretrain").images  # (N, 1, 28, 28) uint8
    spe = images.shape[0] // args.batch_size
    knn = KNN(args)
    torch.manual_seed(0)
    rows: dict[str, dict[str, Any]] = {"random init": {"knn": knn(resnet18())}}
    log(f"random-init ResNet-18: kNN top-1 k=20 {rows['random init']['knn'][20]:.2f}  "
        f"k=200 {rows['random init']['knn'][200]:.2f}")
    workdir = Path(tempfile.mkdtemp(prefix="bench_methods_"))
    start = time.time()
    all_settings = settings(args)
    try:
        for name in methods:
            s, began = all_settings[name], time.time()
            log(f"\n== {name}: sslkit overrides {' '.join(s.overrides)}; optimizer {s.optimizer} lr {s.lr} x B/256 "
                f"wd {s.weight_decay}{f' -> {s.wd_end}' if s.wd_end else ''} "
                f"bias/norm out of decay{' and LARS adaptation' if s.optimizer == 'lars' else ''}: "
                f"{s.exclude_bias_and_norm}; warm-up {warmup_steps(s, total, spe)} steps then cosine to "
                f"{s.min_lr_ratio} x")
            torch.manual_seed(0)
            runner = LightlyRunner(name, s, args, images, total, spe)
            log(f"  lightly: {type(runner.method.transform).__name__}, "
                f"{ {k: type(v).__name__ for k, v in runner.method.model.items()} }, "
                f"{type(runner.method.criterion).__name__}, "
                f"{type(runner.optimizer).__name__} ({len(runner.optimizer.param_groups)} groups)")
            times, run_dir = sslkit_run(name, s, args, runner, total, workdir)
            ss, lt = [t for b in times["sslkit"] for t in b], [t for b in times["lightly"] for t in b]
            ratio = statistics.median(sum(b) / sum(a) for a, b in zip(times["sslkit"], times["lightly"], strict=True))
            rows[name] = {"sslkit_ips": args.batch_size / statistics.median(ss),
                          "lightly_ips": args.batch_size / statistics.median(lt), "ratio": ratio,
                          "timed": len(ss), "knn_sslkit": knn(sslkit_encoder(run_dir)),
                          "knn_lightly": knn(runner.method.encoder())}
            r = rows[name]
            log(f"  {name}: sslkit {r['sslkit_ips']:.1f} img/s, lightly {r['lightly_ips']:.1f} img/s, "
                f"sslkit/lightly {ratio:.2f}x ({len(ss)} timed steps each); kNN top-1 k=20/k=200: sslkit "
                f"{r['knn_sslkit'][20]:.2f}/{r['knn_sslkit'][200]:.2f}, lightly "
                f"{r['knn_lightly'][20]:.2f}/{r['knn_lightly'][200]:.2f}; {time.time() - began:.0f}s")
            shutil.rmtree(run_dir, ignore_errors=True)
            del runner
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    log("\n| method | sslkit img/s | lightly img/s | sslkit / lightly | kNN k=20 sslkit / lightly | "
        "kNN k=200 sslkit / lightly |\n|---|---|---|---|---|---|")
    for name in methods:
        r = rows[name]
        log(f"| {name} | {r['sslkit_ips']:.1f} | {r['lightly_ips']:.1f} | {r['ratio']:.2f}x | "
            f"{r['knn_sslkit'][20]:.2f} / {r['knn_lightly'][20]:.2f} | "
            f"{r['knn_sslkit'][200]:.2f} / {r['knn_lightly'][200]:.2f} |")
    ri = rows["random init"]["knn"]
    log(f"| random-init ResNet-18 | | | | {ri[20]:.2f} | {ri[200]:.2f} |")
    log(f"\nload average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
        f"total wall time {time.time() - start:.0f}s")


if __name__ == "__main__":
    main()
