import pytest
import torch
import torch.nn.functional as F

from sslkit.build import method_defaults
from sslkit.contrastive.infonce import infonce_logits, infonce_loss
from sslkit.errors import ConfigError
from sslkit.methods.mocov1 import MoCoV1
from sslkit.methods.mocov2 import MoCoV2

HEAD = {"kind": "mlp", "hidden_dim": 32, "out_dim": 8, "num_layers": 2}


def _moco(enc, **kw):
    torch.manual_seed(0)
    return MoCoV2(enc, 16, HEAD, **method_defaults("mocov2", queue_size=24, momentum=0.9, split_bn_groups=2, **kw))


def test_key_encoder_gets_no_gradient_and_query_does(tiny_encoder):
    m = _moco(tiny_encoder)
    x = torch.randn(8, 3, 8, 8)
    m([x, x.flip(-1)]).loss.backward()
    assert all(p.grad is None and not p.requires_grad for p in [*m.backbone_k.parameters(), *m.head_k.parameters()])
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.head.parameters())


def test_loss_is_infonce_against_queue_before_enqueue(tiny_encoder):
    m = _moco(tiny_encoder, shuffle_bn="none")
    x1, x2 = torch.randn(6, 3, 8, 8), torch.randn(6, 3, 8, 8)
    queue = m.queue.keys.clone()
    out = m([x1, x2])
    with torch.no_grad():
        q = F.normalize(m.head(m.backbone(x1)), dim=1)
        k = F.normalize(m.head_k(m.backbone_k(x2)), dim=1)
    torch.testing.assert_close(out.loss, infonce_loss(q, k, queue, 0.2)[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(m.queue.keys, queue)  # nothing enqueued before after_step
    m.after_step(0.1)
    torch.testing.assert_close(m.queue.keys[:6], k, rtol=1e-4, atol=1e-5)
    assert int(m.queue.ptr) == 6


def test_after_step_applies_ema(tiny_encoder):
    m = _moco(tiny_encoder)
    with torch.no_grad():
        for p in m.backbone.parameters():
            p.add_(1.0)
    before = [p.clone() for p in m.backbone_k.parameters()]
    m([torch.randn(4, 3, 8, 8)] * 2)
    m.after_step(0.5)
    for k, b, q in zip(m.backbone_k.parameters(), before, m.backbone.parameters(), strict=True):
        torch.testing.assert_close(k, 0.9 * b + 0.1 * q)


def test_symmetric_loss_enqueues_both_views(tiny_encoder):
    m = _moco(tiny_encoder, symmetric=True)
    m([torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)])
    m.after_step(0.0)
    assert int(m.queue.ptr) == 8


def test_split_bn_is_installed_on_one_device(tiny_encoder):
    from sslkit.nn.split_bn import SplitBatchNorm2d

    m = _moco(tiny_encoder)
    assert m.shuffle_bn == "split"
    assert any(isinstance(mod, SplitBatchNorm2d) for mod in m.backbone_k.modules())


def test_mocov1_defaults_and_validation(tiny_encoder):
    m = MoCoV1(tiny_encoder, 16, {"kind": "linear", "out_dim": 8}, **method_defaults("mocov1", queue_size=16))
    assert m.temperature == 0.07 and m.base_momentum == 0.999
    with pytest.raises(ConfigError, match="shuffle_bn"):
        MoCoV1(tiny_encoder, 16, {"kind": "linear"}, **method_defaults("mocov1", shuffle_bn="sometimes"))


def test_symmetric_loss_sums_the_two_terms_like_the_cifar_demo(tiny_encoder):
    """MoCo CIFAR-10 demo: loss = loss_12 + loss_21; `mean` halves it (and the gradient at the same lr)."""
    x1, x2 = torch.randn(6, 3, 8, 8), torch.randn(6, 3, 8, 8)
    terms = []
    for a, b in ((x1, x2), (x2, x1)):
        m = _moco(tiny_encoder, shuffle_bn="none")
        queue = m.queue.keys.clone()
        with torch.no_grad():
            q = F.normalize(m.head(m.backbone(a)), dim=1)
            k = F.normalize(m.head_k(m.backbone_k(b)), dim=1)
        terms.append(infonce_loss(q, k, queue, 0.2)[0])
    summed = _moco(tiny_encoder, shuffle_bn="none", symmetric=True)([x1, x2]).loss
    mean = _moco(tiny_encoder, shuffle_bn="none", symmetric=True, symmetric_reduction="mean")([x1, x2]).loss
    torch.testing.assert_close(summed.detach(), terms[0] + terms[1], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(mean.detach(), (terms[0] + terms[1]) / 2, rtol=1e-4, atol=1e-5)
    with pytest.raises(ConfigError):
        _moco(tiny_encoder, symmetric=True, symmetric_reduction="max")


def test_infonce_logits_are_fp32_under_bf16_autocast(tiny_encoder, monkeypatch):
    import sslkit.methods.mocov1 as mocov1_module
    seen = []

    def spy(q, k, queue, tau):
        out = infonce_loss(q, k, queue, tau)
        seen.append(infonce_logits(q, k, queue, tau).dtype)
        return out

    monkeypatch.setattr(mocov1_module, "infonce_loss", spy)
    m = _moco(tiny_encoder, shuffle_bn="none")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m([torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)])
    assert seen == [torch.float32] and out.loss.dtype == torch.float32


def test_stall_check_warns_once_after_300_steps_at_chance(tiny_encoder):
    import math

    m = _moco(tiny_encoder)  # K = 24
    chance = math.log(25)
    assert m.stall_check(10, {"loss": chance * 1.003, "acc": 0.0}) is None
    assert m.stall_check(200, {"loss": chance, "acc": 0.0}) is None
    assert m.stall_check(300, {"loss": chance * 0.5, "acc": 0.2}) is None  # learning: the count restarts
    assert m.stall_check(310, {"loss": chance, "acc": 0.0}) is None
    assert m.stall_check(600, {"loss": chance, "acc": 0.0}) is None  # 290 steps so far
    warning = m.stall_check(610, {"loss": chance, "acc": 0.001})
    assert warning is not None and "\n" not in warning and "since step 310" in warning
    assert "ln(K+1)=3.219" in warning and "warmup" in warning and "temperature" in warning
    assert m.stall_check(900, {"loss": chance, "acc": 0.0}) is None  # once only
    sym = _moco(tiny_encoder, symmetric=True)  # the summed symmetric loss sits at 2 ln(K+1)
    assert sym.chance_loss() == pytest.approx(2 * chance)
    assert _moco(tiny_encoder, symmetric=True, symmetric_reduction="mean").chance_loss() == pytest.approx(chance)


def test_stall_check_warns_past_300_steps_whatever_the_logging_interval_and_needs_loss_and_acc(tiny_encoder):
    import math

    m = _moco(tiny_encoder)
    chance = math.log(25)
    assert m.stall_check(5, {"loss": chance}) is None  # no accuracy logged: nothing to judge
    assert m.stall_check(5, {"acc": 0.0}) is None
    assert m.stall_check(5, {"loss": chance, "acc": 0.0}) is None
    assert m.stall_check(299, {"loss": chance, "acc": 0.0}) is None  # 294 steps
    assert m.stall_check(312, {"loss": chance, "acc": 0.0}) is not None  # 307 steps: past 300, not equal to it
    fresh = _moco(tiny_encoder)
    assert fresh.stall_check(0, {"loss": chance, "acc": 0.0}) is None
    assert fresh.stall_check(290, {"loss": chance, "acc": 0.5}) is None  # at chance loss but learning to match
    assert fresh.stall_check(310, {"loss": chance, "acc": 0.0}) is None  # so the count restarted at 310


def test_check_params_takes_a_partial_mapping():
    """Bounds are checked on the keys given; a missing key is not an error (the YAML fills it in)."""
    MoCoV1.check_params({})
    MoCoV1.check_params({"temperature": 0.2})
    with pytest.raises(ConfigError, match="method.momentum must be in"):
        MoCoV1.check_params({"momentum": -0.1})
    for t in (0.0, -0.5):
        with pytest.raises(ConfigError, match="temperature"):
            MoCoV1.check_params({"temperature": t})
