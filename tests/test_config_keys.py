"""Config keys: their meaning read from the config files, and every value checked."""

from pathlib import Path

import pytest

from configs import all_in_one, demo, ticket_study
from mirl_jax import config_keys

ROOT = Path(__file__).resolve().parents[1]


def test_every_key_of_the_paper_config_has_a_comment():
  notes = config_keys.comments(ROOT / "configs" / "all_in_one.py")
  keys = [k for k, _ in config_keys._flatten(all_in_one.get_config())]  # pylint: disable=protected-access
  assert [k for k in keys if not notes.get(k)] == []
  assert notes["restore.tile"] == "larger images are restored in overlapping tiles"
  # A comment continued on the lines below belongs to the same key.
  assert notes["lottery.rewind"].endswith('or "random" (re-initialised survivors)')
  assert notes["model"].startswith("PromptIR(decoder=True)")  # the section's comment


def test_a_derived_config_keeps_its_base_comments_and_adds_its_own():
  notes = config_keys.comments(ROOT / "configs" / "ticket_study.py")
  assert notes["data.data_dir"] == '"": the demo\'s datasets, inside the workdir'  # demo.py
  assert notes["train.learning_rate"] == "peak learning rate"  # all_in_one.py
  assert notes["study.control_rounds"].startswith("where the controls train")


def test_describe_lists_every_key_in_file_order_with_value_and_meaning():
  text = config_keys.describe(demo.get_config(), ROOT / "configs" / "demo.py")
  lines = [l for l in text.splitlines() if " = " in l]
  assert len(lines) == len(config_keys._flatten(demo.get_config()))  # pylint: disable=protected-access
  assert lines[0].startswith("seed = 0")
  tile = next(l for l in lines if l.startswith("restore.tile = 512"))
  assert tile.endswith("# larger images are restored in overlapping tiles")
  assert any(l.startswith("model.dim = 8 ") for l in lines)  # demo's value, base's comment
  assert "# Iterative magnitude pruning." in text


@pytest.mark.parametrize("make", [all_in_one.get_config, demo.get_config, ticket_study.get_config])
def test_shipped_configs_are_valid(make):
  config_keys.validate(make(), "train")


@pytest.mark.parametrize(
    "key,value,expected",
    [
        ("model.dim", 0, "an integer >= 1"),
        ("model.heads", (1, 2, 4), "4 integers >= 1"),
        ("model.heads", (1, 2, 5, 8), "heads that divide the channels"),
        ("model.noise_level_heads", 5, "a divisor of the prompted widths"),
        ("data.patch_size", 60, "a positive multiple of 8"),
        ("data.test_sets", ("denoise/BSD68", "deblur/GoPro"), '"task/Set"'),
        ("data.repeats", {"deblur": 2}, "a dict of denoise, derain, dehaze"),
        ("train.warmup_epochs", 120, "fewer than train.epochs (120)"),
        ("train.learning_rate", -1e-4, "a number > 0"),
        ("lottery.percent", 100.0, "a number in (0, 100)"),
        ("lottery.scope", "local", "one of 'global', 'layerwise'"),
        ("restore.tile", 100, "a multiple of 8"),
        ("restore.overlap", 256, "less than half of restore.tile (512)"),
        ("restore.format", "tiff", "one of 'same', 'png', 'jpg'"),
        ("eval.ticket", -2, "an integer >= -1"),
    ],
)
def test_invalid_values_name_the_key_the_value_and_what_is_expected(key, value, expected):
  config = all_in_one.get_config()
  section, _, name = key.rpartition(".")
  target = config[section] if section else config
  target[name] = value
  with pytest.raises(ValueError) as error:
    config_keys.validate(config)
  assert str(error.value).startswith(f"config.{key}={value!r}: expected ")
  assert expected in str(error.value)


def test_late_rewinding_needs_a_step_to_rewind_to():
  config = all_in_one.get_config()
  config.lottery.rewind = "late"
  with pytest.raises(ValueError, match=r"config.lottery.late_step=0: expected >= 1"):
    config_keys.validate(config)
  config.lottery.late_step = 100
  config_keys.validate(config)


def test_modes_name_the_keys_they_need():
  config = all_in_one.get_config()
  with pytest.raises(
      ValueError,
      match=r"--mode restore needs --config.restore.inputs="
      r"PATH\[,PATH...\] and --config.restore.output_dir=DIR",
  ):
    config_keys.validate(config, "restore")
  with pytest.raises(
      ValueError,
      match=r"--mode import needs --config.import_from=FILE \(a "
      r"checkpoint\), --config.import_init=FILE \(its theta_0\) or both",
  ):
    config_keys.validate(config, "import")
  config.import_init = "initial_state_dict.pth"
  config_keys.validate(config, "import")
  with pytest.raises(ValueError, match="--mode export needs --config.export.output=FILE"):
    config_keys.validate(config, "export")
  config.lottery.update(dict(reference_pool=True, scope="layerwise"))
  with pytest.raises(
      ValueError,
      match=r"config.lottery.reference_pool=True: expected False "
      r"with lottery.scope='layerwise'",
  ):
    config_keys.validate(config, "train")
  config.lottery.scope = "global"
  config_keys.validate(config, "train")
