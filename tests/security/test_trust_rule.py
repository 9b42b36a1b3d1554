"""The registry's trust rule, in process: a `module:Class` name is imported only when the user typed it
on the command line; a name read from a file (a checkpoint's config) is refused before any import."""

from __future__ import annotations

import itertools
import sys
import textwrap

import pytest
from omegaconf import OmegaConf

from sslkit.app.launch import resume_config
from sslkit.config import compose, to_yaml, trust_command_line
from sslkit.engine.checkpoint import FORMAT, VERSION
from sslkit.errors import ConfigError
from sslkit.files import save_atomic
from sslkit.plan import with_values
from sslkit.registry import import_spec, is_resolvable, resolve_method

_names = itertools.count()


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """A plug-in method module on sys.path that leaves a marker when imported; its spec and marker."""
    module = f"trust_plugin_{next(_names)}"
    marker = tmp_path / f"{module}.imported"
    (tmp_path / f"{module}.py").write_text(textwrap.dedent(f'''
        from pathlib import Path
        from sslkit.methods import ContrastiveMethod, StepOutput
        Path({str(marker)!r}).write_text("imported")

        class Plug(ContrastiveMethod):
            def training_step(self, views):
                return StepOutput(self.backbone(views[0]).mean())
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    return f"{module}:Plug", marker


def test_a_spec_not_typed_by_the_user_is_refused_before_import(plugin):
    spec, marker = plugin
    for attempt in (lambda: resolve_method(spec), lambda: import_spec("backbone", spec, ["resnet18"])):
        with pytest.raises(ConfigError, match="comes from a file .* not from the command line"):
            attempt()
    assert not is_resolvable(spec)
    assert not marker.exists() and spec.split(":")[0] not in sys.modules


def test_the_command_line_trusts_only_name_keys(plugin):
    spec, marker = plugin
    trust_command_line([f"data.root={spec}", f"out={spec}"])  # a spec-shaped value of another key
    with pytest.raises(ConfigError, match="comes from a file"):
        resolve_method(spec)
    assert not marker.exists()
    trust_command_line([f"method.name='{spec}'"])
    assert resolve_method(spec).__name__ == "Plug" and marker.exists()


def test_compose_trusts_its_overrides(plugin):
    spec, marker = plugin
    assert compose([f"method={spec}"]).method.name == spec and marker.exists()


def _checkpoint(tmp_path, name: str):
    cfg = with_values(compose(["method=mocov2"]), {"method.name": name})  # composed configs are read-only
    file = tmp_path / "run" / "checkpoints" / "last.pt"
    save_atomic({"format": FORMAT, "version": VERSION, "config": to_yaml(cfg), "method": {}}, file)
    return file


def test_resume_takes_a_files_spec_only_when_the_command_line_gives_it_again(plugin, tmp_path):
    spec, marker = plugin
    file = _checkpoint(tmp_path, spec)
    with pytest.raises(ConfigError, match=f"add method.name={spec}"):
        resume_config(str(file), [])
    assert not marker.exists()
    cfg, _ = resume_config(str(file), [f"method.name={spec}"])
    assert cfg.method.name == spec and marker.exists()


def test_resume_takes_a_registered_name_from_a_file(tmp_path):
    cfg, _ = resume_config(str(_checkpoint(tmp_path, "simclr")), [])
    assert OmegaConf.select(cfg, "method.name") == "simclr"


def test_a_files_timm_name_with_a_source_prefix_is_refused(tmp_path):
    """`hf-hub:org/model` makes timm download a config even with pretrained=False: a file cannot ask for it."""
    from sslkit.engine.checkpoint import config_of

    cfg = with_values(compose(["backbone=timm", "backbone.timm_name=resnet10t"]),
                      {"backbone.timm_name": "hf-hub:evil/model"})
    with pytest.raises(ConfigError, match="timm model 'hf-hub:evil/model'.*command line"):
        config_of({"config": to_yaml(cfg)})
    trust_command_line(["backbone.timm_name=hf-hub:evil/model"])
    assert config_of({"config": to_yaml(cfg)}).backbone.timm_name == "hf-hub:evil/model"
