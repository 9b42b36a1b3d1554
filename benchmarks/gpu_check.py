"""CUDA paths in one short script: AMP (bf16, fp16 + GradScaler), channels_last, NCCL collectives,
gradient caching on the GPU, and training throughput. Prints one JSON line per check.

    python benchmarks/gpu_check.py
"""

from __future__ import annotations

import json
import os
import time

import torch
import torch.distributed as dist

from sslkit.app.train import train
from sslkit.config import compose
from sslkit.contrastive.grad_cache import embed_chunks
from sslkit.devices import _GatherWithGrad


def report(**kw: object) -> None:
    print(json.dumps(kw), flush=True)


def amp_and_throughput() -> None:
    base = ["trainer.progress=none", "trainer.checkpoint_every_steps=0", "trainer.log_every_steps=10",
            "device=cuda", "trainer.epochs=100"]
    cases = [
        ("mocov2_r18_32px_fp32", ["method=mocov2", "data.batch_size=256", "trainer.precision=32"]),
        ("mocov2_r18_32px_bf16", ["method=mocov2", "data.batch_size=256", "trainer.precision=bf16"]),
        ("mocov2_r18_32px_bf16_cl", ["method=mocov2", "data.batch_size=256", "trainer.precision=bf16",
                                     "trainer.channels_last=true"]),
        ("mocov2_r18_32px_fp16", ["method=mocov2", "data.batch_size=256", "trainer.precision=fp16"]),
        ("simclr_r18_32px_bf16_chunked", ["method=simclr", "data.batch_size=1024", "trainer.precision=bf16",
                                          "method.chunk_size=256"]),
        ("mocov2_r50_224px_fp32", ["method=mocov2", "backbone=resnet50", "data.image_size=224",
                                   "data.batch_size=128", "trainer.precision=32"]),
        ("mocov2_r50_224px_bf16_cl", ["method=mocov2", "backbone=resnet50", "data.image_size=224",
                                      "data.batch_size=128", "trainer.precision=bf16", "trainer.channels_last=true"]),
    ]
    for name, ov in cases:
        steps = 40
        moco = ["method.queue_size=4096"] if "method=mocov2" in ov else []
        cfg = compose(base + ov + moco + [f"trainer.max_steps={steps}", f"out=/tmp/gpu/{name}"])
        torch.cuda.reset_peak_memory_stats()
        start = time.time()
        run = train(cfg)
        wall = time.time() - start
        lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        ips = [r["images_per_s"] for r in lines[1:]]  # the first window holds warm-up
        report(check=name, ok=all(torch.isfinite(torch.tensor(r["loss"])) for r in lines),
               loss_first=lines[0]["loss"], loss_last=lines[-1]["loss"], images_per_s=round(sum(ips) / len(ips), 1),
               wall_s=round(wall, 1), peak_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2))


def nccl() -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29533", RANK="0", WORLD_SIZE="1")
    dist.init_process_group("nccl", rank=0, world_size=1, device_id=torch.device("cuda", 0))
    x = torch.arange(8.0, device="cuda").view(4, 2).requires_grad_(True)
    gathered = _GatherWithGrad.apply(x)
    (gathered * 3).sum().backward()
    y = torch.ones(3, device="cuda")
    dist.all_reduce(y)
    dist.broadcast(y, 0)
    report(check="nccl_world1", backend=dist.get_backend(), gather_ok=bool(torch.equal(gathered, x)),
           grad_ok=bool(torch.equal(x.grad, torch.full_like(x, 3.0))),
           all_reduce_ok=bool(torch.equal(y, torch.ones(3, device="cuda"))))
    dist.destroy_process_group()


def grad_cache_cuda() -> None:
    from sslkit.contrastive.grad_cache import cached_backward
    from sslkit.contrastive.ntxent import ntxent_loss
    from sslkit.nn.backbones import build_backbone

    torch.manual_seed(0)
    net, _ = build_backbone({"name": "resnet18"})
    net = net.cuda().double()
    x = torch.randn(64, 3, 32, 32, device="cuda", dtype=torch.float64)
    loss_fn = lambda z: ntxent_loss(*z.chunk(2), 0.2)  # noqa: E731
    loss_fn(embed_chunks(net, x, 16)).backward()
    direct = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    cached_backward(net, net, x, 16, loss_fn)
    err = max((p.grad - d).abs().max().item() for p, d in zip(net.parameters(), direct, strict=True))
    report(check="grad_cache_cuda_fp64", max_abs_grad_diff=err, ok=err < 1e-9)


if __name__ == "__main__":
    report(check="env", torch=torch.__version__, device=torch.cuda.get_device_name(0),
           cudnn=torch.backends.cudnn.version())
    for fn in (nccl, grad_cache_cuda, amp_and_throughput):
        try:
            fn()
        except Exception as exc:  # report every check, even after one fails
            report(check=fn.__name__, ok=False, error=f"{type(exc).__name__}: {exc}"[:500])
