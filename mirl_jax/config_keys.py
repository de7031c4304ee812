"""Config keys a user can find and trust: each key's meaning, and its valid values.

The meaning of a key is the comment beside it in the config files themselves (a
config and the configs it imports), so `--mode config` can never drift from them.
`validate` checks every key before a command reads or writes anything, so a bad
value costs a one-line error instead of a crash an hour into a run.
"""

from __future__ import annotations

import ast
import importlib.util
import io
import numbers
import tokenize
from pathlib import Path
from typing import Any, Callable

from mirl_jax import images, lottery, models, restore

TASKS = ("denoise", "derain", "dehaze")
MULTIPLE = restore.MULTIPLE  # the network halves the resolution three times


# ----------------------------------------------------------------------------
# What keys mean.


def _comment_lines(source: str) -> dict[int, str]:
  """Line number -> the text of the comment on that line."""
  comments = {}
  for tok in tokenize.generate_tokens(io.StringIO(source).readline):
    if tok.type == tokenize.COMMENT:
      comments[tok.start[0]] = tok.string.lstrip("#").strip()
  return comments


def _comment_at(line: int, column: int, comments: dict[int, str], lines: list[str]) -> str:
  """The comment on `line`, with comment-only lines below it indented past `column`."""
  parts = [comments[line]] if line in comments else []
  nxt = line + 1
  while (
      parts
      and nxt in comments
      and lines[nxt - 1].strip().startswith("#")
      and (len(lines[nxt - 1]) - len(lines[nxt - 1].lstrip()) > column)
  ):
    parts.append(comments[nxt])
    nxt += 1
  return " ".join(parts)


def _config_path(node: ast.expr) -> str | None:
  """`config.a.b` -> "a.b"; anything else -> None."""
  names = []
  while isinstance(node, ast.Attribute):
    names.append(node.attr)
    node = node.value
  if isinstance(node, ast.Name) and node.id == "config" and names:
    return ".".join(reversed(names))
  return None


def _dict_keywords(node: ast.expr) -> list[ast.keyword]:
  """Keywords of `dict(...)` or `ConfigDict(dict(...))`; [] for anything else."""
  if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Call):
    node = node.args[0]
  if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "dict":
    return [kw for kw in node.keywords if kw.arg]
  return []


def _keyword_comments(keywords, prefix, comments, lines) -> dict[str, str]:
  """A comment belongs to the last keyword that ends on its line."""
  found = {}
  for i, kw in enumerate(keywords):
    last = i + 1 == len(keywords) or keywords[i + 1].lineno > kw.value.end_lineno
    found[f"{prefix}.{kw.arg}"] = (
        _comment_at(kw.value.end_lineno, kw.value.col_offset, comments, lines) if last else ""
    )
  return found


def _file_comments(path: Path) -> tuple[dict[str, str], list[str]]:
  """(key -> comment in file order, the config modules it imports) of one config file."""
  source = path.read_text()
  lines, comments = source.splitlines(), _comment_lines(source)
  found, imports = {}, []
  nodes = sorted(
      (n for n in ast.walk(ast.parse(source)) if hasattr(n, "lineno")),
      key=lambda n: (n.lineno, n.col_offset),
  )
  for node in nodes:
    if isinstance(node, ast.ImportFrom) and node.module == "configs":
      imports += [alias.name for alias in node.names]
    elif isinstance(node, ast.Assign) and len(node.targets) == 1:
      key = _config_path(node.targets[0])
      keywords = _dict_keywords(node.value)
      if key and not keywords:
        found[key] = _comment_at(node.lineno, node.col_offset, comments, lines)
      elif key:  # a section: the comment line above it
        found[key] = (
            comments.get(node.lineno - 1, "")
            if lines[node.lineno - 2].strip().startswith("#")
            else ""
        )
        found.update(_keyword_comments(keywords, key, comments, lines))
    elif (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "update"
        and node.args
        and _config_path(node.func.value)
    ):
      found.update(
          _keyword_comments(
              _dict_keywords(node.args[0]), _config_path(node.func.value), comments, lines
          )
      )
  return found, imports


def comments(config_file: str | Path) -> dict[str, str]:
  """Key -> comment from `config_file` and the configs it imports; the file's own win."""
  found, imports = _file_comments(Path(config_file))
  merged = {}
  for name in imports:
    spec = importlib.util.find_spec(f"configs.{name}")
    if spec and spec.origin:
      merged.update(comments(spec.origin))
  merged.update({k: v for k, v in found.items() if v or k not in merged})
  return merged


def _flatten(config) -> list[tuple[str, Any]]:
  """[("seed", 0), ("model.dim", 48), ...]: sections are one level deep; deeper dicts are values."""
  out = []
  for key, value in config.items():
    if hasattr(value, "items"):
      out += [(f"{key}.{k}", v) for k, v in value.items()]
    else:
      out.append((key, value))
  return out


def describe(config, config_file: str | Path) -> str:
  """Every key with its value and meaning, as `key = value  # comment` lines."""
  notes = comments(config_file)
  order = {k: i for i, k in enumerate(notes)}
  rows = sorted(
      ((k, repr(v.to_dict() if hasattr(v, "to_dict") else v)) for k, v in _flatten(config)),
      key=lambda kv: order.get(kv[0], len(order)),
  )
  width = max(len(k) + len(v) + 3 for k, v in rows)
  out = [f"# {config_file}: set any key with --config.KEY=VALUE"]
  section = None
  for key, value in rows:
    head = key.split(".")[0] if "." in key else None
    if head != section:
      section = head
      out.append("")
      if head and notes.get(head):
        out.append(f"# {notes[head]}")
    text = f"{key} = {value}"
    out.append(f"{text.ljust(width)}  # {notes[key]}" if notes.get(key) else text)
  return "\n".join(out)


# ----------------------------------------------------------------------------
# Valid values.


def _is_int(v) -> bool:
  return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _int_at_least(low: int) -> tuple[Callable[[Any], bool], str]:
  return (lambda v: _is_int(v) and v >= low), f"an integer >= {low}"


def _ints(count: int, low: int) -> tuple[Callable[[Any], bool], str]:
  return (
      lambda v: isinstance(v, (tuple, list))
      and len(v) == count
      and all(_is_int(x) and x >= low for x in v)
  ), f"{count} integers >= {low}"


def _one_of(choices) -> tuple[Callable[[Any], bool], str]:
  return (lambda v: v in choices), "one of " + ", ".join(repr(c) for c in choices)


def _kind(types, what: str) -> tuple[Callable[[Any], bool], str]:
  return (lambda v: isinstance(v, types)), what


def _number(low: float, high: float | None = None) -> tuple[Callable[[Any], bool], str]:
  def ok(v):
    return (
        isinstance(v, numbers.Real)
        and not isinstance(v, bool)
        and v >= low
        and (high is None or v < high)
    )

  return ok, f"a number in [{low}, {high})" if high is not None else f"a number >= {low}"


def _sets(v) -> bool:
  return isinstance(v, (tuple, list)) and all(
      isinstance(s, str) and s.count("/") == 1 and s.split("/")[0] in TASKS and s.split("/")[1]
      for s in v
  )


_BOOL = _kind(bool, "True or False")
_STR = _kind(str, "a string")
_POSITIVE = (
    lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool) and v > 0,
    "a number > 0",
)

RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "seed": _int_at_least(0),
    "model.dim": _int_at_least(1),
    "model.num_blocks": _ints(4, 1),
    "model.num_refinement_blocks": _int_at_least(0),
    "model.heads": _ints(4, 1),
    "model.ffn_expansion_factor": _POSITIVE,
    "model.prompt_dims": _ints(3, 1),
    "model.prompt_sizes": _ints(3, 1),
    "model.prompt_length": _int_at_least(1),
    "model.noise_level_heads": _int_at_least(1),
    "model.dtype": _one_of(("float32", "bfloat16")),
    "model.precision": _one_of(("highest", "high", "default")),
    "model.scan_blocks": _BOOL,
    "model.remat": _one_of(models.REMAT_MODES),
    "data.demo": _BOOL,
    "data.manual_dir": _STR,
    "data.data_dir": _STR,
    "data.train_sets": (_sets, f'a tuple of "task/Set" names, task one of {", ".join(TASKS)}'),
    "data.test_sets": (_sets, f'a tuple of "task/Set" names, task one of {", ".join(TASKS)}'),
    "data.batch_size": _int_at_least(1),
    "data.patch_size": (
        (lambda v: _is_int(v) and v >= MULTIPLE and v % MULTIPLE == 0),
        f"a positive multiple of {MULTIPLE}",
    ),
    "data.sigmas": (
        (lambda v: isinstance(v, (tuple, list)) and len(v) > 0 and all(_POSITIVE[0](s) for s in v)),
        "a non-empty tuple of numbers > 0",
    ),
    "data.repeats": (
        (
            lambda v: hasattr(v, "items")
            and all(k in TASKS and _is_int(n) and n >= 0 for k, n in v.items())
        ),
        f"a dict of {', '.join(TASKS)} to integers >= 0",
    ),
    "data.worker_count": _int_at_least(0),
    "data.read_threads": _int_at_least(1),
    "train.epochs": _int_at_least(1),
    "train.warmup_epochs": _int_at_least(0),
    "train.learning_rate": _POSITIVE,
    "train.weight_decay": _number(0.0),
    "train.clip_grad_norm": _number(0.0),
    "train.lr_per_epoch": _BOOL,
    "train.log_every_steps": _int_at_least(1),
    "train.checkpoint_every_steps": _int_at_least(1),
    "train.microbatches": _int_at_least(1),
    "lottery.rounds": _int_at_least(0),
    "lottery.percent": ((lambda v: _number(0.0, 100.0)[0](v) and v > 0), "a number in (0, 100)"),
    "lottery.scope": _one_of(lottery.SCOPES),
    "lottery.rewind": _one_of(lottery.REWIND_MODES),
    "lottery.late_step": _int_at_least(0),
    "lottery.keep_trained_prompts": _BOOL,
    "lottery.reference_pool": _BOOL,
    "eval.seed": _int_at_least(0),
    "eval.ticket": _int_at_least(-1),
    "eval.save_images": _BOOL,
    "import_from": _STR,
    "import_init": _STR,
    "export.format": _one_of(("torch", "npz", "stablehlo", "onnx")),  # export.FORMATS' keys
    "export.tile": (
        (lambda v: _is_int(v) and v >= MULTIPLE and v % MULTIPLE == 0),
        f"a multiple of {MULTIPLE}, at least {MULTIPLE}",
    ),
    "export.output": _STR,
    "export.ticket": _int_at_least(-1),
    "export.lightning": _BOOL,
    "export.overwrite": _BOOL,
    "restore.inputs": _STR,
    "restore.output_dir": _STR,
    "restore.ticket": _int_at_least(-1),
    "restore.tile": (
        (lambda v: _is_int(v) and v >= 2 * MULTIPLE and v % MULTIPLE == 0),
        f"a multiple of {MULTIPLE}, at least {2 * MULTIPLE}",
    ),
    "restore.overlap": (
        (lambda v: _is_int(v) and v >= 0 and v % MULTIPLE == 0),
        f"a multiple of {MULTIPLE}, >= 0",
    ),
    "restore.overwrite": _BOOL,
    "restore.format": _one_of(images.OUTPUT_FORMATS),
    "serve.host": (lambda v: isinstance(v, str) and bool(v), "an address to bind, e.g. 127.0.0.1"),
    "serve.port": ((lambda v: _is_int(v) and 0 <= v <= 65535), "a port number in [0, 65535]"),
    "serve.ticket": _int_at_least(-1),
    "serve.tile": (
        (lambda v: _is_int(v) and v >= 2 * MULTIPLE and v % MULTIPLE == 0),
        f"a multiple of {MULTIPLE}, at least {2 * MULTIPLE}",
    ),
    "study.seeds": (
        lambda v: isinstance(v, (tuple, list)) and v and all(_is_int(x) and x >= 0 for x in v),
        "one or more integers >= 0",
    ),
    "study.control_rounds": (
        lambda v: isinstance(v, (tuple, list)) and v and all(_is_int(x) and x >= 1 for x in v),
        "one or more pruned rounds (integers >= 1)",
    ),
}


def _bad(key: str, value, expected: str) -> ValueError:
  value = value.to_dict() if hasattr(value, "to_dict") else value
  return ValueError(f"config.{key}={value!r}: expected {expected}")


def _check_relations(values: dict[str, Any]) -> None:
  """Rules that tie keys together."""
  model = {k.split(".", 1)[1]: v for k, v in values.items() if k.startswith("model.")}
  if "dim" in model and "heads" in model:
    for level, heads in enumerate(model["heads"]):
      if (model["dim"] * 2**level) % heads:
        raise _bad(
            "model.heads",
            tuple(model["heads"]),
            f"heads that divide the channels of each level ({model['dim']} * 2**level): "
            f"level {level + 1} has {model['dim'] * 2 ** level}",
        )
  if {"dim", "prompt_dims", "noise_level_heads"} <= set(model):
    widths = [model["dim"] * 2**i + p for i, p in zip((1, 2, 3), model["prompt_dims"])]
    if any(w % model["noise_level_heads"] for w in widths):
      raise _bad(
          "model.noise_level_heads",
          model["noise_level_heads"],
          f"a divisor of the prompted widths {widths}",
      )
  epochs, warmup = values.get("train.epochs"), values.get("train.warmup_epochs")
  if epochs is not None and warmup is not None and warmup >= epochs:
    raise _bad("train.warmup_epochs", warmup, f"fewer than train.epochs ({epochs})")
  if warmup == 0 and values.get("train.lr_per_epoch"):
    raise _bad(
        "train.warmup_epochs",
        0,
        ">= 1 with train.lr_per_epoch=True (the reference's "
        "per-epoch schedule stays at lr 0 without warmup)",
    )
  if values.get("lottery.rewind") == "late" and values.get("lottery.late_step", 1) < 1:
    raise _bad(
        "lottery.late_step",
        values["lottery.late_step"],
        ">= 1 with lottery.rewind='late' (the step of round 0 to rewind to)",
    )
  if values.get("lottery.reference_pool") and values.get("lottery.scope") == "layerwise":
    raise _bad(
        "lottery.reference_pool",
        True,
        "False with lottery.scope='layerwise' (the pool decides only the global threshold)",
    )
  if values.get("export.lightning") and values.get("export.format", "torch") != "torch":
    raise _bad(
        "export.lightning",
        True,
        f"False with export.format={values['export.format']!r} (Lightning's layout is a "
        "torch file)",
    )
  batch, micro = values.get("data.batch_size"), values.get("train.microbatches")
  if batch is not None and micro is not None and batch % micro:
    raise _bad("train.microbatches", micro, f"a divisor of data.batch_size ({batch})")
  tile, overlap = values.get("restore.tile"), values.get("restore.overlap")
  if tile is not None and overlap is not None and not overlap < tile // 2:
    raise _bad("restore.overlap", overlap, f"less than half of restore.tile ({tile})")


#: What each command needs set, beyond valid values.
REQUIRED = {
    "import": ("import_from",),
    "restore": ("restore.inputs", "restore.output_dir"),
    "export": ("export.output",),
}
_PLACEHOLDER = {"restore.inputs": "PATH[,PATH...]", "restore.output_dir": "DIR"}


def validate(config, mode: str | None = None) -> None:
  """Raises ValueError naming the first key whose value is invalid (or missing for `mode`)."""
  values = dict(_flatten(config))
  for key, value in values.items():
    if key in RULES and not RULES[key][0](value):
      raise _bad(key, value, RULES[key][1])
  _check_relations(values)
  missing = [k for k in REQUIRED.get(mode, ()) if not values.get(k)]
  if mode == "import" and missing and values.get("import_init"):
    return  # theta_0 alone: a run that starts from the reference's init
  if mode == "import" and missing:
    raise ValueError(
        "--mode import needs --config.import_from=FILE (a checkpoint), "
        "--config.import_init=FILE (its theta_0) or both"
    )
  if missing:
    raise ValueError(
        f"--mode {mode} needs "
        + " and ".join(f"--config.{k}={_PLACEHOLDER.get(k, 'FILE')}" for k in missing)
    )
