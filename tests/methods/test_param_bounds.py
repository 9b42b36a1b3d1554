"""Each new method's parameter bounds at their edges: the smallest and largest accepted values build,
and the first values past them, booleans and non-numbers are one-line ConfigErrors (sslkit.errors)."""

from __future__ import annotations

import math

import pytest

from sslkit.build import method_defaults
from sslkit.errors import ConfigError
from sslkit.registry import available_methods
from tests.conftest import TinyEncoder

HEAD = {"kind": "mlp", "hidden_dim": 8, "out_dim": 8, "batch_norm": False}
SMALL = {"byol": {"predictor_hidden_dim": 8}, "simsiam": {"predictor_hidden_dim": 8}, "barlow_twins": {},
         "vicreg": {}}


def build(name: str, **overrides):
    params = method_defaults(name, **{**SMALL[name], **overrides})
    return available_methods()[name](TinyEncoder(), 16, HEAD, **params)


@pytest.mark.parametrize(("name", "key", "accepted", "refused"), [
    ("byol", "momentum", [0.0, 1.0, 1], [-0.01, 1.01, True, "0.9"]),
    ("byol", "predictor_hidden_dim", [1], [0, True, 2.0]),
    ("simsiam", "predictor_hidden_dim", [1], [0, False]),
    ("barlow_twins", "lambd", [0.0, 5e-3], [-1e-9, math.inf, math.nan, True, "x"]),
    ("barlow_twins", "bias_lr_scale", [0, 1.0], [-0.1, math.inf, False]),
    ("vicreg", "invariance", [0.0, 25], [-1.0, math.inf, True]),
    ("vicreg", "covariance", [0.0], [-1e-3, math.nan]),
])
def test_the_edges_of_each_bound(name, key, accepted, refused):
    for value in accepted:
        build(name, **{key: value})
    for value in refused:
        with pytest.raises(ConfigError, match=f"method.{key}"):
            build(name, **{key: value})


def test_vicreg_refuses_only_all_three_weights_at_zero():
    build("vicreg", invariance=0.0, variance=0.0, covariance=1.0)
    build("vicreg", invariance=1.0, variance=0.0, covariance=0.0)
    build("vicreg", invariance=0.0, variance=1.0, covariance=0.0)
    with pytest.raises(ConfigError, match="all 0: nothing to train"):
        build("vicreg", invariance=0.0, variance=0.0, covariance=0.0)


@pytest.mark.parametrize("name", ["barlow_twins", "vicreg"])
def test_two_view_methods_refuse_another_number_of_views(name):
    import torch

    m = build(name)
    x = torch.randn(4, 3, 8, 8)
    m([x, x])
    for views in ([x], [x, x, x]):
        with pytest.raises(ConfigError, match=f"takes 2 views per step, got {len(views)}"):
            m(views)


@pytest.mark.parametrize(("key", "accepted", "refused"), [
    ("momentum", [0.0, 1.0], [-0.1, 1.1]),
    ("center_momentum", [0.0, 1.0], [1.5]),
    ("teacher_temp", [1e-4], [0.0, -0.1]),
    ("student_temp", [1e-4], [0.0]),
    ("clip_grad", [0.0], [-1.0]),
    ("freeze_last_layer", [0.0], [-0.5]),
    ("warmup_teacher_temp_epochs", [0], [-1]),
])
def test_dino_bounds(key, accepted, refused):
    dino = available_methods()["dino"]
    for value in accepted:
        dino.check_bounds(method_defaults("dino", **{key: value}))
    for value in refused:
        with pytest.raises(ConfigError, match=f"method.{key}"):
            dino.check_bounds(method_defaults("dino", **{key: value}))
