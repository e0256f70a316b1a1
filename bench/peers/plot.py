"""Draw bench/compare.py's chart: ``python plot.py compare.json compare.png`` (run by compare.py
with the plot venv's Python, bench/.venvs/plot: matplotlib only).

A grid of bar charts, one per metric: a bar per system at its median, min-max error bars, SJE
in its own colour, "higher/lower is better" in each title.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

SJE_COLOUR = "#d62728"
PEER_COLOUR = "#7f7f7f"


def main(src: str, dst: str) -> int:
    report: dict[str, Any] = json.loads(Path(src).read_text(encoding="utf-8"))
    names: dict[str, str] = report["names"]
    results: dict[str, Any] = report["results"]
    systems = [s for s in report["systems"] if s in results]
    metrics = report["metrics"]
    cols = 4
    rows = math.ceil(len(metrics) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, metric in zip(axes.flat, metrics, strict=False):
        draw(ax, metric, systems, names, results)
    for ax in list(axes.flat)[len(metrics) :]:
        ax.axis("off")
    machine = report.get("machine", {})
    fig.suptitle(
        f"SJE vs peers — {report.get('mode')} run, median of {report['sizes']['reps']} "
        f"(bars: min-max); {machine.get('cpus')} CPUs, Python {machine.get('python')}, "
        f"Redis {machine.get('redis')}",
        fontsize=12,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    fig.savefig(dst, dpi=110)
    return 0


def draw(
    ax: Any, metric: dict[str, Any], systems: list[str], names: dict[str, str], results: Any
) -> None:
    fmt = metric["fmt"].replace(",", "")
    labels, medians, lows, highs, colours, texts = [], [], [], [], [], []
    for name in systems:
        summary = (results[name].get("summary") or {}).get(metric["key"])
        labels.append(names[name])
        colours.append(SJE_COLOUR if name == "sje" else PEER_COLOUR)
        median = summary["median"] if summary else 0.0
        medians.append(median)
        lows.append(median - summary["min"] if summary else 0.0)
        highs.append(summary["max"] - median if summary else 0.0)
        texts.append(fmt.format(median) if summary else "n/a")
        if metric["key"] == "rec_time_s":  # a run that lost tasks has no recovery time
            runs = [r for r in results[name].get("reps") or [] if "rec_n" in r]
            lost = sum(1 for r in runs if r.get("rec_time_s") is None)
            if lost:
                texts[-1] = f"lost in {lost}/{len(runs)}" + (f"; {texts[-1]}" if summary else "")
    xs = range(len(labels))
    bars = ax.bar(xs, medians, color=colours, yerr=[lows, highs], capsize=3, ecolor="black")
    ax.bar_label(bars, labels=texts, fontsize=6.5, padding=2)
    top = max((m + h for m, h in zip(medians, highs, strict=True)), default=0.0)
    ax.set_ylim(0, top * 1.15 if top > 0 else 1)
    ax.set_xticks(list(xs))
    ax.set_xticklabels(labels, rotation=35, ha="right", fontsize=8)
    label = metric["label"].rstrip(" ¹²³⁴⁵")
    ax.set_title(f"{label}\n({metric['better']} is better)", fontsize=8.5)
    ax.tick_params(axis="y", labelsize=7)
    ax.grid(axis="y", alpha=0.3)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
