"""Per-step overhead of sslkit's training step against a bare PyTorch step doing the same tensor work.

sslkit step (what engine.loop.fit runs per batch):
    out = method(views); backward; optimizer.step(); zero_grad; scheduler.step(); method.after_step(p)
  mocov2: query fwd+bwd, key encoder forward (shuffle + SplitBatchNorm by default), InfoNCE against
          the queue, EMA update of the key encoder and enqueue;
  simclr: one forward/backward of both views through encoder + head and NT-Xent.
Baseline (written inline here, same weights, same pre-made views, same optimizer settings):
  mocov2: query encoder fwd+bwd on view 1, key encoder forward (no grad, plain BN) on view 2, the
          reference MoCo InfoNCE (cat([l_pos, l_neg]) / T, F.cross_entropy), optimizer step, EMA via
          torch._foreach_mul_/_foreach_add_, slice enqueue;
  simclr: encoder+head fwd+bwd on the concatenated views, NT-Xent inline (masked_fill with a
          precomputed diagonal mask + F.cross_entropy), optimizer step.

mocov2 is reported twice: with its default shuffle_bn=split (SplitBatchNorm over 8 groups, part of
the method's semantics on one device) and with shuffle_bn=none (plain BN, the baseline's work).
With --candidates (default) both also run with the suggested fixes patched into the instance (see
`with_candidate_fixes`; nothing in sslkit is modified). The breakdown times each piece alone.
Timings are interleaved (A B C, B C A, ...) because the machine is shared: read medians, minimums
and the paired ratio together.

Run:  .venv/bin/python benchmarks/bench_step_overhead.py --batch-size 128 --threads 2
"""

from __future__ import annotations

import argparse
import sys
import time
import types

import torch
import torch.nn.functional as F
from _common import interleaved, machine_info, plain_bn_copy, report
from torch import Tensor, nn

from sslkit.build import build_method
from sslkit.config import compose
from sslkit.contrastive.ntxent import ntxent_loss
from sslkit.contrastive.shuffle_bn import shuffle_local, unshuffle_local
from sslkit.engine.loop import autocast
from sslkit.engine.optim import build_optimizer
from sslkit.engine.schedule import build_scheduler

TOTAL_STEPS = 1_000_000  # schedule length: the lr never reaches 0 during the benchmark
CPU = torch.device("cpu")


def log(text: str) -> None:
    print(text, flush=True)


# --------------------------------------------------------------------------------------- sslkit side
def sslkit_parts(overrides: list[str], batch: int, seed: int = 0):
    cfg = compose(overrides)
    torch.manual_seed(seed)
    method = build_method(cfg).to(CPU)
    method.train()
    optimizer = build_optimizer(method, cfg.optim, batch)
    scheduler = build_scheduler(optimizer, cfg.optim, TOTAL_STEPS, max(1, 60000 // batch))
    return cfg, method, optimizer, scheduler


def sslkit_step(method, optimizer, scheduler, views):
    """The body of engine.loop.fit for one batch on one device (minus logging/checkpointing)."""
    counter = {"step": 0}

    def step():
        with autocast(CPU, "32"):
            out = method(views, Tensor.backward)  # fit's backward without a grad scaler
        if not out.backward_done:
            out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        counter["step"] += 1
        method.after_step(counter["step"] / TOTAL_STEPS)
        return out.loss

    return step


# ------------------------------------------------------------------------------------- baselines
class MoCoBaseline:
    """Bare MoCo v2 step: the tensor work of the reference implementation, nothing else."""

    def __init__(self, method, cfg, batch: int) -> None:
        self.encoder_q = nn.Sequential(plain_bn_copy(method.backbone), plain_bn_copy(method.head))
        self.encoder_k = nn.Sequential(plain_bn_copy(method.backbone_k), plain_bn_copy(method.head_k))
        for p in self.encoder_k.parameters():
            p.requires_grad_(False)
        self.encoder_q.train()
        self.encoder_k.train()
        self.params_q = list(self.encoder_q.parameters())
        self.params_k = list(self.encoder_k.parameters())
        self.optimizer = build_optimizer(self.encoder_q, cfg.optim, batch)
        self.queue = method.queue.keys.clone()
        self.ptr = 0
        self.temperature = float(method.temperature)
        self.momentum = float(method.base_momentum)

    def loss(self, q, k):
        l_pos = (q * k).sum(dim=1, keepdim=True)
        l_neg = q @ self.queue.t()
        logits = torch.cat([l_pos, l_neg], dim=1) / self.temperature
        return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long))

    @torch.no_grad()
    def key(self, x):
        return F.normalize(self.encoder_k(x), dim=1)

    @torch.no_grad()
    def ema_and_enqueue(self, k):
        torch._foreach_mul_(self.params_k, self.momentum)
        torch._foreach_add_(self.params_k, self.params_q, alpha=1.0 - self.momentum)
        n, size = k.shape[0], self.queue.shape[0]
        end = self.ptr + n
        if end <= size:
            self.queue[self.ptr:end] = k
        else:  # wrap around
            self.queue[self.ptr:] = k[:size - self.ptr]
            self.queue[:end - size] = k[size - self.ptr:]
        self.ptr = end % size

    def step_fn(self, views):
        x_q, x_k = views

        def step():
            k = self.key(x_k)
            q = F.normalize(self.encoder_q(x_q), dim=1)
            loss = self.loss(q, k)
            loss.backward()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.ema_and_enqueue(k)
            return loss

        return step


class SimCLRBaseline:
    """Bare SimCLR step: one pass over both views, NT-Xent inline."""

    def __init__(self, method, cfg, batch: int, baseline_optim: str) -> None:
        self.encoder = nn.Sequential(plain_bn_copy(method.backbone), plain_bn_copy(method.head))
        self.encoder.train()
        if baseline_optim == "same":
            self.optimizer = build_optimizer(self.encoder, cfg.optim, batch)
        else:
            lr = method_lr(cfg, batch)
            self.optimizer = torch.optim.SGD(self.encoder.parameters(), lr=lr, momentum=0.9,
                                             weight_decay=float(cfg.optim.weight_decay))
        self.temperature = float(method.temperature)
        self.mask = torch.eye(2 * batch, dtype=torch.bool)
        self.targets = torch.cat([torch.arange(batch) + batch, torch.arange(batch)])

    def loss(self, z):
        z = F.normalize(z, dim=1)
        logits = (z @ z.t()) / self.temperature
        return F.cross_entropy(logits.masked_fill(self.mask, float("-inf")), self.targets)

    def step_fn(self, views):
        x = torch.cat(list(views))

        def step():
            loss = self.loss(self.encoder(x))
            loss.backward()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            return loss

        return step


def method_lr(cfg, batch: int) -> float:
    from sslkit.engine.optim import scaled_lr

    return scaled_lr(float(cfg.optim.lr), batch, str(cfg.optim.lr_scaling))


# ----------------------------------------------------------------------------------- benchmarks
def common_overrides(args) -> list[str]:
    out = [f"data.batch_size={args.batch_size}", f"data.image_size={args.image_size}"]
    if args.small_images:
        out.append("backbone.small_images=true")
    return out


def bench_mocov2(args, views) -> None:
    base = ["method=mocov2", f"method.queue_size={args.queue_size}", *common_overrides(args)]
    cfg, split, opt_s, sch_s = sslkit_parts(base, args.batch_size)
    _, plain, opt_p, sch_p = sslkit_parts([*base, "method.shuffle_bn=none"], args.batch_size)
    plain.load_state_dict(split.state_dict())  # same weights and queue (SplitBatchNorm2d keys = BN keys)
    baseline = MoCoBaseline(plain, cfg, args.batch_size)
    log(f"\n=== mocov2: ResNet-18 + MLP head, batch {args.batch_size}, {args.image_size}px, queue "
        f"{args.queue_size}, tau {split.temperature}, m {split.base_momentum}, "
        f"split_bn_groups {cfg.method.split_bn_groups}, optimizer {type(opt_s).__name__}")
    candidates = {
        "sslkit mocov2 (shuffle_bn=split, default)": sslkit_step(split, opt_s, sch_s, views),
        "sslkit mocov2 (shuffle_bn=none)": sslkit_step(plain, opt_p, sch_p, views),
    }
    if args.candidates:  # the same two runs with the suggested fixes patched into the instances
        for name, shuffle_bn, src in (("split", "split", split), ("none", "none", plain)):
            _, fixed, opt_f, sch_f = sslkit_parts([*base, f"method.shuffle_bn={shuffle_bn}"], args.batch_size)
            fixed.load_state_dict(src.state_dict())
            with_candidate_fixes(fixed)
            candidates[f"sslkit mocov2 ({name}) + candidate fixes"] = sslkit_step(fixed, opt_f, sch_f, views)
    candidates["baseline (plain BN, inline)"] = baseline.step_fn(views)
    times = interleaved(candidates, args.repeats, args.steps_per_block, args.warmup,
                        log if args.verbose else None)
    log(report(times, "baseline (plain BN, inline)", f"full training step, per step ({args.repeats} repeats "
               f"x {args.steps_per_block} steps, {args.warmup} warm-up steps excluded):"))
    if args.breakdown:
        mocov2_breakdown(args, cfg, split, plain, baseline, views)



# ------------------------------------------------------------------ candidate fixes (for the breakdown)
def infonce_scaled_first(q, k, queue, temperature):
    """InfoNCE with 1/tau folded into q (N x D) instead of dividing the N x (1+K) logits."""
    q = q / temperature
    logits = torch.cat([(q * k).sum(dim=1, keepdim=True), q @ queue.t()], dim=1)
    return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long))


def ntxent_scatter(z1, z2, temperature, all_z1=None, all_z2=None, offset=0):
    """sslkit's ntxent_loss with the self-similarity removed by one scatter of -inf (no 2B x 2T int64
    one-hot, no bool copy) and 1/tau folded into the 2B x D anchors."""
    z1, z2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    all_z1 = z1 if all_z1 is None else F.normalize(all_z1, dim=1)
    all_z2 = z2 if all_z2 is None else F.normalize(all_z2, dim=1)
    b, total = z1.shape[0], all_z1.shape[0]
    candidates = torch.cat([all_z1, all_z2])
    anchors = torch.cat([z1, z2]) / temperature
    logits = anchors @ candidates.t()
    local = torch.arange(b, device=z1.device) + offset
    self_idx = torch.cat([local, local + total])
    pos_idx = torch.cat([local + total, local])
    logits = logits.scatter(1, self_idx.unsqueeze(1), float("-inf"))
    return F.cross_entropy(logits, pos_idx)


def with_candidate_fixes(method) -> None:
    """Patch one MoCo instance (not sslkit) with the suggested fixes: no per-step clone of the queue
    (it is only written in after_step, after backward) and 1/tau folded into q. Non-symmetric only."""
    from sslkit.methods.base import StepOutput

    def training_step(self, views):
        x_q, x_k = views[0], views[1]
        k = self._key(x_k)
        q = self._query(x_q) / self.temperature
        logits = torch.cat([(q * k).sum(dim=1, keepdim=True), q @ self.queue.keys.t()], dim=1)
        loss = F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))
        self._pending = [k]
        acc = (logits.detach().argmax(1) == 0).float().mean()
        return StepOutput(loss, {"loss": loss.detach(), "acc": acc})

    assert not method.symmetric
    method.training_step = types.MethodType(training_step, method)


@torch.no_grad()
def lars_step_inplace(optimizer):
    """sslkit's LARS update, same math, with fewer passes over the weights: the trust ratio becomes a
    Python float and scales the momentum update directly (no grad.mul copy, no torch.where, no clone)."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p.grad is None:
                continue
            grad, trust = p.grad, 1.0
            if not group["lars_exclude"]:
                grad = grad.add(p, alpha=group["weight_decay"])
                w_norm, g_norm = float(torch.linalg.vector_norm(p)), float(torch.linalg.vector_norm(grad))
                if w_norm > 0 and g_norm > 0:
                    trust = group["trust_coefficient"] * w_norm / (g_norm + group["eps"])
            state = optimizer.state[p]
            buf = state.get("inplace_buffer")
            if buf is None:
                state["inplace_buffer"] = buf = torch.mul(grad, trust)
            else:
                buf.mul_(group["momentum"]).add_(grad, alpha=trust)
            p.add_(buf, alpha=-group["lr"])


# ------------------------------------------------------------------------------------- breakdowns
def show(title, fns, repeats, baseline=None):
    log(report(interleaved(fns, repeats, 1, 1), baseline, title))


def optimizer_breakdown(args, model, cfg, x) -> None:
    """optimizer.step alone on fixed gradients: sslkit's optimizer vs torch SGD (default / foreach)."""
    model(x).sum().backward()
    sslkit_opt = build_optimizer(model, cfg.optim, args.batch_size)
    params = [p for p in model.parameters() if p.requires_grad]
    fns = {f"sslkit build_optimizer -> {type(sslkit_opt).__name__}.step": sslkit_opt.step}
    if type(sslkit_opt).__name__ == "LARS":
        fns["LARS, trust as a float (candidate fix)"] = lambda: lars_step_inplace(sslkit_opt)
    fns["torch SGD.step (foreach=None: loop on CPU)"] = torch.optim.SGD(
        params, lr=0.1, momentum=0.9, weight_decay=1e-4).step
    fns["torch SGD.step (foreach=True)"] = torch.optim.SGD(
        params, lr=0.1, momentum=0.9, weight_decay=1e-4, foreach=True).step
    n = sum(p.numel() for p in params)
    show(f" optimizer.step on fixed gradients ({n / 1e6:.1f}M params):", fns, args.breakdown_repeats,
         "torch SGD.step (foreach=None: loop on CPU)")


def mocov2_breakdown(args, cfg, split, plain, baseline, views) -> None:
    """Each piece of the step timed alone, interleaved with the baseline's version of the piece."""
    x_q, x_k = views
    n = x_q.shape[0]
    q_leaf = F.normalize(torch.randn(n, 128), dim=1).requires_grad_(True)
    k = F.normalize(torch.randn(n, 128), dim=1)
    queue = split.queue.keys.clone()
    tau = split.temperature
    log("breakdown, each piece alone (median / min over interleaved repeats):")

    def fwd_bwd(module):
        def run():
            module(x_q).sum().backward()
            for p in module.parameters():
                p.grad = None
        return run

    show(" query encoder (backbone + head) fwd+bwd:", {
        "SplitBatchNorm2d (G=8)": fwd_bwd(nn.Sequential(split.backbone, split.head)),
        "plain BatchNorm2d": fwd_bwd(nn.Sequential(plain.backbone, plain.head)),
    }, args.breakdown_repeats, "plain BatchNorm2d")
    show(" key encoder forward (no grad), incl. shuffle/unshuffle where used:", {
        "sslkit _key, shuffle_bn=split": lambda: split._key(x_k),
        "sslkit _key, shuffle_bn=none": lambda: plain._key(x_k),
        "baseline key (plain BN)": lambda: baseline.key(x_k),
    }, args.breakdown_repeats, "baseline key (plain BN)")

    def run_backward(loss):
        loss.backward()
        q_leaf.grad = None

    from sslkit.contrastive.infonce import infonce_loss

    show(f" InfoNCE fwd+bwd on a leaf q ({n} x {1 + queue.shape[0]} logits):", {
        "sslkit training_step loss: clone queue + _contrast (loss+acc)":
            lambda: run_backward(split._contrast(q_leaf, k, split.queue.keys.clone().detach())[0]),
        "sslkit _contrast (no queue clone)": lambda: run_backward(split._contrast(q_leaf, k, queue)[0]),
        "sslkit infonce_loss (no acc, no clone)": lambda: run_backward(infonce_loss(q_leaf, k, queue, tau)[0]),
        "candidate: q/tau first, no acc, no clone":
            lambda: run_backward(infonce_scaled_first(q_leaf, k, queue, tau)),
        "baseline (reference MoCo math)": lambda: run_backward(baseline.loss(q_leaf, k)),
    }, args.breakdown_repeats, "baseline (reference MoCo math)")

    def after_step_sslkit():
        split._pending = [k]
        split.after_step(0.5)

    def shuffle_roundtrip():
        _, inverse = shuffle_local(x_k)
        unshuffle_local(k, inverse)

    logits = torch.cat([(q_leaf * k).sum(1, keepdim=True), q_leaf @ queue.t()], 1).detach() / tau
    show(" small pieces:", {
        f"queue.keys.clone() (K={queue.shape[0]})": lambda: split.queue.keys.clone().detach(),
        f"acc = (logits.argmax(1) == 0).float().mean() on {n} x {logits.shape[1]}":
            lambda: (logits.argmax(1) == 0).float().mean(),
        "shuffle_local + unshuffle_local": shuffle_roundtrip,
        "sslkit after_step (ema_update x2 + queue.push)": after_step_sslkit,
        "baseline EMA (_foreach on cached lists) + enqueue": lambda: baseline.ema_and_enqueue(k),
    }, args.breakdown_repeats)
    model = nn.Sequential(plain_bn_copy(plain.backbone), plain_bn_copy(plain.head))
    optimizer_breakdown(args, model, cfg, x_q)


def bench_simclr(args, views) -> None:
    base = ["method=simclr", *common_overrides(args)]
    cfg, method, opt, sch = sslkit_parts(base, args.batch_size)
    baseline = SimCLRBaseline(method, cfg, args.batch_size, args.baseline_optim)
    log(f"\n=== simclr: ResNet-18 + MLP head, batch {args.batch_size} (x2 views), {args.image_size}px, "
        f"tau {method.temperature}, optimizer sslkit {type(opt).__name__} / baseline "
        f"{type(baseline.optimizer).__name__}")
    candidates = {
        "sslkit simclr": sslkit_step(method, opt, sch, views),
        "baseline (inline NT-Xent)": baseline.step_fn(views),
    }
    times = interleaved(candidates, args.repeats, args.steps_per_block, args.warmup,
                        log if args.verbose else None)
    log(report(times, "baseline (inline NT-Xent)", f"full training step, per step ({args.repeats} repeats x "
               f"{args.steps_per_block} steps, {args.warmup} warm-up steps excluded):"))
    if args.breakdown:
        simclr_breakdown(args, method, cfg, views)


def simclr_breakdown(args, method, cfg, views) -> None:
    log("breakdown, each piece alone (median / min over interleaved repeats):")
    tau = method.temperature
    for b in sorted({args.batch_size, *args.loss_batches}):
        z = torch.randn(2 * b, 128, requires_grad=True)
        mask = torch.eye(2 * b, dtype=torch.bool)
        targets = torch.cat([torch.arange(b) + b, torch.arange(b)])

        def backward(loss, z=z):
            loss.backward()
            z.grad = None

        def inline(z=z, mask=mask, targets=targets):
            zn = F.normalize(z, dim=1)
            logits = (zn @ zn.t()) / tau
            return F.cross_entropy(logits.masked_fill(mask, float("-inf")), targets)

        show(f" NT-Xent fwd+bwd at batch {b} ({2 * b} x {2 * b} logits):", {
            "sslkit ntxent_loss": lambda z=z: backward(ntxent_loss(*z.chunk(2), tau)),
            "candidate: scatter -inf, z/tau first": lambda z=z: backward(ntxent_scatter(*z.chunk(2), tau)),
            "inline NT-Xent (precomputed mask)": lambda: backward(inline()),
        }, args.breakdown_repeats, "inline NT-Xent (precomputed mask)")
    model = nn.Sequential(plain_bn_copy(method.backbone), plain_bn_copy(method.head))
    optimizer_breakdown(args, model, cfg, torch.cat(list(views)))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", default="mocov2,simclr", help="comma-separated: mocov2, simclr")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--small-images", action="store_true", help="CIFAR ResNet stem (backbone.small_images)")
    p.add_argument("--queue-size", type=int, default=65536, help="mocov2 queue (the method's default)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--warmup", type=int, default=3, help="steps of each candidate before timing")
    p.add_argument("--repeats", type=int, default=10, help="interleaved repeats (ABC, BCA, CAB, ...)")
    p.add_argument("--steps-per-block", type=int, default=1)
    p.add_argument("--breakdown", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--breakdown-repeats", type=int, default=7)
    p.add_argument("--loss-batches", default="1024",
                   help="extra batch sizes for the NT-Xent loss-only timing (comma-separated)")
    p.add_argument("--baseline-optim", choices=("same", "sgd"), default="same",
                   help="simclr baseline optimizer: the method's own (LARS) or torch SGD")
    p.add_argument("--candidates", action=argparse.BooleanOptionalAction, default=True,
                   help="also time mocov2 with the suggested fixes patched in (benchmark-local)")
    p.add_argument("--verbose", action="store_true", help="print every repeat")
    args = p.parse_args(argv)
    args.loss_batches = [int(x) for x in args.loss_batches.split(",") if x.strip()]
    torch.set_num_threads(args.threads)
    log(machine_info({"argv": " ".join(sys.argv[1:]) or "(defaults)"}))
    torch.manual_seed(123)
    views = [torch.randn(args.batch_size, 3, args.image_size, args.image_size) for _ in range(2)]
    start = time.time()
    for name in args.methods.split(","):
        {"mocov2": bench_mocov2, "simclr": bench_simclr}[name.strip()](args, views)
    log(f"\ntotal wall time {time.time() - start:.0f}s")


if __name__ == "__main__":
    main()
