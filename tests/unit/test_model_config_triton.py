"""config.toml's Triton-facing tensor keys: an input's `format` and an output's
`label_filename` (a plain relative path inside the model's directory)."""

import pytest

from inferd.common.errors import ConfigError
from inferd.config.model import ModelSettings, load_model_config

TENSORS = """
[[inputs]]
name = "image"
datatype = "FP32"
shape = [-1, 3, 224, 224]
format = "FORMAT_NCHW"
[[outputs]]
name = "probs"
datatype = "FP32"
shape = [-1, 1000]
label_filename = "labels/imagenet.txt"
"""


def test_format_and_label_filename_are_read_beside_the_tensor(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text(TENSORS)
    config = load_model_config(path, ModelSettings())
    assert config.input_formats == {"image": "FORMAT_NCHW"}
    assert config.label_files == {"probs": "labels/imagenet.txt"}
    assert [t.name for t in config.inputs] == ["image"] and config.outputs[0].shape == (-1, 1000)


@pytest.mark.parametrize("old, new, key", [
    ('format = "FORMAT_NCHW"', 'format = "NCHW"', "inputs[0].format"),
    ('label_filename = "labels/imagenet.txt"', 'label_filename = "../x.txt"', "outputs[0].label_filename"),
    ('label_filename = "labels/imagenet.txt"', 'label_filename = "/etc/passwd"', "outputs[0].label_filename"),
    ('label_filename = "labels/imagenet.txt"', 'label_filename = ".hidden"', "outputs[0].label_filename"),
    ('label_filename = "labels/imagenet.txt"', 'label_filename = "a//b"', "outputs[0].label_filename"),
    ('label_filename = "labels/imagenet.txt"', 'label_filename = 3', "outputs[0].label_filename"),
    ('label_filename = "labels/imagenet.txt"', 'format = "FORMAT_NCHW"', "outputs[0]"),  # inputs' key only
    ('format = "FORMAT_NCHW"', 'label_filename = "x"', "inputs[0]"),  # outputs' key only
])
def test_bad_format_or_label_filename_is_refused(tmp_path, old, new, key):
    path = tmp_path / "config.toml"
    path.write_text(TENSORS.replace(old, new))
    with pytest.raises(ConfigError) as caught:
        load_model_config(path, ModelSettings())
    assert caught.value.key == key
