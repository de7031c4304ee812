r"""The tiny config of the loop's bit-identity test, frozen: every value written out here, so
that changes to configs/demo.py do not move the tickets the test compares.

python -m mirl_jax.main --config tests/frozen_tiny_config.py:late --workdir /tmp/frozen
"""

from configs import all_in_one


def get_config(variant: str = "init"):
  """variant "init": rewind to theta_0; "late": late rewinding with the trained prompts kept."""
  # fmt: off
  config = all_in_one.get_config()
  config.model.update(dict(dim=4, num_blocks=(1, 1, 1, 1), num_refinement_blocks=1,
                           heads=(1, 1, 1, 1), prompt_dims=(4, 4, 4), prompt_sizes=(4, 4, 4),
                           noise_level_heads=1))
  config.data.update(dict(demo=True, manual_dir="", data_dir="", train_sets=(), test_sets=(),
                          patch_size=16, batch_size=4, worker_count=0,
                          repeats=dict(denoise=1, derain=1, dehaze=1)))
  config.train.update(dict(epochs=2, warmup_epochs=1, learning_rate=4e-3,
                           log_every_steps=2, checkpoint_every_steps=3))
  config.lottery.rounds = 2
  if variant == "late":
    config.lottery.update(dict(rewind="late", late_step=2, keep_trained_prompts=True))
  # fmt: on
  return config
