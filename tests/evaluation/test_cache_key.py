"""The feature cache's key: every input that changes the features changes the key, and nothing else
does. The features are a function of the kind, the split, the subset (its size and its seed), the
dataset (name, root), the evaluation transform (image size, mean, std) and, for backbone features,
the checkpoint file. They are always computed in fp32 on the eval view, so the run's precision,
batch size, workers and the order of the settings must not split the cache."""

from __future__ import annotations

import os

import pytest
import torch
from omegaconf import OmegaConf

from sslkit.data.base import TensorImageDataset
from sslkit.evaluation import features as F

DATA = {"name": "fashion_mnist", "root": "/data/fm", "image_size": 32, "mean": [0.3, 0.4, 0.5],
        "std": [0.2, 0.25, 0.3], "subset_seed": 0, "batch_size": 256, "num_workers": 0, "drop_last": True,
        "download": False, "subset": None}
CHANGES = {  # data setting -> another value that gives other features
    "name": "mnist", "root": "/data/other", "image_size": 64, "mean": [0.3, 0.4, 0.6], "std": [0.2, 0.25, 0.31],
    "subset_seed": 1}
SAME = {  # settings the features do not depend on
    "batch_size": 512, "num_workers": 4, "drop_last": False, "download": True, "subset": 1000,
    "precision": "bf16", "channels_last": True}


@pytest.fixture
def checkpoint(tmp_path):
    path = tmp_path / "run" / "checkpoints" / "last.pt"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"x" * 10)
    return path


def key(kind="backbone", split="train", subset=100, data=None, checkpoint=None):
    return F.cache_key(kind, split, subset, DATA if data is None else data, checkpoint)


@pytest.mark.parametrize("kind", ["backbone", "pixels"])
@pytest.mark.parametrize("setting", sorted(CHANGES))
def test_every_data_setting_the_features_depend_on_changes_the_key(checkpoint, kind, setting):
    ck = checkpoint if kind == "backbone" else None
    assert key(kind, data={**DATA, setting: CHANGES[setting]}, checkpoint=ck) != key(kind, checkpoint=ck)


@pytest.mark.parametrize("kind", ["backbone", "pixels"])
def test_kind_split_and_subset_change_the_key(checkpoint, kind):
    ck = checkpoint if kind == "backbone" else None
    base = key(kind, checkpoint=ck)
    others = [key(kind, "test", checkpoint=ck), key(kind, subset=200, checkpoint=ck),
              key(kind, subset=None, checkpoint=ck)]
    assert len({base, *others}) == 4
    assert key("pixels") != key("backbone", checkpoint=checkpoint)


def test_the_checkpoint_file_changes_the_key(checkpoint, tmp_path):
    base = key(checkpoint=checkpoint)
    other = tmp_path / "other.pt"
    other.write_bytes(b"x" * 10)
    assert key(checkpoint=other) != base  # another run
    checkpoint.write_bytes(b"x" * 11)  # retrained: another size
    resized = key(checkpoint=checkpoint)
    assert resized != base
    st = checkpoint.stat()
    os.utime(checkpoint, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # retrained: same size, newer
    assert key(checkpoint=checkpoint) not in (base, resized)


@pytest.mark.parametrize("setting", sorted(SAME))
def test_settings_the_features_do_not_depend_on_leave_the_key(checkpoint, setting):
    assert key(data={**DATA, setting: SAME[setting]}, checkpoint=checkpoint) == key(checkpoint=checkpoint)


def test_the_same_checkpoint_by_another_path_and_reordered_settings_share_the_key(checkpoint, monkeypatch):
    base = key(checkpoint=checkpoint)
    monkeypatch.chdir(checkpoint.parent.parent)
    relative = checkpoint.relative_to(checkpoint.parent.parent)
    assert not relative.is_absolute()
    reordered = dict(reversed(list(DATA.items())))
    assert key(data=reordered, checkpoint=relative) == base
    assert key("pixels", data={**DATA, "subset_seed": None}) == key("pixels", data={**DATA, "subset_seed": 0})
    assert key(data=OmegaConf.create(DATA), checkpoint=checkpoint) == base  # a config node, not a dict


def test_without_a_subset_the_seed_does_not_matter(checkpoint):
    """No subset: every image of the split, whatever `data.subset_seed` is."""
    assert key(subset=None, data={**DATA, "subset_seed": 5}, checkpoint=checkpoint) == key(subset=None,
                                                                                          checkpoint=checkpoint)


def test_a_seed_sweep_evaluates_a_different_subset_per_seed(tmp_path, monkeypatch):
    """Through the cache: each subset seed gets its own stratified subset, as without a cache."""
    g = torch.Generator().manual_seed(0)
    full = TensorImageDataset(torch.randint(0, 256, (60, 1, 8, 8), generator=g, dtype=torch.uint8),
                              torch.arange(60) % 3, 3)
    monkeypatch.setattr("sslkit.data.build_dataset",
                        lambda data, split, subset: full.subset(subset, int(data.get("subset_seed") or 0)))
    data = {**DATA, "image_size": 8}
    seen = []
    for seed in (0, 1, 2, 0):
        cached = F.load_features("pixels", "train", 12, {**data, "subset_seed": seed}, cache_dir=tmp_path)
        fresh = F.load_features("pixels", "train", 12, {**data, "subset_seed": seed}, cache_dir=None)
        assert torch.equal(cached.feats, fresh.feats) and torch.equal(cached.labels, fresh.labels)
        seen.append((cached.cached, cached.feats))
    assert [c for c, _ in seen] == [False, False, False, True]
    assert not torch.equal(seen[0][1], seen[1][1]) and not torch.equal(seen[1][1], seen[2][1])


def test_backbone_features_carry_no_graph():
    from tests.conftest import TinyEncoder

    g = torch.Generator().manual_seed(0)
    ds = TensorImageDataset(torch.randint(0, 256, (6, 3, 8, 8), generator=g, dtype=torch.uint8), torch.arange(6) % 2, 2)
    feats = F.backbone_features(TinyEncoder(4), ds, {**DATA, "image_size": 8}, torch.device("cpu"))
    assert feats.shape == (6, 4) and not feats.requires_grad and feats.grad_fn is None
