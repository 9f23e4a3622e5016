"""Array settings (`tuple[X, ...]` fields, TOML arrays): read from the file, INFERD_* (comma-
separated) and flags as tuples, each item checked; anything else refused naming the key (and
the item). server.ready_models and server.drain_delay_s are the daemon's first users."""

from __future__ import annotations

import dataclasses

import pytest

from inferd.common.errors import ConfigError
from inferd.config.loader import build, field, items_of
from inferd.config.settings import load_daemon_config


@dataclasses.dataclass(frozen=True)
class Section:
    names: tuple[str, ...] = ()
    sizes: tuple[int, ...] = field((1,), lambda v: None if all(n > 0 for n in v) else "every size must be > 0")
    ratios: tuple[float, ...] = ()


def test_items_of_names_an_arrays_item_type_and_nothing_else():
    assert items_of(tuple[str, ...]) is str and items_of(tuple[int, ...]) is int
    assert items_of(tuple[str, int]) is None and items_of(str) is None and items_of(list) is None


def test_arrays_become_tuples_with_each_item_checked():
    section = build(Section, {"names": ["a", "b"], "sizes": [2, 3], "ratios": [1, 0.5]}, "f.toml")
    assert section == Section(names=("a", "b"), sizes=(2, 3), ratios=(1.0, 0.5))
    assert build(Section, {"names": []}, "f.toml").names == ()
    assert build(Section, {}, "f.toml") == Section()


@pytest.mark.parametrize("data, key, reason", [
    ({"names": "a"}, "s.names", "expected an array of str, got str 'a'"),
    ({"names": {"a": 1}}, "s.names", "expected an array of str, got dict"),
    ({"names": ["a", 2]}, "s.names[1]", "expected str, got int 2"),
    ({"names": [["a"]]}, "s.names[0]", "expected str, got list"),
    ({"sizes": [1, True]}, "s.sizes[1]", "expected int, got bool True"),
    ({"sizes": [1, 0]}, "s.sizes", "every size must be > 0"),
    ({"ratios": ["x"]}, "s.ratios[0]", "expected float, got str 'x'"),
])
def test_bad_arrays_are_refused_naming_the_key_and_item(data, key, reason):
    with pytest.raises(ConfigError) as caught:
        build(Section, data, "f.toml", "s")
    assert caught.value.key == key and reason in caught.value.reason


def test_ready_models_from_file_environment_and_flags(tmp_path):
    path = tmp_path / "inferd.toml"
    path.write_text('[server]\nready_models = ["mlp", "add_sub"]\ndrain_delay_s = 2\n')
    config = load_daemon_config(path, environ={})
    assert config.server.ready_models == ("mlp", "add_sub") and config.server.drain_delay_s == 2.0
    assert load_daemon_config(path, environ={"INFERD_SERVER_READY_MODELS": " a , b.onnx-2 "}).server.ready_models == \
        ("a", "b.onnx-2")
    assert load_daemon_config(path, environ={"INFERD_SERVER_READY_MODELS": ""}).server.ready_models == ()
    flags = {"server": {"ready_models": ["x"]}}
    assert load_daemon_config(path, environ={}, overrides=flags).server.ready_models == ("x",)
    defaults = load_daemon_config(environ={}).server
    assert defaults.ready_models == () and defaults.drain_delay_s == 5.0


@pytest.mark.parametrize("environ, key, reason", [
    ({"INFERD_SERVER_READY_MODELS": "a,,b"}, "server.ready_models", "expected model names"),
    ({"INFERD_SERVER_READY_MODELS": "a,a"}, "server.ready_models", "names a model twice"),
    ({"INFERD_SERVER_READY_MODELS": ".hidden"}, "server.ready_models", "not starting with '.'"),
    ({"INFERD_SERVER_READY_MODELS": "x" * 300}, "server.ready_models", "expected model names"),
    ({"INFERD_SERVER_DRAIN_DELAY_S": "soon"}, "INFERD_SERVER_DRAIN_DELAY_S", "expected float, got 'soon'"),
    ({"INFERD_SERVER_DRAIN_DELAY_S": "600.5"}, "server.drain_delay_s", "must be between 0 and 600"),
])
def test_bad_ready_models_and_delays_are_refused(environ, key, reason):
    with pytest.raises(ConfigError) as caught:
        load_daemon_config(environ=environ)
    assert caught.value.key == key and reason in caught.value.reason
    assert len(str(caught.value)) < 300  # a long name is clipped in the message
