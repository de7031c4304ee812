"""PromptIR (decoder prompts on), the restorer MIR-L prunes.

NHWC throughout. Submodule and parameter names mirror the PyTorch
state_dict (``encoder_level1.0.attn.qkv.weight`` lives at
``params['encoder_level1_0']['attn']['qkv']['kernel']``) so that checkpoints
convert by a fixed rule and the pruning code can name layers as the paper does.
Initialisers reproduce PyTorch's, since magnitude pruning from init depends
on the scale of every tensor.
"""

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
from jax.extend.random import threefry2x32_p
import jax.numpy as jnp
import numpy as np

from mirl_jax import attention, layers
from mirl_jax.layers import torch_kernel_init

#: PromptIR.remat: "none" keeps every activation for the backward, "blocks" only
#: the input of each block in a run of identical transformer blocks (44 of 47).
REMAT_MODES = ("none", "blocks")


def torch_bias_init(fan_in: int):
  bound = 1.0 / fan_in**0.5

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def conv(
    features: int, size: int = 1, name=None, dtype: Any = jnp.float32, precision: Any = "highest"
) -> nn.Module:
  """A bias-free conv with PyTorch's padding (size // 2) and init; 1x1 as a matmul."""
  if size == 1:
    return layers.Pointwise(features, dtype=dtype, precision=precision, name=name)
  pad = size // 2
  return nn.Conv(
      features,
      (size, size),
      padding=((pad, pad), (pad, pad)),
      use_bias=False,
      kernel_init=torch_kernel_init,
      dtype=dtype,
      precision=precision,
      name=name,
  )


def layer_norm(name=None, dtype: Any = jnp.float32) -> nn.Module:
  """Restormer's "WithBias" LayerNorm: eps 1e-5, two-pass variance (statistics in float32)."""
  return layers.LayerNorm(epsilon=1e-5, dtype=dtype, name=name)


def pixel_unshuffle(x: jax.Array) -> jax.Array:
  """(B, H, W, C) -> (B, H/2, W/2, 4C); channel c*4 + i*2 + j is sub-pixel (i, j)."""
  b, h, w, c = x.shape
  x = x.reshape(b, h // 2, 2, w // 2, 2, c)
  return x.transpose(0, 1, 3, 5, 2, 4).reshape(b, h // 2, w // 2, 4 * c)


def pixel_shuffle(x: jax.Array) -> jax.Array:
  """Inverse of pixel_unshuffle: (B, H, W, 4C) -> (B, 2H, 2W, C)."""
  b, h, w, c4 = x.shape
  c = c4 // 4
  x = x.reshape(b, h, w, c, 2, 2)
  return x.transpose(0, 1, 4, 2, 5, 3).reshape(b, 2 * h, 2 * w, c)


def resize_bilinear(x: jax.Array, height: int, width: int) -> jax.Array:
  """PyTorch's bilinear interpolate (align_corners=False): no antialiasing."""
  shape = (x.shape[0], height, width, x.shape[-1])
  return jax.image.resize(x, shape, "bilinear", antialias=False)


class _Layer(nn.Module, kw_only=True):
  """The compute dtype and matmul precision every sub-layer takes from PromptIR; keyword-only,
  so that each layer's own sizes come first and positionally."""

  dtype: Any = jnp.float32
  precision: Any = "highest"

  def pointwise(self, features: int, name: str) -> nn.Module:
    return conv(features, 1, name, self.dtype, self.precision)


class Attention(_Layer):
  """MDTA: attention across channels, so its cost is linear in pixels."""

  dim: int
  heads: int

  @nn.compact
  def __call__(self, x):
    b, h, w, c = x.shape
    temperature = self.param("temperature", nn.initializers.ones, (self.heads,))
    qkv = self.pointwise(3 * self.dim, "qkv")(x)
    qkv = layers.Depthwise3x3(3 * self.dim, dtype=self.dtype, name="qkv_dwconv")(qkv)
    # Heads take contiguous channel groups; keeping pixels first (NHWC)
    # spares XLA two transposes of the largest tensors.
    q, k, v = (t.reshape(b, h * w, self.heads, c // self.heads) for t in jnp.split(qkv, 3, axis=-1))
    out = attention.channel_attention(q, k, v, temperature, self.precision).reshape(b, h, w, c)
    return self.pointwise(self.dim, "project_out")(out)


class FeedForward(_Layer):
  """Gated depthwise-conv FFN with the exact (erf) GELU."""

  dim: int
  expansion: float

  @nn.compact
  def __call__(self, x):
    hidden = int(self.dim * self.expansion)
    x = self.pointwise(2 * hidden, "project_in")(x)
    x = layers.Depthwise3x3(2 * hidden, dtype=self.dtype, name="dwconv")(x)
    x1, x2 = jnp.split(x, 2, axis=-1)
    x = layers.gelu(x1) * x2
    return self.pointwise(self.dim, "project_out")(x)


class TransformerBlock(_Layer):
  """Pre-norm attention and feed-forward; the residual sum stays float32 whatever the
  compute dtype, so that bfloat16 rounding does not pile up along the blocks."""

  dim: int
  heads: int
  expansion: float

  @nn.compact
  def __call__(self, x):
    attn = Attention(self.dim, self.heads, dtype=self.dtype, precision=self.precision, name="attn")
    ffn = FeedForward(
        self.dim, self.expansion, dtype=self.dtype, precision=self.precision, name="ffn"
    )
    x = x.astype(jnp.float32)
    x = x + attn(layer_norm("norm1", self.dtype)(x)).astype(jnp.float32)
    return x + ffn(layer_norm("norm2", self.dtype)(x)).astype(jnp.float32)


class PromptBlock(_Layer):
  """Mixes learned prompt components by weights predicted from the feature."""

  prompt_dim: int
  length: int
  size: int
  lin_dim: int

  @nn.compact
  def __call__(self, x):
    b, h, w, _ = x.shape
    prompt_param = self.param(
        "prompt_param",
        nn.initializers.uniform(1.0),
        (self.length, self.size, self.size, self.prompt_dim),
    )
    emb = x.astype(jnp.float32).mean(axis=(1, 2))
    weights = nn.Dense(
        self.length,
        kernel_init=torch_kernel_init,
        bias_init=torch_bias_init(self.lin_dim),
        precision=self.precision,
        name="linear_layer",
    )(emb)
    weights = jax.nn.softmax(weights, axis=-1)
    prompt = jnp.einsum("bl,lhwc->bhwc", weights, prompt_param, precision=self.precision)
    prompt = resize_bilinear(prompt, h, w).astype(self.dtype)
    return conv(self.prompt_dim, 3, "conv3x3", self.dtype, self.precision)(prompt)


class PromptIR(nn.Module):
  """All-in-one restorer; defaults are MIR-L's PromptIR(decoder=True).

  Input and output: (B, H, W, 3) float32 in [0, 1], H and W multiples of 8.
  `dtype` is the compute dtype ("bfloat16": mixed precision; params and the
  output stay float32); `precision` the matmul and conv precision ("highest":
  float32 arithmetic on TPUs and GPUs too, as the reference computes).
  `scan_blocks` runs each run of identical transformer blocks as one
  `lax.scan` over their stacked params: the same arithmetic, compiled once
  per run instead of once per block. Params keep their per-block names; a run
  whose params come already stacked under its key in `block_runs` (the
  training step's layout, `scan_layout`) is scanned over them as they are.
  `remat="blocks"` keeps only the input of each block of the runs in
  `block_runs` for the backward pass and recomputes the rest (`jax.checkpoint`):
  a training step's activations shrink to a fraction for one more forward; no
  effect on a forward. The prompt path's three single blocks keep theirs:
  recomputing them saved 0.05 GiB of the default step's 2.4 and cost it 74
  compiled kernels (about 0.7 s of its compile, benchmarks/bench_train_step.py).
  """

  dim: int = 48
  num_blocks: Sequence[int] = (4, 6, 6, 8)
  num_refinement_blocks: int = 4
  heads: Sequence[int] = (1, 2, 4, 8)
  ffn_expansion_factor: float = 2.66
  prompt_dims: Sequence[int] = (64, 128, 320)
  prompt_sizes: Sequence[int] = (64, 32, 16)
  prompt_length: int = 5
  noise_level_heads: int = 4
  out_channels: int = 3
  dtype: str = "float32"
  precision: str = "highest"
  scan_blocks: bool = True
  remat: str = "blocks"

  def __post_init__(self):
    if self.remat not in REMAT_MODES:
      raise ValueError(f"PromptIR remat={self.remat!r}: expected one of {REMAT_MODES}")
    super().__post_init__()

  def _block(self, dim, heads, name=None, remat=None):
    remat = self.remat == "blocks" if remat is None else remat
    cls = nn.remat(TransformerBlock) if remat else TransformerBlock
    dtype = jnp.dtype(self.dtype)
    return cls(
        dim, heads, self.ffn_expansion_factor, dtype=dtype, precision=self.precision, name=name
    )

  def _blocks(self, x, run, dim, heads):
    """The blocks of `run` (a key of `block_runs`) in turn; one scan when there are several
    and params exist, over the params stacked here or, if they come so, already stacked."""
    names = block_runs(self)[run]
    blocks = [self._block(dim, heads, name) for name in names]
    x = x.astype(jnp.float32)  # the scan's carry: what each block returns
    params = {} if self.is_initializing() else self.variables["params"]
    if run in params:
      stacked = params[run]
    elif len(names) < 2 or not self.scan_blocks or self.is_initializing():
      for block in blocks:
        x = block(x)
      return x
    else:
      stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *[params[n] for n in names])
    template = self._block(dim, heads, remat=False).clone(parent=None)  # applied to each in turn
    body = lambda h, p: (template.apply({"params": p}, h), None)
    if self.remat == "blocks":
      body = jax.checkpoint(body, prevent_cse=False)
    x, _ = jax.lax.scan(body, x, stacked)
    return x

  def _prompted(self, x, level, lin_dim, out_dim):
    """concat[x, prompt(x)] -> transformer block -> 1x1 conv."""
    dtype = jnp.dtype(self.dtype)
    p_dim, p_size = self.prompt_dims[level - 1], self.prompt_sizes[level - 1]
    prompt = PromptBlock(
        p_dim,
        self.prompt_length,
        p_size,
        lin_dim,
        dtype=dtype,
        precision=self.precision,
        name=f"prompt{level}",
    )(x)
    x = jnp.concatenate([x, prompt], axis=-1)
    x = self._block(lin_dim + p_dim, self.noise_level_heads, f"noise_level{level}", remat=False)(x)
    return conv(out_dim, 1, f"reduce_noise_level{level}", dtype, self.precision)(x)

  @nn.compact
  def __call__(self, x):
    if x.ndim != 4 or x.shape[-1] != 3 or x.shape[1] % 8 or x.shape[2] % 8:
      raise ValueError(f"PromptIR expects (B, H, W, 3) with H and W multiples of 8, got {x.shape}")
    dtype = jnp.dtype(self.dtype)
    c1, c2, c3, c4 = (self.dim * 2**i for i in range(4))
    n1, n2, n3, n4 = self.num_blocks
    h1, h2, h3, h4 = self.heads

    def c(features, size, name):
      return conv(features, size, name, dtype, self.precision)

    def down(t, name):
      return pixel_unshuffle(c(t.shape[-1] // 2, 3, name)(t))

    def up(t, name):
      return pixel_shuffle(c(t.shape[-1] * 2, 3, name)(t))

    e1 = self._blocks(c(c1, 3, "patch_embed")(x.astype(dtype)), "encoder_level1", c1, h1)
    e2 = self._blocks(down(e1, "down1_2"), "encoder_level2", c2, h2)
    e3 = self._blocks(down(e2, "down2_3"), "encoder_level3", c3, h3)
    lat = self._blocks(down(e3, "down3_4"), "latent", c4, h4)
    lat = self._prompted(lat, 3, c4, c3)

    d3 = jnp.concatenate([up(lat, "up4_3"), e3], axis=-1)
    d3 = self._blocks(c(c3, 1, "reduce_chan_level3")(d3), "decoder_level3", c3, h3)
    d3 = self._prompted(d3, 2, c3, c3)

    d2 = jnp.concatenate([up(d3, "up3_2"), e2], axis=-1)
    d2 = self._blocks(c(c2, 1, "reduce_chan_level2")(d2), "decoder_level2", c2, h2)
    d2 = self._prompted(d2, 1, c2, c2)

    d1 = jnp.concatenate([up(d2, "up2_1"), e1], axis=-1)
    d1 = self._blocks(d1, "decoder_level1+refinement", c2, h1)
    return c(self.out_channels, 3, "output")(d1).astype(jnp.float32) + x


def block_runs(model: PromptIR) -> dict[str, tuple[str, ...]]:
  """Each run of identical transformer blocks, by its key, in the order the forward runs them:
  the names of its blocks. The decoder's last level and the refinement are one run."""
  n1, n2, n3, n4 = model.num_blocks
  level = lambda prefix, count: tuple(f"{prefix}_{i}" for i in range(count))
  return {
      "encoder_level1": level("encoder_level1", n1),
      "encoder_level2": level("encoder_level2", n2),
      "encoder_level3": level("encoder_level3", n3),
      "latent": level("latent", n4),
      "decoder_level3": level("decoder_level3", n3),
      "decoder_level2": level("decoder_level2", n2),
      "decoder_level1+refinement": level("decoder_level1", n1)
      + level("refinement", model.num_refinement_blocks),
  }


@functools.lru_cache(maxsize=16)
def _param_shapes(model: nn.Module) -> tuple:
  x = jax.ShapeDtypeStruct((1, 16, 16, 3), jnp.float32)
  return jax.tree.flatten(jax.eval_shape(model.init, jax.random.key(0), x)["params"])


def param_shapes(model: nn.Module) -> dict:
  """The params tree of `model` as ShapeDtypeStructs, with no compute.

  Flax's shape inference takes over a second for the default network, and every
  rewind, restore and ticket check asks for it: it runs once per model, and each
  call gets a tree of its own.
  """
  try:
    hash(model)
    infer = _param_shapes
  except TypeError:  # a field holds a list: nothing to key a cache on
    infer = _param_shapes.__wrapped__
  leaves, treedef = infer(model)
  return jax.tree.unflatten(treedef, leaves)


def init_params(model: nn.Module, key: jax.Array) -> dict:
  """Initial params of `model` from `key`, distributed as PyTorch inits PromptIR.

  `model.init` gives the same distributions, but compiles one unrolled
  threefry per tensor: minutes on a CPU for the full network. Runs rewind to
  init every round, so they use this: one uniform draw for the whole tree,
  split in path order and scaled per tensor, in about a second. Returns numpy arrays.
  """
  flat, treedef = jax.tree_util.tree_flatten_with_path(param_shapes(model))
  names = ["/".join(k.key for k in path) for path, _ in flat]
  shape_of = dict(zip(names, (s.shape for _, s in flat)))

  def bound(name):  # U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for kernels and biases
    kernel = shape_of[name.rsplit("/", 1)[0] + "/kernel"]
    fan_in = 1
    for d in kernel[:-1]:
      fan_in *= d
    return fan_in**-0.5

  def kind(name):
    leaf, parent = name.rsplit("/", 1)[-1], name.rsplit("/", 1)[0]
    if leaf == "kernel" or (leaf == "bias" and parent + "/kernel" in shape_of):
      return "symmetric"
    if leaf == "prompt_param":
      return "unit"
    if leaf in ("scale", "temperature"):
      return "ones"
    if leaf == "bias":
      return "zeros"
    raise ValueError(f"No PyTorch init rule for parameter {name}")

  kinds = [kind(n) for n in names]
  leaves = [
      np.full(s.shape, 1.0 if k == "ones" else 0.0, np.float32)
      if k in ("ones", "zeros")
      else np.empty(s.shape, np.float32)
      for (_, s), k in zip(flat, kinds)
  ]
  # One draw split in path order, into leaves of their own (no view pins a big buffer).
  drawn = [leaf for leaf, k in zip(leaves, kinds) if k in ("symmetric", "unit")]
  uniform_into(key, drawn)
  for leaf, name, k in zip(leaves, names, kinds):
    if k == "symmetric":
      leaf *= 2.0
      leaf -= 1.0
      leaf *= np.float32(bound(name))
  return jax.tree_util.tree_unflatten(treedef, leaves)


def uniform_into(key: jax.Array, arrays: Sequence[np.ndarray], chunk: int = 1 << 22) -> None:
  """Fills float32 `arrays`, in order, with `jax.random.uniform(key, (their total size,))`.

  Bit for bit that draw, `chunk` values at a time: XLA's whole draw holds four
  times its output in temporaries (0.5 GiB for the default network, more than
  its forward). With threefry's partitionable counters (JAX's default) value i
  depends on i alone. Split in numpy: ~550 slices in XLA compile for seconds.
  """
  total = sum(a.size for a in arrays)
  threefry = str(jax.random.key_impl(key)) == "threefry2x32"
  if not (threefry and jax.config.jax_threefry_partitionable) or total >= 2**32:
    stream = iter([np.asarray(jax.jit(lambda k: jax.random.uniform(k, (total,)))(key))])
  else:
    draw = _uniform_chunk(chunk)
    stream = (
        np.asarray(draw(jax.random.key_data(key), np.uint32(s))) for s in range(0, total, chunk)
    )
  values, used = np.empty(0, np.float32), 0
  for a in arrays:
    flat, filled = a.reshape(-1), 0
    while filled < a.size:
      if used == values.size:
        values, used = next(stream), 0
      n = min(a.size - filled, values.size - used)
      flat[filled : filled + n] = values[used : used + n]
      filled, used = filled + n, used + n


@functools.cache
def _uniform_chunk(chunk: int):
  def draw(key_data, start):  # jax.random.uniform's bits-to-float, on counters start + i
    low = start + jax.lax.iota(jnp.uint32, chunk)
    bits1, bits2 = threefry2x32_p.bind(key_data[0], key_data[1], jnp.zeros_like(low), low)
    mantissa = jax.lax.shift_right_logical(bits1 ^ bits2, jnp.uint32(32 - 23))
    return jax.lax.bitcast_convert_type(mantissa | jnp.uint32(0x3F800000), jnp.float32) - 1.0

  return jax.jit(draw)
