"""The one parser of command-line overrides."""

from __future__ import annotations

import pytest

from sslkit import overrides as ov
from sslkit.errors import ConfigError


def test_keys_tell_group_choices_from_key_assignments():
    words = ["data=cifar10", "data.subset=5", "+method.x=1", "~eval.k", "seed=3"]
    assert ov.keys(words) == [("data", True), ("data.subset", False), ("method.x", False), ("eval.k", False),
                              ("seed", True)]
    assert ov.chooses(words, "data") and not ov.chooses(words, "eval")


def test_last_value_takes_the_last_and_treats_null_as_absent():
    assert ov.last_value(["checkpoint=a", "+checkpoint='b'"], "checkpoint") == "b"
    assert ov.last_value(["checkpoint=a", "checkpoint=null"], "checkpoint") is None
    assert ov.last_value(["checkpoints=a"], "checkpoint") is None


def test_bad_words_are_one_line_errors():
    with pytest.raises(ConfigError, match="'trainer.epochs' is not an override"):
        ov.check_form(["trainer.epochs"])
    with pytest.raises(ConfigError, match="cannot parse overrides"):
        ov.parse(["a=[1,"])
    with pytest.raises(ConfigError, match="unknown option 'outt'; valid: checkpoint, out"):
        ov.key_values(["outt=x"], {"checkpoint", "out"})
