"""The CPU split of an evaluation: decoded images get DataLoader workers only above 2 cores."""

from __future__ import annotations

from sslkit.app.evaluate import eval_wants_workers
from sslkit.engine.hardware import CpuSplit, cpu_split


def test_two_cores_decode_in_the_main_process_and_both_run_the_model():
    assert cpu_split(2, eval_wants_workers("imagefolder", 2)) == CpuSplit(threads=2, workers=0)
    assert cpu_split(1, eval_wants_workers("imagefolder", 1)) == CpuSplit(threads=1, workers=0)


def test_more_cores_share_between_workers_and_threads():
    assert cpu_split(8, eval_wants_workers("imagefolder", 8)) == CpuSplit(threads=4, workers=4)
    assert cpu_split(3, eval_wants_workers("imagefolder", 3)) == CpuSplit(threads=2, workers=1)


def test_in_memory_data_never_gets_workers():
    assert not eval_wants_workers("fashion_mnist", 16)
    assert cpu_split(16, eval_wants_workers("fashion_mnist", 16)) == CpuSplit(threads=16, workers=0)
