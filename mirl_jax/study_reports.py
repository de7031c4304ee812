"""The ticket study's records and what is read from them: means over seeds, IMP's lead over
each control with a paired test, study.md and study.png.

study.json holds one record per training (variant, seed, round); a record is never
rewritten by a later one of another training, so a killed study loses nothing it finished.
"""

from pathlib import Path

import numpy as np
from scipy import stats

from mirl_jax import images
from mirl_jax import reports

STUDY = "study.json"
DENSE, IMP = "dense", "imp"
CONTROLS = ("reinit", "random", "oneshot")
VARIANTS = (DENSE, IMP) + CONTROLS
LABELS = {
    DENSE: "dense (round 0)",
    IMP: "IMP, rewound to init",
    "reinit": "IMP's masks, random init",
    "random": "random pruning, rewound",
    "oneshot": "one-shot magnitude, rewound",
}
SIGNIFICANCE = 0.05  # two-sided p of the paired t-test over seeds


def record_of(variant: str, seed: int, summary: dict, seconds: float | None) -> dict:
  """One training's record from its round's summary.json entry (reports.summary_entry)."""
  psnr = {name: m["psnr"] for name, m in summary["results"].items()}
  inputs = {name: m["input_psnr"] for name, m in summary["results"].items()}
  return dict(
      variant=variant,
      seed=seed,
      round=summary["round"],
      remaining=summary["remaining"],
      psnr=psnr,
      input_psnr=inputs,
      psnr_mean=float(np.mean(list(psnr.values()))),
      input_psnr_mean=float(np.mean(list(inputs.values()))),
      loss_change_over_last_20pct=summary.get("loss_change_over_last_20pct"),
      seconds=seconds,
  )


def read(workdir: str) -> list[dict]:
  return reports.read_entries(Path(workdir) / STUDY)


def record(workdir: str, entry: dict) -> list[dict]:
  """Adds or replaces the record of (variant, seed, round), atomically; returns all."""
  key = lambda e: (e["round"], VARIANTS.index(e["variant"]), e["seed"])  # noqa: E731
  return reports.update_entries(Path(workdir) / STUDY, entry, key=key)


def find(records: list[dict], variant: str, seed: int, r: int) -> dict | None:
  return next(
      (e for e in records if (e["variant"], e["seed"], e["round"]) == (variant, seed, r)), None
  )


def _by_seed(records, variant, r, value=lambda e: e["psnr_mean"]) -> dict[int, float]:
  return {e["seed"]: value(e) for e in records if e["variant"] == variant and e["round"] == r}


def lead(records: list[dict], control: str, r: int) -> dict | None:
  """IMP minus `control` at round r over the seeds both have: mean, std, paired t-test p."""
  imp, other = _by_seed(records, IMP, r), _by_seed(records, control, r)
  seeds = sorted(set(imp) & set(other))
  if len(seeds) < 2:
    return None
  diff = np.array([imp[s] - other[s] for s in seeds])
  p = float(stats.ttest_rel([imp[s] for s in seeds], [other[s] for s in seeds]).pvalue)
  return dict(mean=float(diff.mean()), std=float(diff.std(ddof=1)), p=p, seeds=len(seeds))


def _cell(values) -> str:
  values = list(values)
  if not values:
    return "—"
  std = f" ± {np.std(values, ddof=1):.2f}" if len(values) > 1 else ""
  return f"{np.mean(values):.2f}{std}"


def _row(cells) -> str:
  return "| " + " | ".join(cells) + " |"


def _lead_cell(found: dict | None) -> str:
  if found is None:
    return "—"
  mark = " (significant)" if found["p"] < SIGNIFICANCE else ""
  return f"{found['mean']:+.2f} ± {found['std']:.2f}, p = {found['p']:.3f}{mark}"


def _convergence(records: list[dict]) -> list[str]:
  """The training loss's change over the last 20% of each dense round, and over all."""
  change = lambda e: e.get("loss_change_over_last_20pct")  # noqa: E731
  dense = sorted((e["seed"], change(e)) for e in records if e["variant"] == DENSE)
  known = [abs(change(e)) for e in records if change(e) is not None]
  if not known:
    return ["No training recorded its loss curve."]
  per_seed = ", ".join(f"seed {s} {100 * c:+.1f}%" for s, c in dense if c is not None)
  return [
      "The training loss's change over each round's last 20% (mean of its last tenth against "
      f"the tenth before): the dense round {per_seed or '—'}; over all {len(known)} trainings "
      f"at most {100 * max(known):.1f}% either way, median {100 * np.median(known):.1f}%."
  ]


def write_markdown(workdir: str, records: list[dict], config) -> None:
  """Mean PSNR ± std over seeds per round and variant; IMP's lead; then per test set."""
  rounds = sorted({e["round"] for e in records})
  tasks = list(records[0]["psnr"])
  seeds = sorted({e["seed"] for e in records})
  remaining = {e["round"]: e["remaining"] for e in records if e["variant"] in (DENSE, IMP)}
  shown = [v for v in VARIANTS if v != DENSE]
  lines = [
      "# Winning-ticket study",
      "",
      f"Seeds {', '.join(map(str, seeds))} (each: the init key and the data order); IMP at "
      f"rounds 0..{config.lottery.rounds}, the controls at rounds "
      f"{', '.join(map(str, sorted(config.study.control_rounds)))}. Every training: "
      f"{config.train.epochs} epochs with its round's data order. PSNR in dB on the test sets, "
      f"mean ± standard deviation over seeds; input: the degraded images. IMP's lead: paired "
      f"over seeds, two-sided t-test, significant at p < {SIGNIFICANCE}.",
      "",
      _row(["round", "remaining %", "input"] + [LABELS[v] for v in shown]),
      _row(["---:"] * (3 + len(shown))),
  ]
  for r in rounds:
    inputs = [e["input_psnr_mean"] for e in records if e["round"] == r]
    cells = [
        _cell(_by_seed(records, DENSE if r == 0 and v == IMP else v, r).values()) for v in shown
    ]
    lines.append(_row([str(r), f"{100 * remaining[r]:.2f}", _cell(inputs[:1])] + cells))
  lines += ["", "## IMP's lead over each control (dB)", ""]
  lines += [_row(["round", "remaining %"] + [f"over {c}" for c in CONTROLS]), _row(["---:"] * 5)]
  for r in rounds:
    if r > 0 and any(e["round"] == r and e["variant"] in CONTROLS for e in records):
      leads = [_lead_cell(lead(records, c, r)) for c in CONTROLS]
      lines.append(_row([str(r), f"{100 * remaining[r]:.2f}"] + leads))
  lines += ["", "## Convergence", ""] + _convergence(records)
  lines += ["", "## Per test set (dB, mean ± std over seeds)", ""]
  lines += [_row(["round", "variant"] + tasks), _row(["---:", "---"] + ["---:"] * len(tasks))]
  first = [e for e in records if e["round"] == rounds[0]][:1]
  lines.append(_row(["", "input"] + [_cell(e["input_psnr"][t] for e in first) for t in tasks]))
  for r in rounds:
    for v in VARIANTS:
      if _by_seed(records, v, r):
        per_task = [_cell(_by_seed(records, v, r, lambda e: e["psnr"][t]).values()) for t in tasks]
        lines.append(_row([str(r), LABELS[v]] + per_task))
  images.write_atomic(Path(workdir) / "study.md", ("\n".join(lines) + "\n").encode())


def plot(workdir: str, records: list[dict]) -> Path:
  """Mean PSNR ± std over seeds against the remaining weights; the input level dashed."""
  import matplotlib  # pylint: disable=import-outside-toplevel

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  remaining = {e["round"]: e["remaining"] for e in records}
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for i, (variant, marker) in enumerate(zip(VARIANTS[1:], "osD^")):
    series = [DENSE, IMP] if variant == IMP else [variant]
    rounds = sorted({e["round"] for e in records if e["variant"] in series})
    values = [
        [e["psnr_mean"] for e in records if e["variant"] in series and e["round"] == r]
        for r in rounds
    ]
    # Each variant a little apart, so that error bars at one level do not hide each other.
    x = [100 * remaining[r] * 1.015 ** (i - 1.5) for r in rounds]
    y, err = [np.mean(v) for v in values], [np.std(v, ddof=1) if len(v) > 1 else 0 for v in values]
    if rounds:
      ax.errorbar(
          x, y, yerr=err, marker=marker, markerfacecolor="none", capsize=3, label=LABELS[variant]
      )
  ax.axhline(records[0]["input_psnr_mean"], color="gray", linestyle="--", label="degraded input")
  reports.percent_axis(ax, sorted({100 * e["remaining"] for e in records}))
  ax.set(ylabel="mean PSNR over the test sets (dB)")
  ax.legend(fontsize=8)
  path = Path(workdir) / "study.png"
  reports.save_figure(fig, path)
  return path
