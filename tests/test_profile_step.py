"""benchmarks/profile_step.py: every op lands in the kind a reader would put it in."""

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import profile_step  # pylint: disable=wrong-import-position

from mirl_jax import models  # pylint: disable=wrong-import-position


def test_op_names_map_to_the_kinds_of_the_table():
  block = "jit(step)/transpose(jvp(PromptIR))/PromptIR._blocks/while/body/closed_call/TB_6"
  cases = {
      (f"{block}/ffn/project_in/dot_general", "dot"): "1x1 conv (matmul)",
      (f"{block}/attn/qkv/dot_general", "dot"): "1x1 conv (matmul)",
      (f"{block}/attn/dot_general", "dot"): "attention matmuls",
      (f"{block}/attn/div", "divide"): "attention normalise + softmax",
      (f"{block}/attn/qkv_dwconv/add", "add"): "depthwise 3x3 conv",
      (f"{block}/ffn/dwconv/slice", "multiply"): "depthwise 3x3 conv",
      (f"{block}/ffn/erf", "erf"): "GELU gating",
      (f"{block}/norm2/rsqrt", "rsqrt"): "layer norm",
      ("jit(step)/jvp(PromptIR)/down1_2/conv_general_dilated", "convolution"): "3x3 conv",
      (f"{block}/ffn/dwconv/jit(_pad)/pad", "pad"): "pad / slice / transpose / copy",
      ("jit(step)/mul", "multiply"): "ops on params: optimizer, masks, mean",
      ("state.opt_state[0].mu['x']", "multiply"): "ops on params: optimizer, masks, mean",
      ("state.params['x']", "parameter"): "params, optimizer state, masks, batch",
  }
  for (op_name, opcode), kind in cases.items():
    assert profile_step.kind_of(op_name, {opcode}) == kind, op_name


def test_a_feed_forward_step_is_timed_and_sized_by_kind():
  ffn = models.FeedForward(8, 2.66)
  x = jnp.asarray(np.random.default_rng(0).random((2, 16, 16, 8), np.float32))
  params = ffn.init(jax.random.key(0), x)

  @jax.jit
  def grads(p, x):
    return jax.grad(lambda p: jnp.abs(ffn.apply(p, x)).mean())(p)

  result = profile_step.profile(grads, (params, x), "grads", "feed-forward backward")
  kinds = result["kinds"]
  assert set(kinds) == set(profile_step.KINDS)
  for kind in ("1x1 conv (matmul)", "depthwise 3x3 conv"):  # GELU may fuse into either
    assert kinds[kind]["seconds"] > 0 and kinds[kind]["kernels"] > 0, kind
  assert all(o["kind"] in profile_step.KINDS and o["seconds"] >= 0 for o in result["slowest_ops"])
  assert sum(k["peak_bytes"] for k in kinds.values()) > 0
  assert kinds["attention matmuls"]["kernels"] == 0  # there is no attention here
  text = profile_step.table(dict(result, title=result["name"]))
  assert "| depthwise 3x3 conv |" in text and "feed-forward backward" in text
