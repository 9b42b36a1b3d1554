"""`sslkit.app.train.train` in 2 gloo processes, stopped mid-epoch and resumed: the sampler shards and
reshuffles every epoch, the resumed epoch skips exactly what was seen, and both ranks resume from
(and stay at) one state."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.distributed, pytest.mark.slow,
              pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").exists()
                                 and not os.environ.get("SSLKIT_DATA"), reason="Fashion-MNIST not installed")]

# 64 images, global batch 16 = 8 per rank: 4 steps per epoch. Stop at step 6 (epoch 1, batch 2), resume to 8.
OVERRIDES = ["method=mocov2", "data=fashion_mnist", "data.subset=64", "data.batch_size=16",
             "trainer.epochs=2", "method.queue_size=32", "trainer.progress=none",
             "trainer.checkpoint_every_steps=0", "device=cpu"]
PER_RANK, FIRST_STOP, SECOND_STOP = 8, 6, 8


def digest(state: dict[str, torch.Tensor], skip_bn_stats: bool = False) -> dict[str, str]:
    """sha1 of every tensor (exact equality without shipping 45 MB state dicts between processes)."""
    return {k: hashlib.sha1(v.detach().cpu().contiguous().numpy().tobytes()).hexdigest()
            for k, v in state.items() if not (skip_bn_stats and ("running_" in k or "num_batches" in k))}


def engine_worker(rank: int, world: int, out_dir: Path) -> None:
    import sslkit.app.train as train_mod
    from sslkit.app.launch import resume_config
    from sslkit.config import compose
    from sslkit.data.loader import ResumableSampler

    train_mod.shutdown = lambda: None  # keep the group for the second run; the harness shuts it down
    epochs: list[tuple[int, list[int]]] = []
    sampler_iter = ResumableSampler.__iter__

    def record(self: ResumableSampler):  # noqa: ANN202
        indices = list(sampler_iter(self))
        epochs.append((self.epoch, indices))
        return iter(indices)

    ResumableSampler.__iter__ = record  # type: ignore[method-assign]
    real_fit, entries = train_mod.fit, []

    def spy_fit(inputs, state=None):  # noqa: ANN001, ANN202
        method = inputs.method
        entries.append({"rng": torch.get_rng_state().clone(), "state": digest(method.state_dict())})
        state = real_fit(inputs, state)
        entries[-1]["final"] = digest(method.state_dict(), skip_bn_stats=True)  # DDP keeps BN stats per rank
        entries[-1]["step"] = state.step
        return state

    train_mod.fit = spy_fit
    run_dir = out_dir / "run"
    train_mod.train(compose([*OVERRIDES, f"trainer.max_steps={FIRST_STOP}", f"out={run_dir}"]))
    first = list(epochs)
    epochs.clear()
    torch.distributed.barrier()  # rank 0 writes the final checkpoint after the others have left fit
    cfg, ckpt = resume_config(str(run_dir), [f"trainer.resume={run_dir}",
                                              f"trainer.max_steps={SECOND_STOP}"])
    train_mod.train(cfg, ckpt)
    torch.save({"first": first, "resumed": list(epochs), "entries": entries,
                "ckpt_state": digest(ckpt["method"]), "ckpt_train_state": ckpt["state"]},
               out_dir / f"rank{rank}.pt")


@pytest.fixture(scope="module")
def ranks(ddp) -> list[dict]:
    return ddp(engine_worker, timeout=300)


def test_sampler_shards_and_reshuffles_every_epoch(ranks) -> None:
    r0, r1 = ranks
    assert [e for e, _ in r0["first"]] == [0, 1]  # set_epoch before each epoch
    for (_, a), (_, b) in zip(r0["first"], r1["first"], strict=True):
        assert len(a) == len(b) == 32 and not set(a) & set(b) and len(set(a) | set(b)) == 64
    assert r0["first"][0][1] != r0["first"][1][1]  # a new order in epoch 1


def test_resumed_epoch_skips_the_batches_already_seen(ranks) -> None:
    assert ranks[0]["ckpt_train_state"] == {"epoch": 1, "step": FIRST_STOP, "batch_in_epoch": 2}
    for r in ranks:
        epoch, indices = r["resumed"][0]
        assert epoch == 1 and indices == r["first"][1][1][2 * PER_RANK:]


def test_both_ranks_resume_from_the_checkpoint_and_stay_in_step(ranks) -> None:
    r0, r1 = ranks
    resumed0, resumed1 = r0["entries"][1], r1["entries"][1]
    assert resumed0["state"] == resumed1["state"] == r0["ckpt_state"]  # the checkpoint, on every rank
    assert resumed0["step"] == resumed1["step"] == SECOND_STOP
    assert resumed0["final"] == resumed1["final"]  # weights, momentum encoder and queue agree at the end
    assert r0["entries"][0]["final"] == r1["entries"][0]["final"]
    assert not torch.equal(r0["entries"][0]["rng"], r1["entries"][0]["rng"])  # a fresh run seeds ranks apart


def test_ranks_keep_distinct_random_streams_after_resume(ranks) -> None:
    r0, r1 = ranks
    assert not torch.equal(r0["entries"][1]["rng"], r1["entries"][1]["rng"])
