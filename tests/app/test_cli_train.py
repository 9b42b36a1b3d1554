"""The `sslkit train` / `methods` / `export` contract, through real subprocesses."""

import json

import pytest
import torch
import torchvision
import yaml

from tests.conftest import needs_fashion, run_cli

pytestmark = needs_fashion
SMALL = ["data.subset=96", "data.batch_size=32", "method.queue_size=64", "head.hidden_dim=64"]


def test_methods_lists_each_with_one_line():
    res = run_cli("methods")
    assert res.returncode == 0
    names = [line.split()[0] for line in res.stdout.strip().splitlines()]
    assert names == ["mocov1", "mocov2", "simclr"]


def test_train_writes_the_run_directory_and_export_loads_into_torchvision(tmp_path):
    out = tmp_path / "run"
    res = run_cli("train", "method=mocov2", "backbone=resnet18", *SMALL, "trainer.max_steps=3",
                  "trainer.log_every_steps=1", "seed=3", f"out={out}")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "step 3/3" in res.stdout and "eta=" in res.stdout  # plain lines when not on a TTY
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["method"]["name"] == "mocov2" and cfg["seed"] == 3 and cfg["data"]["subset"] == 96
    assert cfg["aug"]["image_size"] == 32  # interpolations are resolved in the saved config
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]
    assert all({"loss", "lr", "images_per_s"} <= r.keys() for r in records)
    # queue of 64, batch 32: the first step sees no real keys, the second half a queue, then a full one
    assert [r["queue_fill"] for r in records] == [0.0, 0.5, 1.0]
    assert (out / "training.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # every run, monitor or not
    assert list((out / "tb").glob("events.out.tfevents.*"))
    assert (out / "checkpoints" / "last.pt").is_file()

    sd = torch.load(out / "backbone.pt", weights_only=True)
    model = torchvision.models.resnet18()
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert set(missing) == {"fc.weight", "fc.bias"} and not unexpected

    res = run_cli("export", f"checkpoint={out}", f"out={tmp_path / 'exported.pt'}")
    assert res.returncode == 0, res.stderr
    again = torch.load(tmp_path / "exported.pt", weights_only=True)  # format=torchvision: plus an identity fc
    assert again.keys() == sd.keys() | {"fc.weight", "fc.bias"} and all(torch.equal(again[k], sd[k]) for k in sd)
    assert torch.equal(again["fc.weight"], torch.eye(512))


@pytest.mark.slow  # 2 ResNet-50 steps: about a minute on 2 shared cores
def test_resnet50_trains_on_cpu(tmp_path):
    res = run_cli("train", "method=mocov2", "backbone=resnet50", "data.subset=32", "data.batch_size=16",
                  "method.queue_size=48", "trainer.max_steps=2", "trainer.log_every_steps=1",
                  "trainer.checkpoint_every_steps=0", f"out={tmp_path / 'r50'}")
    assert res.returncode == 0, res.stderr[-3000:]
    losses = [json.loads(line)["loss"] for line in (tmp_path / "r50" / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 2
    saved = torch.load(tmp_path / "r50" / "checkpoints" / "last.pt", weights_only=False)["method"]
    assert saved["head.0.weight"].shape[1] == 2048  # the head sits on ResNet-50's pooled features
    assert int(saved["queue.ptr"]) == 2 * 16  # two batches of keys enqueued
    # The key encoder started as a copy of the query encoder and only follows it by EMA: they differ
    # only if the optimizer moved the query encoder.
    assert not torch.equal(saved["backbone.conv1.weight"], saved["backbone_k.conv1.weight"])


def test_default_run_dir_name_and_resume_through_cli(tmp_path):
    res = run_cli("train", "method=simclr", "data.subset=96", "data.batch_size=32", "head.hidden_dim=64",
                  "trainer.max_steps=2", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    (run,) = (tmp_path / "runs").iterdir()
    assert run.name.endswith("_simclr_resnet18")
    res = run_cli("train", f"trainer.resume={run}", "trainer.max_steps=3", "trainer.log_every_steps=1")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "step 3/3" in res.stdout
    saved = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert saved["state"]["step"] == 3
