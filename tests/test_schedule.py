"""The learning rate per epoch equals the reference scheduler's."""

from pathlib import Path

import numpy as np
import pytest

from mirl_jax import schedule

SCHEDULES = (
    Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "schedule_reference.npz"
)


@pytest.mark.parametrize("warmup,epochs", [(15, 120), (3, 10)])
def test_learning_rate_matches_reference(warmup, epochs):
  with np.load(SCHEDULES) as data:
    expected = data[f"lr_per_epoch/warmup{warmup}_max{epochs}"]
  got = np.array([schedule.learning_rate(t, 2e-4, warmup, epochs) for t in range(epochs)])
  np.testing.assert_allclose(got, expected, rtol=1e-12, atol=0)
  assert got[0] == 0.0 and got.max() == pytest.approx(2e-4, rel=1e-15)


@pytest.mark.parametrize("per_epoch", [True, False])
def test_optax_schedule_agrees_at_epoch_starts(per_epoch):
  steps = 7
  fn = schedule.optax_schedule(2e-4, 15, 120, steps, per_epoch=per_epoch)
  expected = schedule.epoch_rates(2e-4, 15, 120)
  got = np.array([float(fn(t * steps)) for t in range(120)])
  np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-10)  # float32
  within = np.array([float(fn(t * steps + steps - 1)) for t in range(120)])
  if per_epoch:  # the reference's staircase: constant within an epoch
    np.testing.assert_array_equal(within, got)
  else:  # smooth: between this epoch's and the next's rate
    nxt = np.append(expected[1:], 0.0)
    assert np.all(within <= np.maximum(expected, nxt) * (1 + 1e-6))
    assert np.all(within >= np.minimum(expected, nxt) * (1 - 1e-6))
  assert float(fn(10**6)) == pytest.approx(expected[-1] if per_epoch else 0.0, abs=1e-12)


def test_rejects_epochs_out_of_range():
  with pytest.raises(ValueError, match="epoch=120"):
    schedule.learning_rate(120, 2e-4, 15, 120)
  with pytest.raises(ValueError, match="warmup_epochs=20, epochs=10"):
    schedule.epoch_rates(2e-4, 20, 10)
  with pytest.raises(ValueError, match="warmup_epochs=0: .* stays at lr 0"):
    schedule.optax_schedule(2e-4, 0, 10, 5)  # would never train
  smooth = schedule.optax_schedule(2e-4, 0, 10, 5, per_epoch=False)
  assert float(smooth(0)) == pytest.approx(2e-4)
