"""Bad input gets one line on stderr and exit code 2, never a traceback (real subprocesses)."""

import pytest

from tests.conftest import needs_fashion, run_cli


def _one_line_error(res, *fragments):
    assert res.returncode == 2, (res.returncode, res.stderr[-2000:])
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sslkit: error: "), res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    for f in fragments:
        assert f in lines[0], lines[0]


@pytest.mark.parametrize("override,fragments", [
    ("method=mocov3", ["unknown method 'mocov3'", "did you mean 'mocov2'"]),
    ("backbone=resnet05", ["unknown backbone 'resnet05'", "did you mean 'resnet50'"]),
    ("data=fashion-mnist", ["unknown data 'fashion-mnist'", "did you mean 'fashion_mnist'"]),
    ("trainer.epoch=3", ["unknown config key 'trainer.epoch'", "did you mean 'trainer.epochs'"]),
    ("optimm=sgd", ["unknown config key 'optimm'"]),
    ("data.batch_size=many", ["data.batch_size='many'", "expected an integer"]),
])
def test_typos_name_the_closest_valid_choice(override, fragments):
    _one_line_error(run_cli("train", override), *fragments)


def test_missing_data_root(tmp_path):
    _one_line_error(run_cli("train", f"data.root={tmp_path / 'nowhere'}"), "does not exist")


def test_missing_dataset_names_searched_paths_and_install(tmp_path):
    res = run_cli("train", "data=cifar10", f"data.root={tmp_path}")
    _one_line_error(res, "cifar10", str(tmp_path), "data.download=true")


def test_empty_image_folder(tmp_path):
    (tmp_path / "imgs").mkdir()
    _one_line_error(run_cli("train", "data=imagefolder", f"data.root={tmp_path / 'imgs'}"), "no images found")


def test_corrupt_image_in_a_dataloader_worker(tmp_path):
    from PIL import Image

    for cls in ("a", "b"):
        (tmp_path / "train" / cls).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (40, 40), (60 * i, 0, 0)).save(tmp_path / "train" / cls / f"{i}.png")
    (tmp_path / "train" / "a" / "broken.jpg").write_bytes(b"not a jpeg")
    res = run_cli("train", "data=imagefolder", f"data.root={tmp_path}", "data.image_size=32", "data.batch_size=9",
                  "data.num_workers=2", "method.queue_size=18", "trainer.max_steps=2")
    _one_line_error(res, "cannot decode image", "broken.jpg")


def test_checkpoint_pointing_at_nothing(tmp_path):
    _one_line_error(run_cli("eval", "knn", f"checkpoint={tmp_path / 'missing'}"), "does not exist")
    _one_line_error(run_cli("export", f"checkpoint={tmp_path / 'missing'}"), "does not exist")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    _one_line_error(run_cli("export", f"checkpoint={tmp_path / 'junk.pt'}"), "cannot read checkpoint")


@needs_fashion
def test_batch_larger_than_dataset():
    _one_line_error(run_cli("train", "data.subset=100", "data.batch_size=256"),
                    "data.batch_size=256 is larger than the 100 training images")


def test_not_an_override():
    _one_line_error(run_cli("train", "mocov2"), "'mocov2' is not an override")


@pytest.mark.parametrize("args", [["--help"], ["train", "--help"], ["eval", "--help"], ["eval", "knn", "--help"],
                                  ["eval", "linear", "--help"], ["eval", "batch-compare", "--help"],
                                  ["methods", "--help"], ["export", "--help"]])
def test_every_command_has_help(args):
    res = run_cli(*args)
    assert res.returncode == 0 and res.stdout.startswith("usage: sslkit")
