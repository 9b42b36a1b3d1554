"""What the README says about loading an export: torchvision needs strict=False (only fc.* missing),
timm loads it strictly with num_classes=0, and a strict load into a model with a classifier fails."""

import pytest
import timm
import torch
import torchvision

from sslkit.app.export import export_backbone
from sslkit.nn.backbones import build_backbone


def test_torchvision_needs_strict_false(tmp_path):
    backbone, _ = build_backbone({"name": "resnet18"})
    sd = torch.load(export_backbone(backbone, tmp_path / "b.pt"), weights_only=True)
    with pytest.raises(RuntimeError, match="Missing key"):
        torchvision.models.resnet18().load_state_dict(sd)
    missing, unexpected = torchvision.models.resnet18().load_state_dict(sd, strict=False)
    assert set(missing) == {"fc.weight", "fc.bias"} and not unexpected


def test_timm_loads_strictly_with_num_classes_0(tmp_path):
    backbone, _ = build_backbone({"name": "timm", "timm_name": "resnet10t"})
    sd = torch.load(export_backbone(backbone, tmp_path / "b.pt"), weights_only=True)
    timm.create_model("resnet10t", num_classes=0).load_state_dict(sd)  # strict
    with pytest.raises(RuntimeError, match="Missing key"):
        timm.create_model("resnet10t").load_state_dict(sd)


# ---- sslkit export format=... (issue 21) ---------------------------------------------------------------

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402

from sslkit.app.cli import main  # noqa: E402
from sslkit.evaluation.context import load_trained  # noqa: E402
from sslkit.evaluation.exports import TOLERANCE, meta_path  # noqa: E402
from tests.evaluation.embed_fixtures import make_checkpoint  # noqa: E402


def _export(tmp_path: Path, ckpt: Path, fmt: str, name: str) -> tuple[Path, dict]:
    import json

    out = tmp_path / name
    assert main(["export", f"checkpoint={ckpt}", f"format={fmt}", f"out={out}"]) == 0
    return out, json.loads(meta_path(out).read_text())


def test_onnx_output_equals_pytorch_at_any_batch_size(tmp_path):
    ckpt = make_checkpoint(tmp_path / "c.pt")
    out, meta = _export(tmp_path, ckpt, "onnx", "b.onnx")
    backbone = load_trained(ckpt).backbone.eval()
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for batch in (1, 7):  # exported with a batch of 2: the batch axis is dynamic
        x = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(batch))
        got = session.run(["features"], {"images": x.numpy()})[0]
        with torch.no_grad():
            want = backbone(x).numpy()
        assert got.shape == want.shape == (batch, 64)
        assert np.abs(got - want).max() <= TOLERANCE
    assert meta["max_abs_diff"] <= TOLERANCE and meta["feature_dim"] == 64


def test_torchscript_output_equals_pytorch(tmp_path):
    ckpt = make_checkpoint(tmp_path / "c.pt")
    out, _ = _export(tmp_path, ckpt, "torchscript", "b.pt")
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(torch.jit.load(str(out))(x), load_trained(ckpt).backbone.eval()(x), atol=1e-5)


@pytest.mark.parametrize("small_images", [True, pytest.param(False, marks=pytest.mark.slow)])
def test_torchvision_export_loads_strictly_and_gives_the_embedding(tmp_path, small_images):
    """The .json's own loading code (the small-image stem swapped in) builds the module; strict=True; and
    embed/search take the export (its .json beside it) as the same encoder as its checkpoint."""
    ckpt = make_checkpoint(tmp_path / "c.pt", {"name": "resnet18", "small_images": small_images})
    out, meta = _export(tmp_path, ckpt, "torchvision", "tv.pt")
    scope: dict = {}
    exec(meta["load"].replace(repr(out.name), repr(str(out))), scope)  # raises on any missing/unexpected key
    model = scope["model"].eval()
    assert isinstance(model, torchvision.models.ResNet)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), load_trained(ckpt).backbone.eval()(x), atol=1e-5)
    if small_images:  # without the documented stem the strict load fails
        with pytest.raises(RuntimeError, match="size mismatch"):
            torchvision.models.resnet18(num_classes=512).load_state_dict(torch.load(out, weights_only=True))
        from sslkit.evaluation.embed import encoder_of

        a, b = encoder_of(load_trained(ckpt)), encoder_of(load_trained(out))
        assert a.ident == b.ident and (a.image_size, a.mean, a.std) == (b.image_size, b.mean, b.std)


@pytest.mark.parametrize("cfg", [{"name": "timm", "timm_name": "resnet10t"},
                                 pytest.param({"name": "resnet18"}, marks=pytest.mark.slow)])
def test_timm_export_loads_into_timm(tmp_path, cfg):
    """A timm backbone, and a torchvision ResNet with the ImageNet stem (timm's ResNets share its keys)."""
    name = cfg.get("timm_name", cfg["name"])
    ckpt = make_checkpoint(tmp_path / "c.pt", cfg, image_size=32)
    out, _ = _export(tmp_path, ckpt, "timm", "timm.pt")
    model = timm.create_model(name, num_classes=0).eval()
    model.load_state_dict(torch.load(out, weights_only=True), strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), load_trained(ckpt).backbone.eval()(x), atol=1e-5)


def test_unknown_format_is_one_line_exit_2(tmp_path, capsys):
    assert main(["export", f"checkpoint={tmp_path / 'whatever'}", "format=tensorflow"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown export format 'tensorflow'" in err and "onnx" in err
