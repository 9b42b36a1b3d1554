"""An unreadable image is skipped, warned about once with its path and counted in the end-of-run
summary; more than data.max_bad_fraction of them is a one-line error (real `sslkit train` runs)."""

from PIL import Image

from sslkit.data.imagefolder import load_imagefolder
from tests.conftest import run_cli


def _folder(tmp_path, broken=1):
    for cls in ("a", "b"):
        (tmp_path / "train" / cls).mkdir(parents=True)
        for i in range(5):
            Image.new("RGB", (40, 40), (50 * i, 20, 0)).save(tmp_path / "train" / cls / f"{i}.png")
    for i in range(broken):
        (tmp_path / "train" / "a" / f"broken{i}.jpg").write_bytes(b"not a jpeg")
    return tmp_path


ARGS = ["data=imagefolder", "data.image_size=32", "data.batch_size=10", "method.queue_size=20",
        "head.hidden_dim=32", "trainer.max_steps=2", "trainer.progress=none"]


def test_unreadable_image_is_skipped_logged_once_and_counted(tmp_path):
    root = _folder(tmp_path / "imgs")
    res = run_cli("train", *ARGS, f"data.root={root}", "data.num_workers=2", "data.max_bad_fraction=0.2",
                  f"out={tmp_path / 'run'}")
    assert res.returncode == 0, res.stderr[-3000:]
    warnings = [line for line in res.stderr.splitlines() if "unreadable image" in line]
    assert len(warnings) == 1 and "broken0.jpg" in warnings[0], res.stderr  # 2 epochs, one warning
    assert "skipped 1 unreadable image " in res.stdout


def test_more_than_the_threshold_is_one_line(tmp_path):
    root = _folder(tmp_path / "imgs", broken=3)
    res = run_cli("train", *ARGS, f"data.root={root}", "data.max_bad_fraction=0.2")
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-3000:]
    *warnings, error = res.stderr.strip().splitlines()
    assert all(w.startswith("sslkit: warning: skipping unreadable image") for w in warnings) and len(warnings) <= 2
    assert error.startswith("sslkit: error: cannot decode image") and "more than data.max_bad_fraction=0.2" in error


def test_skipped_item_is_replaced_by_the_next_readable_one(tmp_path):
    root = _folder(tmp_path)
    ds = load_imagefolder(str(root), "train", 32, max_bad_fraction=0.5)
    i = ds.paths.index(str(root / "train" / "a" / "broken0.jpg"))
    img, label = ds[i]
    assert img.equal(ds[i + 1][0]) and label == ds[i + 1][1]
    assert ds.bad_count() == 1 and ds.bad_paths() == [str(root / "train" / "a" / "broken0.jpg")]
