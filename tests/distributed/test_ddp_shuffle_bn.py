"""Shuffle-BN across 2 gloo processes: one permutation for all ranks, samples cross ranks, exact undo."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

pytestmark = pytest.mark.distributed

B, D = 8, 4


def shuffle_worker(rank: int, world: int, out_dir) -> None:
    from sslkit.contrastive.shuffle_bn import shuffle_ddp, unshuffle_ddp

    torch.manual_seed(1000 + rank)  # ranks' generators differ: only rank 0's permutation may be used
    # Row i of rank r holds its global index r*B+i in every column, plus a little noise for BN.
    x = (rank * B + torch.arange(B, dtype=torch.float64)).unsqueeze(1).repeat(1, D)
    x += 0.01 * torch.randn(B, D, dtype=torch.float64)
    shuffled, inverse = shuffle_ddp(x)
    restored = unshuffle_ddp(shuffled.clone(), inverse)  # an identity "key encoder"
    keys = unshuffle_ddp(F.batch_norm(shuffled, None, None, training=True), inverse)  # a BN key encoder
    _, inverse2 = shuffle_ddp(x)
    torch.save({"x": x, "shuffled": shuffled, "inverse": inverse, "restored": restored, "keys": keys,
                "inverse2": inverse2}, out_dir / f"rank{rank}.pt")


@pytest.fixture(scope="module")
def ranks(ddp) -> list[dict]:
    return ddp(shuffle_worker)


def test_unshuffle_returns_each_ranks_rows_in_order(ranks) -> None:
    for r in ranks:
        assert torch.equal(r["restored"], r["x"])


def test_one_permutation_moves_samples_across_ranks(ranks) -> None:
    r0, r1 = ranks
    assert torch.equal(r0["inverse"], r1["inverse"])  # broadcast from rank 0 despite different seeds
    assert torch.equal(r0["inverse2"], r1["inverse2"]) and not torch.equal(r0["inverse"], r0["inverse2"])
    perm = torch.argsort(r0["inverse"])
    assert sorted(perm.tolist()) == list(range(2 * B)) and not torch.equal(perm, torch.arange(2 * B))
    everything = torch.cat([r0["x"], r1["x"]])
    for rank, r in enumerate(ranks):
        assert torch.equal(r["shuffled"], everything[perm.view(2, B)[rank]])
        origin = r["shuffled"][:, 0].round().long() // B  # the rank each shuffled row came from
        assert (origin == 1 - rank).any() and (origin == rank).any()  # the shard mixes both ranks


def test_key_statistics_come_from_the_shuffled_shard(ranks) -> None:
    """A BN key encoder normalises each key with the statistics of the shard it was shuffled into."""
    r0, r1 = ranks
    encoded = torch.cat([F.batch_norm(r["shuffled"], None, None, training=True) for r in ranks])
    expected = encoded[r0["inverse"]]
    torch.testing.assert_close(torch.cat([r0["keys"], r1["keys"]]), expected, rtol=1e-12, atol=1e-12)
    unshuffled = torch.cat([F.batch_norm(r["x"], None, None, training=True) for r in ranks])
    assert not torch.allclose(expected, unshuffled)  # which is not what plain per-rank BN gives
