"""--augment_on_device: on by default when training on CUDA, off elsewhere, and overridable either way."""

import pytest

from cloome_hf.train.params import parse_args, resolve_augment_on_device


@pytest.mark.parametrize("requested,device_type,expected", [
    (None, "cuda", True), (None, "cpu", False), (None, "mps", False), (None, "xpu", False),
    (False, "cuda", False), (True, "cpu", True), (True, "cuda", True), (False, "cpu", False),
])
def test_the_default_follows_the_device_and_an_explicit_choice_wins(requested, device_type, expected):
    assert resolve_augment_on_device(requested, device_type) is expected


@pytest.mark.parametrize("flags,parsed", [
    ([], None), (["--augment_on_device"], True), (["--augment_on_device", "true"], True),
    (["--augment_on_device", "false"], False), (["--no_augment_on_device"], False),
])
def test_the_command_line_leaves_the_default_to_the_device_unless_told(tmp_path, flags, parsed):
    _, data_args, _, _ = parse_args(["--output_dir", str(tmp_path), *flags])
    assert data_args.augment_on_device is parsed
    # what the run then uses, on a CUDA machine and on a CPU one
    assert resolve_augment_on_device(data_args.augment_on_device, "cuda") is (True if parsed is None else parsed)
    assert resolve_augment_on_device(data_args.augment_on_device, "cpu") is (False if parsed is None else parsed)


def test_a_config_file_can_turn_it_off(tmp_path):
    config = tmp_path / "train.json"
    config.write_text('{"augment_on_device": false}')
    _, data_args, _, _ = parse_args(["--output_dir", str(tmp_path), "--config", str(config)])
    assert data_args.augment_on_device is False
