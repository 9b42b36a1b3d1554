"""`optim.warmup_epochs=auto`: half an epoch on small images, none on large ones, recorded as a number."""

from __future__ import annotations

import pytest

from sslkit.config import SMALL_IMAGE_WARMUP_EPOCHS, compose, to_yaml
from sslkit.engine.schedule import warmup_steps
from sslkit.errors import ConfigError


@pytest.mark.parametrize(("size", "expected"), [(28, 0.5), (32, 0.5), (64, 0.5), (96, 0.0), (224, 0.0)])
def test_auto_warmup_follows_the_image_size(size, expected):
    cfg = compose(["method=mocov2", f"data.image_size={size}"])
    assert cfg.optim.warmup_epochs == expected
    assert f"warmup_epochs: {expected}" in to_yaml(cfg)  # config.yaml records the number, not "auto"


def test_auto_warmup_is_half_an_epoch_capped_like_any_warmup():
    cfg = compose(["method=mocov2", "data.image_size=28"])
    assert SMALL_IMAGE_WARMUP_EPOCHS == 0.5
    assert warmup_steps(cfg.optim, total_steps=706, steps_per_epoch=234) == 117  # the demo's length
    assert warmup_steps(cfg.optim, total_steps=234, steps_per_epoch=234) == 46  # 1 epoch: capped at floor(0.2 x 234)


def test_an_explicit_warmup_wins_on_small_images():
    assert compose(["method=mocov2", "data.image_size=28", "optim.warmup_epochs=0"]).optim.warmup_epochs == 0
    assert compose(["method=mocov2", "data.image_size=224", "optim.warmup_epochs=2"]).optim.warmup_epochs == 2


def test_other_optimizers_keep_their_paper_warmup():
    assert compose(["method=simclr", "data.image_size=28"]).optim.warmup_epochs == 10.0  # SimCLR's LARS
    assert compose(["method=mocov1", "data.image_size=28"]).optim.warmup_epochs == 0.0  # v1's step schedule


@pytest.mark.parametrize("bad", ["soon", "-1"])
def test_a_bad_warmup_is_one_line(bad):
    with pytest.raises(ConfigError, match="optim.warmup_epochs"):
        compose(["method=mocov2", f"optim.warmup_epochs={bad}"])
