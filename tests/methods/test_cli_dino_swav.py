"""DINO and SwAV as a user runs them: `sslkit train method=<m>` for 2 steps (fp32, tiny heads, 2 local
crops), then `sslkit eval knn` on the run's encoder; SwAV on an ImageFolder of PNGs; a ViT whose patch
size does not divide the image size is one line and exit 2. Subprocesses: slow."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import needs_fashion

pytestmark = pytest.mark.slow

COMMON = ("trainer.max_steps=2", "trainer.precision=32", "trainer.channels_last=false", "trainer.log_every_steps=1",
          "backbone.width=8", "backbone.small_images=true")


def knn(cli, run: Path, *extra: str) -> dict:
    res = cli("eval", "knn", f"checkpoint={run}", *extra)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads((run / "eval" / "knn.json").read_text())


@needs_fashion
def test_dino_trains_through_the_cli_and_knn_scores_its_teacher(cli, tmp_path):
    run = tmp_path / "dino"
    res = cli("train", "method=dino", *COMMON, "data.subset=64", "data.batch_size=16", "method.out_dim=64",
              "method.hidden_dim=32", "method.bottleneck_dim=16", "views={set: dino, n_local: 2}", f"out={run}")
    assert res.returncode == 0, res.stderr[-3000:]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2] and all("teacher_temp" in r for r in records)
    saved = torch.load(run / "checkpoints" / "last.pt", weights_only=False, map_location="cpu")
    teacher = {k[len("teacher_backbone."):]: v for k, v in saved["method"].items() if k.startswith("teacher_backbone.")}
    assert saved["encoder"].keys() == teacher.keys()
    assert all(torch.equal(saved["encoder"][k], teacher[k]) for k in teacher)
    result = knn(cli, run, "eval.train_subset=200", "eval.test_subset=100", "eval.k=[20]")
    assert result, result


def _png_folder(root: Path) -> None:
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for split, n in (("train", 12), ("val", 4)):
        for c, colour in enumerate(((200, 30, 30), (30, 30, 200))):
            (root / split / f"c{c}").mkdir(parents=True)
            for i in range(n):
                noise = torch.randint(0, 40, (40, 40, 3), generator=g)
                pixels = (torch.tensor(colour) + noise).clamp(0, 255).to(torch.uint8).numpy()
                Image.fromarray(pixels).save(root / split / f"c{c}" / f"{i}.png")


def test_swav_trains_on_an_imagefolder_of_pngs_and_knn_scores_it(cli, tmp_path):
    _png_folder(tmp_path / "images")
    run = tmp_path / "swav"
    res = cli("train", "method=swav", *COMMON, "data=imagefolder", f"data.root={tmp_path / 'images'}",
              "data.image_size=32", "data.batch_size=8", "data.num_workers=0", "method.hidden_dim=32",
              "method.out_dim=16", "method.n_prototypes=10", "method.queue_length=0",
              "views={set: swav, n_local: 2}", f"out={run}")
    assert res.returncode == 0, res.stderr[-3000:]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    result = knn(cli, run, "eval.train_subset=null", "eval.test_subset=null", "eval.k=[3]")
    assert result, result


@needs_fashion
def test_a_vit_whose_patch_size_does_not_divide_the_image_size_is_one_line_and_exit_2(cli, tmp_path):
    res = cli("train", "method=dino", "backbone=timm", "backbone.timm_name=vit_tiny_patch16_224", "data.image_size=28",
              "data.subset=32", "trainer.max_steps=1", f"out={tmp_path / 'run'}")
    assert res.returncode == 2, res.stderr[-2000:]
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "do not divide" in lines[0], res.stderr
