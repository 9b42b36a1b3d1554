"""The demo's verdict: 1.0 point over the better baseline at k=200 and at k=20, or it says NOT."""

from sslkit.app.demo import PRESET, margins, verdict
from sslkit.config import compose


def _rows(trained, rand, pixels):
    return [{"encoder": n, "knn": {200: a, 20: b}} for n, (a, b) in
            (("trained", trained), ("random", rand), ("pixels", pixels))]


def test_margins_are_over_the_better_baseline_at_each_k():
    gains = margins(_rows((81.0, 86.0), (78.4, 82.9), (79.6, 84.8)))
    assert abs(gains[200] - 1.4) < 1e-9 and abs(gains[20] - 1.2) < 1e-9
    assert "beats both baselines by at least 1 point" in verdict(gains)


def test_a_miss_at_one_k_is_said_plainly():
    gains = margins(_rows((81.0, 85.5), (78.4, 82.9), (79.6, 84.8)))  # +1.4 at k=200, +0.7 at k=20
    text = verdict(gains)
    assert "does NOT" in text and "+0.70 at k=20" in text and "+1.40 at k=200" in text
    assert "at k=20, training longer does not" in text and "at k=200" not in text.split(";", 1)[1]


def test_a_miss_at_k200_says_longer_training_passes_it():
    gains = margins(_rows((79.5, 86.0), (74.7, 78.6), (78.9, 84.5)))  # +0.6 at k=200, +1.5 at k=20
    text = verdict(gains)
    assert "does NOT" in text and "at k=200, training longer passes it" in text and "at k=20," not in text


def test_demo_preset_fits_the_machine():
    cfg = compose([PRESET])
    assert cfg.trainer.precision == "auto" and cfg.trainer.channels_last == "auto"  # no hard-coded bf16
    assert cfg.trainer.time_budget and float(cfg.trainer.time_budget) <= 10
    assert cfg.backbone.small_images is True and cfg.data.image_size == 28


def test_run_demo_end_to_end_on_a_slice(tmp_path, monkeypatch, capsys):
    """The demo's plumbing (train -> three encoders -> table and verdict) on 300/100 images."""
    import json

    import torch

    import sslkit.app.demo as demo
    from sslkit.config import as_dict
    from sslkit.data import build_dataset
    from sslkit.nn.backbones import build_backbone
    from tests.conftest import FASHION

    if not FASHION.exists():
        import pytest

        pytest.skip("Fashion-MNIST not installed")

    def fake_train(cfg):
        run = tmp_path / "run"
        run.mkdir()
        torch.save(build_backbone(as_dict(cfg.backbone))[0].state_dict(), run / "backbone.pt")
        (run / "metrics.jsonl").write_text(json.dumps({"step": 7, "loss": 1.0}) + "\n")
        return run

    monkeypatch.setattr(demo, "train", fake_train)
    monkeypatch.setattr(demo, "build_dataset", lambda cfg, split: build_dataset(cfg, split, 300 if split == "train"
                                                                                 else 100))
    result = demo.run_demo([f"out={tmp_path / 'run'}"])
    out = capsys.readouterr().out
    assert "| MoCo v2 (trained) |" in out and "| raw pixels |" in out and "7 steps of batch 256" in out
    assert set(result["margins"]) == {200, 20} and result["verdict"] in out
    assert (tmp_path / "run" / "eval" / "demo.md").is_file()
