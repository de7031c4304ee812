"""What a resumed run may change: older workdirs' settings read as they were meant, any other
change refused by name."""

import json

import jax
import pytest

from mirl_jax import resume
from tiny_config import get_config as _config


def test_a_workdir_from_the_per_device_batch_resumes_at_its_global_batch(monkeypatch):
  monkeypatch.setattr(jax, "device_count", lambda: 4)
  config = _config()
  config.data.batch_size = 2  # per device, as it was saved
  saved = json.loads(config.to_json())
  config.data.batch_size = 8
  current = json.loads(config.to_json())
  assert not resume.config_changes(saved, current, per_device_batch=True)
  assert resume.config_changes(saved, saved, per_device_batch=True) == ["data.batch_size: 8 -> 2"]
  assert resume.config_changes(saved, current) == ["data.batch_size: 2 -> 8"]
  saved["lottery"].pop("reference_pool")  # a key added since: its old value is assumed
  assert not resume.config_changes(saved, current, per_device_batch=True)
  current["lottery"]["reference_pool"] = True
  assert resume.config_changes(saved, current, per_device_batch=True) == [
      "lottery.reference_pool: False -> True"
  ]


def test_a_changed_experiment_is_refused_with_every_change_named():
  config = _config()
  saved = dict(config=json.loads(config.to_json()), batch="global")
  config.train.epochs += 1
  config.model.dim = 8
  config.train.log_every_steps += 1  # how it logs may change
  with pytest.raises(ValueError) as error:
    resume.check("/runs/a", saved, json.loads(config.to_json()))
  message = str(error.value)
  assert message.startswith("/runs/a holds a run made with another config (changed: ")
  assert "model.dim: 4 -> 8; train.epochs: 2 -> 3)" in message and "log_every" not in message
  resume.check("/runs/a", None, json.loads(config.to_json()))  # fresh: nothing to compare
  resume.check("/runs/a", dict(imported_from="x.ckpt"), {})  # imported tickets: no config
