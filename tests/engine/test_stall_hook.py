"""The engine passes every logged step's scalars to the method's `stall_check` and prints its warning."""

from sslkit.app.train import train
from sslkit.config import compose
from sslkit.methods.mocov2 import MoCoV2
from tests.conftest import needs_fashion


@needs_fashion
def test_engine_prints_the_methods_stall_warning_once(tmp_path, monkeypatch, capsys):
    calls = []

    def fake_check(self, step, logs):
        calls.append((step, sorted(logs)))
        return "warning: stuck" if step == 2 else None

    monkeypatch.setattr(MoCoV2, "stall_check", fake_check)
    train(compose(["data.subset=64", "data.batch_size=16", "trainer.max_steps=3", "method.queue_size=32",
                   "head.hidden_dim=32", "trainer.log_every_steps=1", "trainer.progress=lines",
                   "trainer.checkpoint_every_steps=0", f"out={tmp_path}"]))
    assert [s for s, _ in calls] == [1, 2, 3]
    assert {"loss", "acc", "lr"} <= set(calls[0][1])
    assert capsys.readouterr().out.count("warning: stuck") == 1
