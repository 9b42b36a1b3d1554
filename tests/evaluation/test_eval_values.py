"""The online kNN monitor's number by value: it equals kNN computed here on the saved checkpoint."""

from __future__ import annotations

import json

import pytest

from sslkit.config import compose
from tests.conftest import needs_fashion
from tests.evaluation.offline import offline_knn

pytestmark = needs_fashion
MONITOR_SUBSET = 500  # trained_run's trainer.monitor_subset


def test_monitor_number_equals_offline_knn_on_the_saved_checkpoint(trained_run):
    """The monitor ran after the last epoch, on the weights the final checkpoint holds."""
    records = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in records if "knn_top1" in r][-1]
    ev = compose([], extra=["eval=knn"]).eval
    expected = offline_knn(trained_run, MONITOR_SUBSET, MONITOR_SUBSET, [200], float(ev.temperature))
    assert last["knn_top1"] == pytest.approx(expected[200]["top1"], abs=1e-9)
