"""Paths stay inside their roots: the symlink rule under data.root, run directories that hold links
out of them, names from files (COCO / VOC file names, timm names) that never become paths unchecked,
and a report that inlines nothing from outside its run and escapes everything it shows."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from PIL import Image

from sslkit.data.imagefolder import load_imagefolder
from sslkit.engine.outputs import check_links, default_run_dir
from sslkit.errors import ConfigError, DataError
from sslkit.evaluation.report import build_report, write_report


def _png(path: Path, color: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (color, 0, 0)).save(path)
    return path


@pytest.fixture
def tree(tmp_path):
    """data.root with one real image per class, and links: a file and a folder outside, one inside, a cycle."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    _png(root / "train" / "a" / "0.png")
    _png(root / "train" / "b" / "0.png")
    _png(outside / "secret.png")
    _png(outside / "cls" / "1.png")
    os.symlink(outside / "secret.png", root / "train" / "a" / "out.png")
    os.symlink(outside / "cls", root / "train" / "b" / "outdir")
    os.symlink(outside / "cls", root / "train" / "c")  # a class folder that is a link out
    os.symlink(root / "train" / "a" / "0.png", root / "train" / "b" / "in.png")
    os.symlink(root / "train", root / "train" / "a" / "loop")  # a cycle back up
    return root


def test_links_out_of_data_root_are_skipped_and_counted(tree, capsys):
    ds = load_imagefolder(str(tree), "train", 8)
    names = sorted(str(Path(p).relative_to(tree)) for p in ds.paths)
    assert names == ["train/a/0.png", "train/b/0.png", "train/b/in.png"]  # the cycle is walked once
    assert ds.classes == ["a", "b"]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "skipped 3 symlinks" in err[0] and "data.symlinks=follow" in err[0]


def test_follow_takes_every_link_and_still_ends_on_a_cycle(tree, capsys):
    ds = load_imagefolder(str(tree), "train", 8, symlinks="follow")
    names = {os.path.basename(p) for p in ds.paths}
    assert {"out.png", "1.png", "in.png"} <= names and ds.classes == ["a", "b", "c"]
    assert capsys.readouterr().err == ""
    with pytest.raises(DataError, match="data.symlinks=sideways is invalid"):
        load_imagefolder(str(tree), "train", 8, symlinks="sideways")


def test_a_run_dir_with_a_link_out_is_never_written_through(tmp_path):
    run, victim = tmp_path / "run", tmp_path / "victim.txt"
    run.mkdir()
    victim.write_text("keep")
    check_links(run)
    os.symlink(victim, run / "metrics.jsonl")
    with pytest.raises(ConfigError, match="metrics.jsonl is a symlink .* outside the run directory"):
        check_links(run)
    with pytest.raises(ConfigError, match="outside the run directory"):
        build_report(run)
    from sslkit.app.eval_setup import output_dir
    from sslkit.config import compose

    with pytest.raises(ConfigError, match="outside the run directory"):
        output_dir(compose([]), "knn", run / "checkpoints" / "last.pt")
    assert victim.read_text() == "keep"


def test_a_link_planted_at_the_report_path_is_replaced_not_followed(tmp_path):
    run, victim = tmp_path / "run", tmp_path / "victim.txt"
    run.mkdir()
    (run / "config.yaml").write_text("a: 1\n")
    victim.write_text("keep")
    os.symlink(victim, run / "report.html")
    path, _ = write_report(run)
    assert victim.read_text() == "keep" and not path.is_symlink() and "<html" in path.read_text()


def test_the_report_inlines_nothing_from_outside_and_escapes_what_it_shows(tmp_path):
    run, outside = tmp_path / "run", tmp_path / "outside"
    _png(outside / "secret.png", 7)
    (outside / "secret.json").write_text('{"password": "hunter2"}')
    (run / "eval").mkdir(parents=True)
    os.symlink(outside / "secret.png", run / "eval" / "leak.png")
    os.symlink(outside / "secret.json", run / "eval" / "leak.json")
    hostile = "<script>alert(1)</script>"
    (run / "eval" / "knn.json").write_text(json.dumps({hostile: hostile, "rows": [{hostile: [hostile]}]}))
    _png(run / "eval" / f"{hostile.replace('/', '_')}.png")
    (run / "config.yaml").write_text(f"method:\n  name: '{hostile}'\n")
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 1.0, hostile: 1}) + "\n")
    page, counts = build_report(run)
    assert "hunter2" not in page and "leak" not in page and counts["evaluations"] == 1
    assert "<script" not in page and page.count("&lt;script&gt;") >= 4


def test_names_from_a_config_never_make_a_run_path():
    path = default_run_dir("pkg.mod:../../Evil", {"name": "timm", "timm_name": "hf-hub:org/../../x"})
    assert path.parent == Path("runs") and "/" not in path.name and ".." not in path.name.split("_")[1]


def test_voc_image_set_ids_stay_inside_their_folders(tmp_path):
    from sslkit.evaluation.detection.data import VOCDataset

    voc = tmp_path / "VOCdevkit" / "VOC2007"
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (voc / sub).mkdir(parents=True)
    (voc / "ImageSets" / "Main" / "trainval.txt").write_text("000001\n../../../../etc/passwd\n")
    with pytest.raises(DataError, match="points outside"):
        VOCDataset(str(tmp_path), "2007", "trainval", train=False)


@pytest.mark.parametrize("member", ["../../escape.txt", "/tmp/abs-escape.txt", "link"])
def test_a_downloaded_archive_cannot_write_outside_its_target(tmp_path, member):
    """data.download=true extracts with tarfile's `data` filter: `..`, absolute names and links out are refused."""
    import io
    import tarfile

    from sslkit.data.cifar import download_archive

    archive = tmp_path / "a.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("cifar-10-batches-py/ok.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"ok"))
        if member == "link":
            info = tarfile.TarInfo("cifar-10-batches-py/evil")
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(info)
        else:
            info = tarfile.TarInfo(member)
            info.size = 4
            tar.addfile(info, io.BytesIO(b"evil"))
    target = tmp_path / "deep" / "er" / "target"
    if member.startswith("/"):  # the filter strips the leading slash: extracted inside, then discarded
        download_archive(archive.as_uri(), "cifar-10-batches-py", target)
        assert sorted(p.name for p in target.iterdir()) == ["cifar-10-batches-py"]
    else:
        with pytest.raises(DataError, match="could not download"):
            download_archive(archive.as_uri(), "cifar-10-batches-py", target)
        assert not (target / "cifar-10-batches-py").exists()
    assert not (tmp_path / "deep" / "escape.txt").exists() and not Path("/tmp/abs-escape.txt").exists()
