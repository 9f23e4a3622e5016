"""config.toml's `decoupled` and the Triton override's model_transaction_policy.decoupled."""

from __future__ import annotations

import pytest

from inferd.common.errors import ConfigError, InferdError
from inferd.config.model import ModelSettings, load_model_config
from inferd.config.triton_override import from_triton


@pytest.mark.parametrize("text, expected", [("", None), ("decoupled = true\n", True), ("decoupled = false\n", False)])
def test_config_toml_says_decoupled_or_leaves_it_to_the_class(tmp_path, text, expected):
    (tmp_path / "config.toml").write_text(text + "max_batch_size = 4\n")
    assert load_model_config(tmp_path / "config.toml", ModelSettings()).decoupled is expected


@pytest.mark.parametrize("value", ['"yes"', "1", "[true]"])
def test_a_decoupled_that_is_not_a_boolean_is_refused(tmp_path, value):
    (tmp_path / "config.toml").write_text(f"decoupled = {value}\n")
    with pytest.raises(ConfigError, match="decoupled"):
        load_model_config(tmp_path / "config.toml", ModelSettings())


def test_the_triton_override_maps_decoupled():
    assert from_triton("m", '{"model_transaction_policy": {"decoupled": true}}') == {"decoupled": True}
    assert from_triton("m", '{"model_transaction_policy": {"decoupled": false}}') == {"decoupled": False}
    assert from_triton("m", '{"model_transaction_policy": {}}') == {}
    for bad in ('{"model_transaction_policy": {"decoupled": 1}}', '{"model_transaction_policy": {"other": true}}'):
        with pytest.raises(InferdError):
            from_triton("m", bad)
