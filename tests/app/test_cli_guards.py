"""Every validation error and guard, through the CLI's entry point: one line on stderr and exit code 2,
never a traceback, and nothing trained. In-process (`sslkit.app.cli.main`) on a hand-built 64-image IDX
dataset, so each case costs a config composition and a model build, not a Python start-up."""

from __future__ import annotations

import pytest
import torch

from sslkit.app import cli
from sslkit.devices import World
from tests.idx_files import write_idx_dataset


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("idx")
    write_idx_dataset(root, n_train=64, n_test=32)
    return str(root)


def one_line_error(capsys, argv: list[str], *fragments: str) -> str:
    code = cli.main(argv)
    err = [ln for ln in capsys.readouterr().err.strip().splitlines() if "img/s" not in ln and "[started]" not in ln]
    assert code == 2, err  # progress lines aside, the error is one line
    assert len(err) == 1 and err[0].startswith("sslkit: error: "), err
    for f in fragments:
        assert f in err[0], err[0]
    return err[0]


SLOW = pytest.mark.slow  # about a second each (two Hydra compositions): the rarer mistakes run in test-slow
TRAIN_ERRORS = [
    (["method.temperature=0"], "method.temperature=0 is invalid: must be > 0"),
    (["method=simclr", "method.temperature=-0.5"], "method.temperature=-0.5 is invalid: must be > 0"),
    pytest.param(["method=mocov1", "method.temperature=0"], "method.temperature=0 is invalid: must be > 0", marks=SLOW),
    (["method.momentum=1.5"], "method.momentum must be in [0, 1]"),
    pytest.param(["method.momentum=-0.1"], "method.momentum must be in [0, 1]", marks=SLOW),
    (["method.momentum_schedule=linear"], "method.momentum_schedule='linear' is invalid"),
    (["method.queue_size=0"], "method.queue_size=0 is invalid: must be > 0"),
    (["method.shuffle_bn=sometimes"], "method.shuffle_bn='sometimes' is invalid"),
    (["method=simclr", "method.chunk_size=0"], "method.chunk_size"),
    pytest.param(["method=simclr", "method.chunk_size=big"], "method.chunk_size='big' is invalid", marks=SLOW),
    (["data.batch_size=0"], "data.batch_size=0 is invalid: must be > 0"),
    pytest.param(["data.batch_size=65"], "data.batch_size=65 is larger than the 64 training images", marks=SLOW),
    (["data.subset=0"], "data.subset must be a positive number"),
    (["trainer.epochs=0"], "trainer.epochs=0 is invalid: must be >= 1"),
    pytest.param(["optim.schedule=linear"], "optim.schedule='linear' is invalid", marks=SLOW),
    pytest.param(["optim.lr_scaling=cubic"], "optim.lr_scaling='cubic' is invalid", marks=SLOW),
    pytest.param(["head.kind=conv"], "unknown head.kind 'conv'", marks=SLOW),
    pytest.param(["head.num_layers=0"], "head.num_layers must be >= 1", marks=SLOW),
    pytest.param(["device=tpu"], "device='tpu' is invalid", marks=SLOW),
]


def _id(case) -> str:
    return " ".join(case.values[0] if hasattr(case, "values") else case[0])


@pytest.mark.parametrize("overrides,fragment", TRAIN_ERRORS, ids=[_id(c) for c in TRAIN_ERRORS])
def test_invalid_training_settings(capsys, tmp_path, data_root, overrides, fragment):
    out = tmp_path / "run"
    one_line_error(capsys, ["train", f"data.root={data_root}", "data.batch_size=16", "head.hidden_dim=32",
                            "trainer.max_steps=1", f"out={out}", *overrides], fragment)
    assert not (out / "checkpoints").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only machine's message")
def test_cuda_without_cuda(capsys, data_root):
    one_line_error(capsys, ["train", f"data.root={data_root}", "device=cuda"], "CUDA is not available")


@pytest.fixture
def world_of(monkeypatch):
    """Make `sslkit train` believe it runs as rank 0 of `size` CPU processes (its checks run first)."""

    def patch(size: int) -> None:
        monkeypatch.setattr("sslkit.app.train.init_world", lambda spec: World(0, 0, size, torch.device("cpu")))

    return patch


def test_sync_bn_on_cpu_processes(capsys, data_root, world_of, tmp_path):
    world_of(2)
    one_line_error(capsys, ["train", f"data.root={data_root}", "data.batch_size=16", "trainer.sync_bn=true",
                            f"out={tmp_path}"], "trainer.sync_bn=true needs CUDA")


def test_batch_not_divisible_by_the_process_count(capsys, data_root, world_of, tmp_path):
    world_of(3)
    one_line_error(capsys, ["train", f"data.root={data_root}", "data.batch_size=16", f"out={tmp_path}"],
                   "data.batch_size=16 must be divisible by the 3 processes")


KNN_ERRORS = [
    (["eval.k=[0,20]"], "eval.k must be a list of positive integers"),
    (["eval.k=[200]"], "eval.k=200 exceeds the 64 training images"),
    (["eval.k=many"], "eval.k must be an integer or a list of integers"),
]


@pytest.mark.parametrize("overrides,fragment", KNN_ERRORS, ids=[" ".join(o) for o, _ in KNN_ERRORS])
def test_invalid_knn_settings(capsys, tmp_path, data_root, overrides, fragment):
    one_line_error(capsys, ["eval", "knn", "eval.features=pixels", f"data.root={data_root}", f"out={tmp_path}",
                            *overrides], fragment)
