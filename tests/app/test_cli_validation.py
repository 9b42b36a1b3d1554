"""Input that used to be silently accepted or ignored is now one line and exit 2 (or a warning),
through the real CLI. The bad inputs are the ones issue 10 lists."""

import pytest

from tests.app.test_cli_errors import _one_line_error
from tests.conftest import needs_fashion, run_cli

SLOW = pytest.mark.slow
SMALL = ["data.subset=64", "data.batch_size=32", "method.queue_size=64", "head.hidden_dim=32",
         "trainer.max_steps=1", "trainer.progress=none"]


@pytest.mark.parametrize("override,fragments", [
    ("+method.temprature=0.5", ["unknown config key 'method.temprature'", "did you mean 'method.temperature'"]),
    pytest.param("+method.foo=1", ["unknown config key 'method.foo' for method 'mocov2'"], marks=SLOW),
    pytest.param("method.temprature=0.5", ["did you mean 'method.temperature'"], marks=SLOW),
    ("+eval.foo=1", ["unknown config key 'eval.foo'"]),
    pytest.param("+data.foo=1", ["unknown config key 'data.foo'"], marks=SLOW),
    pytest.param("data.bach_size=1", ["did you mean 'data.batch_size'"], marks=SLOW),
])
def test_unknown_keys_name_the_closest_and_never_recommend_plus(override, fragments):
    res = run_cli("train", override)
    _one_line_error(res, *fragments)
    assert "+method" not in res.stderr and "add a new key" not in res.stderr


def test_plugin_params_come_from_its_signature(tmp_path):
    (tmp_path / "plug.py").write_text(
        "from sslkit.methods.simclr import SimCLR\n\n"
        "class Plug(SimCLR):\n"
        "    def __init__(self, backbone, feature_dim, head=None, *, scale: float = 1.0, **kw):\n"
        "        super().__init__(backbone, feature_dim, head, **kw)\n")
    import os

    old = os.environ.get("PYTHONPATH", "")
    os.environ["PYTHONPATH"] = f"{tmp_path}{os.pathsep}{old}"
    try:
        res = run_cli("train", "method=plug:Plug", "method.scal=2")
    finally:
        os.environ["PYTHONPATH"] = old
    # its own parameter and, through **kw, SimCLR's: custom.yaml injects nothing (no temperature key)
    _one_line_error(res, "unknown config key 'method.scal' for method 'plug:Plug'", "did you mean 'method.scale'",
                    "method.temperature", "method.chunk_size")


@pytest.mark.parametrize("override,fragments", [
    ("trainer.max_steps=0", ["trainer.max_steps=0 is invalid", "null: no step limit"]),
    ("trainer.precision=fp8", ["trainer.precision=fp8 is invalid", "auto, 32, bf16, fp16"]),
    pytest.param("trainer.progress=fancy", ["trainer.progress=fancy is invalid"], marks=SLOW),
    pytest.param("trainer.threads=0", ["trainer.threads=0 is invalid"], marks=SLOW),
    ("optim.lr=-1", ["optim.lr=-1 is invalid: must be > 0"]),
    pytest.param("optim.warmup_epochs=soon", ["optim.warmup_epochs=soon is invalid", "or auto"], marks=SLOW),
    pytest.param("method.queue_size=0", ["method.queue_size=0 is invalid"], marks=SLOW),
    pytest.param("data.num_workers=-1", ["data.num_workers=-1 is invalid"], marks=SLOW),
    pytest.param("out=/proc/x", ["cannot create out=/proc/x"], marks=SLOW),
    ("device=cuda:0 trainer.devices=2", ["device=cuda:0 puts all 2 processes on one GPU"]),
    pytest.param("trainer.devices=3", ["data.batch_size=256 must be divisible by trainer.devices=3"], marks=SLOW),
])
def test_bad_values_are_one_line(override, fragments):
    _one_line_error(run_cli("train", *override.split()), *fragments)


@pytest.mark.parametrize("value", ["0", "-1"])
def test_eval_temperature_must_be_positive(value):
    _one_line_error(run_cli("eval", "knn", "eval.features=pixels", f"eval.temperature={value}"),
                    f"eval.temperature={value} is invalid")


def test_out_at_an_existing_file_for_train_eval_and_export(tmp_path):
    f = tmp_path / "afile"
    f.write_text("x")
    _one_line_error(run_cli("train", f"out={f}"), "is an existing file")
    _one_line_error(run_cli("eval", "knn", "eval.features=pixels", f"out={f}"), "is an existing file")


@needs_fashion
def test_unused_key_is_a_warning_and_eval_backbone_must_match(tmp_path):
    out = tmp_path / "r"
    res = run_cli("train", *SMALL, "eval.k=5", f"out={out}")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "sslkit: warning: eval.k is not used by `sslkit train`; ignored" in res.stderr.splitlines()
    _one_line_error(run_cli("eval", "knn", f"checkpoint={out}", "backbone=resnet50"),
                    "the checkpoint's backbone is resnet18", "backbone.name=resnet50")
    _one_line_error(run_cli("export", f"checkpoint={out}", "out=/proc/x/b.pt"), "/proc/x")


@needs_fashion
def test_data_root_without_the_dataset_never_falls_back(tmp_path):
    _one_line_error(run_cli("train", f"data.root={tmp_path}"), "fashion_mnist not found", f"searched {tmp_path})")


@pytest.mark.slow  # a CLI subprocess run of ~15 s: make test-slow
@needs_fashion
def test_resuming_a_finished_run_says_it_trained_nothing(tmp_path):
    out = tmp_path / "r"
    assert run_cli("train", *SMALL, f"out={out}").returncode == 0
    res = run_cli("train", f"trainer.resume={out}")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "nothing to train: the run already ended at step 1" in res.stdout
