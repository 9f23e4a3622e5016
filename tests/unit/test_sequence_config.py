"""config.toml's [sequence_batching] (config/sequence.py) and the sequence parameters of a
request (scheduler/sequence_flags.py): what is read, what is refused and why."""

from __future__ import annotations

import numpy as np
import pytest

from inferd.common.errors import ConfigError, InferdError
from inferd.config.model import ModelSettings, load_model_config
from inferd.config.sequence import Control, SequenceBatching, triton_view
from inferd.scheduler.sequence_flags import Flags, control_parts, read_flags, refuse_on_plain_model

TABLE = """
[sequence_batching]
strategy = "oldest"
max_sequence_idle_us = 5000000
max_candidate_sequences = 4
[[sequence_batching.control_input]]
name = "S"
kind = "CONTROL_SEQUENCE_START"
fp32_false_true = [0, 1.5]
[[sequence_batching.control_input]]
name = "R"
kind = "CONTROL_SEQUENCE_READY"
bool_false_true = [false, true]
[[sequence_batching.control_input]]
name = "C"
kind = "CONTROL_SEQUENCE_CORRID"
data_type = "TYPE_STRING"
"""


def _load(tmp_path, text: str):
    path = tmp_path / "config.toml"
    path.write_text(text)
    return load_model_config(path, ModelSettings())


def test_the_table_is_read_with_tritons_names(tmp_path):
    sb = _load(tmp_path, TABLE).sequence_batching
    assert (sb.strategy, sb.max_sequence_idle_us, sb.max_candidate_sequences) == ("oldest", 5_000_000, 4)
    assert sb.controls == (Control("S", "START", "FP32", (0, 1.5)), Control("R", "READY", "BOOL", (False, True)),
                           Control("C", "CORRID", "BYTES", ()))
    assert sb.corrid.name == "C" and sb.control_names == {"S", "R", "C"}
    view = triton_view(sb)
    assert view["oldest"]["max_candidate_sequences"] == 4
    assert view["control_input"][0] == {"name": "S", "control": [{
        "kind": "CONTROL_SEQUENCE_START", "int32_false_true": [], "fp32_false_true": [0, 1.5], "bool_false_true": [],
        "data_type": "TYPE_INVALID"}]}
    assert view["control_input"][2]["control"][0]["data_type"] == "TYPE_STRING"
    assert _load(tmp_path, "[sequence_batching]\n").sequence_batching == SequenceBatching()


@pytest.mark.parametrize(("text", "key"), [
    ('[sequence_batching]\nstrategy = "newest"\n', "sequence_batching.strategy"),
    ("[sequence_batching]\nmax_sequence_idle_us = 0\n", "sequence_batching.max_sequence_idle_us"),
    ("[sequence_batching]\nmax_sequence_idle_us = 99999999999\n", "sequence_batching.max_sequence_idle_us"),
    ("idle_timeout_s = 1\n[sequence_batching]\nmax_sequence_idle_us = 2000000\n", "sequence_batching.max_sequence_idle_us"),
    ("[sequence_batching]\nbogus = 1\n", "sequence_batching.bogus"),
    ("sequence_batching = 3\n", "sequence_batching"),
    ('[[sequence_batching.control_input]]\nname = "S"\nkind = "CONTROL_SEQUENCE_BEGIN"\nint32_false_true = [0, 1]\n',
     "sequence_batching.control_input[0]"),
    ('[[sequence_batching.control_input]]\nname = "S"\nkind = "CONTROL_SEQUENCE_START"\n', "sequence_batching.control_input[0]"),
    ('[[sequence_batching.control_input]]\nname = "S"\nkind = "CONTROL_SEQUENCE_START"\nint32_false_true = [0]\n',
     "sequence_batching.control_input[0].int32_false_true"),
    ('[[sequence_batching.control_input]]\nname = "S"\nkind = "CONTROL_SEQUENCE_START"\nint32_false_true = [0, 4294967296]\n',
     "sequence_batching.control_input[0].int32_false_true"),
    ('[[sequence_batching.control_input]]\nname = "S"\nkind = "CONTROL_SEQUENCE_START"\nint32_false_true = [-2147483649, 1]\n',
     "sequence_batching.control_input[0].int32_false_true"),
    ('[[sequence_batching.control_input]]\nname = "S"\nkind = "CONTROL_SEQUENCE_END"\nfp32_false_true = [0, inf]\n',
     "sequence_batching.control_input[0].fp32_false_true"),
    ('[[sequence_batching.control_input]]\nname = "S"\nkind = "CONTROL_SEQUENCE_END"\nfp32_false_true = [nan, 1]\n',
     "sequence_batching.control_input[0].fp32_false_true"),
    ('[[sequence_batching.control_input]]\nname = "S"\nkind = "CONTROL_SEQUENCE_READY"\nfp32_false_true = [0, 1e39]\n',
     "sequence_batching.control_input[0].fp32_false_true"),
    ('[[sequence_batching.control_input]]\nname = "C"\nkind = "CONTROL_SEQUENCE_CORRID"\ndata_type = "TYPE_FP32"\n',
     "sequence_batching.control_input[0]"),
    ('[[sequence_batching.control_input]]\nname = "S"\nkind = "CONTROL_SEQUENCE_START"\nint32_false_true = [0, 1]\n'
     '[[sequence_batching.control_input]]\nname = "S"\nkind = "CONTROL_SEQUENCE_END"\nint32_false_true = [0, 1]\n',
     "sequence_batching.control_input"),
])
def test_a_bad_table_is_refused_naming_the_key(tmp_path, text, key):
    with pytest.raises(ConfigError) as raised:
        _load(tmp_path, text)
    assert raised.value.key == key


def test_flags_are_read_and_checked_against_the_corrid_type():
    plain = SequenceBatching()
    assert read_flags({"sequence_id": 7, "sequence_start": True}, "m", plain) == Flags(7, True, False)
    assert read_flags({"sequence_id": "abc", "sequence_end": True}, "m", plain) == Flags("abc", False, True)
    int32 = SequenceBatching(controls=(Control("C", "CORRID", "INT32", ()),))
    for parameters, words in [({"sequence_id": 1 << 40}, "does not fit"), ({"sequence_id": "5"}, "an integer"),
                              ({"sequence_id": 5, "sequence_end": 1}, "boolean"), ({"sequence_id": ""}, "non-zero")]:
        with pytest.raises(InferdError, match=words):
            read_flags(parameters, "m", int32)
    refuse_on_plain_model({"sequence_id": 0, "other": 1}, "m")  # Triton's "no sequence"
    with pytest.raises(InferdError, match="does not batch sequences"):
        refuse_on_plain_model({"sequence_id": "x"}, "m")


def test_control_parts_fill_each_row_and_idle_slots():
    controls = (Control("S", "START", "INT32", (0, 1)), Control("E", "END", "FP32", (0.0, 2.0)),
                Control("R", "READY", "BOOL", (False, True)), Control("C", "CORRID", "BYTES", ()))
    parts = control_parts(controls, [Flags("a", start=True), None, Flags("b", end=True)], batch_dim=True)
    stacked = {name: np.concatenate(arrays) for name, arrays in parts.items()}
    assert stacked["S"].ravel().tolist() == [1, 0, 0] and stacked["S"].dtype == np.int32
    assert stacked["E"].ravel().tolist() == [0.0, 0.0, 2.0] and stacked["E"].dtype == np.float32
    assert stacked["R"].ravel().tolist() == [True, False, True]
    assert stacked["C"].ravel().tolist() == [b"a", b"", b"b"] and stacked["C"].shape == (3, 1)
    assert control_parts(controls[:1], [Flags(3, True)], batch_dim=False)["S"][0].shape == (1,)
