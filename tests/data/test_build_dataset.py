"""`build_dataset`'s guards: a dataset named by a file never imports code by default, and a missing
root is one line that says what to do (a download hint only where a download exists)."""

import pytest

from sslkit.data import build_dataset
from sslkit.errors import ConfigError, DataError


def test_a_module_spec_is_not_imported_unless_the_caller_allows_it():
    with pytest.raises(ConfigError, match="comes from a file .* not from the command line"):
        build_dataset({"name": "json:loads"}, "train")


@pytest.mark.parametrize(("name", "hint"), [("imagefolder", False), ("fashion_mnist", True), ("cifar10", True)])
def test_a_missing_root_is_one_line_with_a_download_hint_where_one_exists(tmp_path, name, hint):
    root = tmp_path / "nowhere"
    with pytest.raises(DataError) as err:
        build_dataset({"name": name, "root": str(root)}, "train")
    message = str(err.value)
    assert message.startswith(f"data.root={root} does not exist; point data.root at the {name} files")
    assert ("or pass data.download=true" in message) is hint and "\n" not in message
