"""The demo's verdict: 1.0 point over the better baseline at k=200 and at k=20, or it says NOT."""

from sslkit.config import compose
from sslkit.demo import PRESET, margins, verdict


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


def test_demo_preset_fits_the_machine():
    cfg = compose([PRESET])
    assert cfg.trainer.precision == "auto" and cfg.trainer.channels_last == "auto"  # no hard-coded bf16
    assert cfg.trainer.time_budget and float(cfg.trainer.time_budget) <= 10
    assert cfg.backbone.small_images is True and cfg.data.image_size == 28
