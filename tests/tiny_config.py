r"""The demo config shrunk to seconds: for tests that run whole IMP runs.

python -m mirl_jax.main --config tests/tiny_config.py --workdir /tmp/tiny
"""

from configs import demo


def get_config():
  config = demo.get_config()
  config.model.update(
      dict(
          dim=4,
          num_blocks=(1, 1, 1, 1),
          heads=(1, 1, 1, 1),
          prompt_dims=(4, 4, 4),
          prompt_sizes=(4, 4, 4),
      )
  )
  config.data.update(dict(patch_size=16, batch_size=4, repeats=dict(denoise=1, derain=1, dehaze=1)))
  config.train.update(dict(epochs=2, warmup_epochs=1, checkpoint_every_steps=3, log_every_steps=2))
  config.lottery.rounds = 1
  return config
