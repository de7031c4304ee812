r"""The tiny test config at the reference network's widths, one block per level.

Its PyTorch twin is `PromptIR(decoder=True, num_blocks=[1, 1, 1, 1],
num_refinement_blocks=1)` of ../shared/reference/network.py, whose prompt widths
are fixed: tests that hand tickets to the reference use it.
"""

from tiny_config import get_config as tiny


def get_config():
  config = tiny()
  config.model.update(
      dict(
          dim=48,
          num_blocks=(1, 1, 1, 1),
          num_refinement_blocks=1,
          heads=(1, 2, 4, 8),
          prompt_dims=(64, 128, 320),
          prompt_sizes=(64, 32, 16),
          noise_level_heads=4,
      )
  )
  config.train.update(dict(epochs=1, warmup_epochs=0, lr_per_epoch=False))
  config.lottery.update(dict(rounds=2, reference_pool=True))
  return config
