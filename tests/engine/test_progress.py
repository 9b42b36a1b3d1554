"""Progress lines off a TTY: a line at the start, with rate and ETA while running, one at the end."""

import io

from sslkit.engine import progress as P


def test_lines_mode_reports_rate_and_eta():
    out = io.StringIO()  # not a TTY: "auto" means lines
    with P.Progress(100, "features train", "img", stream=out, interval=0.0) as bar:
        assert bar.mode == "lines"
        bar.update(25)
        bar.update(25, postfix="loss=1.5")
    lines = out.getvalue().splitlines()
    assert lines[0] == "features train: 0/100 img (0%) [started]"
    assert lines[1].startswith("features train: 25/100 img (25%), ") and "img/s, eta " in lines[1]
    assert lines[2].startswith("features train: 50/100 img (50%)") and lines[2].endswith("loss=1.5")
    assert lines[3].startswith("features train: 50/100 img (50%), ") and "[done in " in lines[3]


def test_lines_are_throttled_and_none_is_silent():
    out = io.StringIO()
    with P.Progress(1000, "x", stream=out, interval=3600.0) as bar:
        for _ in range(1000):
            bar.update(1)
    assert len(out.getvalue().splitlines()) == 2  # start and end only, within the interval
    quiet = io.StringIO()
    with P.Progress(10, "x", mode="none", stream=quiet) as bar:
        bar.update(10)
    assert quiet.getvalue() == ""


def test_duration():
    assert [P.duration(s) for s in (5, 65, 3725)] == ["5s", "1m05s", "1h02m"]
    assert P.duration(float("nan")) == "?"
