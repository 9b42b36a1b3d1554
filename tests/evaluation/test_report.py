"""`sslkit report`: every JSON as tables, pictures inlined byte for byte, nothing fetched; and a slow test
that renders the page in headless Chromium and watches its network log."""

from __future__ import annotations

import base64
import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from sslkit.evaluation.plots import plot_batch_compare
from sslkit.evaluation.report import json_tables, write_report
from tests.evaluation.pictures import assert_picture

SHOTS = Path(__file__).resolve().parents[2] / "runs" / "test-screenshots"


def test_json_renders_generically_as_tables():
    page = json_tables({"top1": 71.25, "cache": {"hit": True, "dir": None}, "ks": [10, 20],
                        "rows": [{"method": "simclr", "batch": 256}, {"method": "mocov2", "extra": 1}]})
    assert '<tr><th>top1</th><td class="num">71.25</td></tr>' in page
    assert "<tr><th>cache.hit</th><td>true</td></tr>" in page and "<th>cache.dir</th><td>—</td>" in page
    assert "<th>ks</th><td>[10, 20]</td>" in page
    # a list of objects is one table with the union of their keys as columns
    assert "<tr><th>method</th><th>batch</th><th>extra</th></tr>" in page
    assert '<tr><td>mocov2</td><td>—</td><td class="num">1</td></tr>' in page
    assert json_tables([{"a": 1}]).startswith("<table><tr><th>a</th></tr>")
    assert "&lt;b&gt;" in json_tables({"name": "<b>"})  # escaped
    assert "… (30 items)" in json_tables({"long": list(range(30))})


def make_run(run: Path) -> dict[str, Path]:
    """A run directory as `sslkit train` and `sslkit eval ...` leave it, without training."""
    (run / "eval" / "cache").mkdir(parents=True)
    (run / "config.yaml").write_text("method:\n  name: mocov2\nseed: 0\n")
    (run / "metrics.jsonl").write_text("".join(
        json.dumps({"step": s, "epoch": 0, "loss": 7 - s / 5, "lr": 0.06, "images_per_s": 900.0,
                    "acc": s / 12, "queue_fill": min(1, s / 4)}) + "\n" for s in range(1, 13)))
    (run / "eval" / "knn.json").write_text(json.dumps({"evaluation": "knn", "top1": 81.5, "results":
                                                       {"200": {"top1": 81.5, "top5": 98.9}}}))
    (run / "eval" / "study.json").write_text(json.dumps([{"seed": 0, "top1": 80.1}, {"seed": 1, "top1": 80.9}]))
    (run / "eval" / "cache" / "junk.json").write_text("{}")  # not an evaluation
    png = plot_batch_compare([{"method": "simclr", "batch_size": 256, "knn_top1": 70.0, "linear_top1": 75.0,
                               "train_seconds": 60.0, "peak_memory_mb": 900.0}], run / "eval" / "batch_compare.png")
    return {"png": png}


def test_report_inlines_every_picture_and_table(tmp_path, capsys):
    from sslkit.app.cli import main

    run = tmp_path / "run"
    files = make_run(run)
    assert main(["report", f"checkpoint={run}"]) == 0
    assert capsys.readouterr().out.strip() == f"report: 2 evaluations, 2 pictures -> {run / 'report.html'}"
    page = (run / "report.html").read_text()
    assert_picture(run / "training.png")  # drawn for the report from metrics.jsonl
    images = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert [base64.b64decode(i) for i in images] == [(run / "training.png").read_bytes(), files["png"].read_bytes()]
    assert "<h3>eval/knn.json</h3>" in page and '<th>results.200.top5</th><td class="num">98.9</td>' in page
    assert "<h3>eval/study.json</h3><table><tr><th>seed</th><th>top1</th></tr>" in page
    assert "junk.json" not in page and html.escape("name: mocov2") in page
    assert not re.search(r"(src|href)=\"(?!data:)", page) and "http" not in page.lower()  # nothing to fetch
    assert page.count("<table") == 2


def test_report_of_a_missing_run_is_one_line(tmp_path, capsys):
    from sslkit.app.cli import main

    assert main(["report", f"checkpoint={tmp_path / 'nope'}"]) == 2
    assert main(["report", f"checkpoint={tmp_path}"]) == 2  # a directory that is no run
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(e.startswith("sslkit: error: ") for e in err)
    assert "does not exist" in err[0] and "not an sslkit run directory" in err[1]


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
PROBE = ("<script>addEventListener('load',()=>{document.body.dataset.probe=JSON.stringify({"
         "images:[...document.images].map(i=>i.complete?i.naturalWidth:0),"
         "tables:document.querySelectorAll('table').length})})</script>")


def chromium(page: Path, work: Path, *args: str) -> tuple[str, list[str]]:
    """Load `page` in headless Chromium with a fresh profile; returns stdout and the URLs of every
    network request the page itself started (the browser's own background requests have no origin)."""
    net = work / "net.json"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--no-first-run", "--disable-sync", f"--user-data-dir={work / 'profile'}",
           f"--log-net-log={net}", "--virtual-time-budget=5000", *args, page.resolve().as_uri()]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    log = json.loads(net.read_text())
    starts = {v: k for k, v in log["constants"]["logEventTypes"].items()}
    urls = [e["params"]["url"] for e in log["events"] if starts.get(e["type"]) == "URL_REQUEST_START_JOB"
            and "url" in e.get("params", {}) and e["params"].get("initiator") != "not an origin"]
    return res.stdout, urls


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (make test-slow installs it)")
def test_report_renders_offline_in_headless_chromium(tmp_path):
    run = tmp_path / "run"
    make_run(run)
    page, _ = write_report(run)
    # the page as saved: a screenshot with pixels, and no request of its own
    SHOTS.mkdir(parents=True, exist_ok=True)
    shot = SHOTS / "report.png"
    shot.unlink(missing_ok=True)
    (tmp_path / "a").mkdir()
    _, urls = chromium(page, tmp_path / "a", "--window-size=1200,1800", f"--screenshot={shot}")
    assert urls == []
    assert_picture(shot, (1200, 1800))
    # the same page with a probe: every image decoded, every table in the DOM
    probed = run / "probed.html"
    probed.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    (tmp_path / "b").mkdir()
    dom, urls = chromium(probed, tmp_path / "b", "--dump-dom")
    assert urls == []
    probe = json.loads(html.unescape(re.search(r'data-probe="([^"]*)"', dom).group(1)))
    assert probe["tables"] == 2 and len(probe["images"]) == 2 and all(w > 500 for w in probe["images"])
    # the check can fail: a page that fetches an image is caught
    bad = tmp_path / "bad.html"
    bad.write_text('<html><body><img src="http://127.0.0.1:9/x.png"></body></html>')
    (tmp_path / "c").mkdir()
    assert chromium(bad, tmp_path / "c", "--dump-dom")[1] == ["http://127.0.0.1:9/x.png"]
