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
    rows = res.stdout.strip().splitlines()
    names = [line.split()[0] for line in rows]
    assert names == sorted(["barlow_twins", "byol", "dino", "mocov1", "mocov2", "simclr", "simsiam", "swav",
                            "vicreg"])
    families = {line.split()[0]: line.split()[1] for line in rows}
    assert families["mocov2"] == "contrastive" and families["byol"] == "distillation"
    assert all("arXiv" in line for line in rows)  # every built-in names its paper


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


@pytest.mark.parametrize("cpu_bf16, precision", [("native", "bf16"), ("none", "32")])
def test_the_demo_preset_trains_with_what_auto_picks_on_either_kind_of_cpu(tmp_path, monkeypatch, cpu_bf16,
                                                                             precision):
    """Issue 19: on a native-BF16 CPU `auto` gave bf16 and MoCo's default split BN crashed in the budget's
    first steps; both README commands failed. Here both kinds of CPU's decisions run on whatever CPU runs
    the suite (SSLKIT_CPU_BF16), through the demo preset's defaults (split BN, auto layout)."""
    monkeypatch.setenv("SSLKIT_CPU_BF16", cpu_bf16)
    out = tmp_path / cpu_bf16
    res = run_cli("train", "experiment=fmnist_demo", "trainer.time_budget=null", "trainer.max_steps=3",
                  "data.subset=64", "data.batch_size=32", "method.queue_size=64", "head.hidden_dim=32",
                  "trainer.log_every_steps=1", "trainer.monitor_every_epochs=0", f"out={out}")
    assert res.returncode == 0, res.stderr[-2000:]
    first = res.stdout.splitlines()[0]
    assert f"precision {precision}," in first and f"SSLKIT_CPU_BF16={cpu_bf16}" in first, first
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["trainer"]["precision"] == precision and cfg["method"]["shuffle_bn"] in ("auto", "split")
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 3 and all(abs(v) < 1e3 for v in losses)


def test_train_says_in_one_line_when_the_queue_outgrows_the_data(tmp_path, capsys):
    from sslkit.app.train import train
    from sslkit.config import compose

    base = ["method=mocov2", "data.subset=32", "data.batch_size=16", "backbone.width=8", "head.hidden_dim=16",
            "trainer.max_steps=1", "trainer.progress=lines", "trainer.precision=32"]
    train(compose([*base, "method.queue_size=64", f"out={tmp_path / 'a'}"]))  # K < N: queue_notice's unit test
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "notice: method.queue_size" in ln]
    assert lines == ["sslkit: notice: method.queue_size=64 >= the 32 pretraining images: every query meets stale "
                     "keys of its own image among its negatives; e.g. method.queue_size=8 (a quarter of the data "
                     "or less, as batch-compare caps it)"]
