"""``audioldm-tiled bench report``: benchmark rows (run now, or read from saved JSON) into a Markdown table and PNG
plots of memory and time against audio length.

Every point comes from its own process (``runner.run_suite``). A point that could not run within the memory limit is
drawn as "out of memory" at the limit, not left out. Each figure names the machine, the torch and diffusers
versions and the date the rows record.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

from ..plots import figure_class
from .runner import memory_key, run_suite, to_markdown

# What ``--run`` measures: stage, lengths (s), variants (the first is the reference).
SUITES = [
    ("decode", [10, 40, 120, 300], ["untiled", "exact", "fast", "diffusers"]),
    ("generate", [10, 30, 60], ["windowed", "single-pass"]),
]
logger = logging.getLogger(__name__)
_MARKERS = {"untiled": "o", "exact": "s", "fast": "^", "diffusers": "v", "windowed": "s", "single-pass": "o"}


def _environment(rows: list[dict]) -> str:
    """One line naming what the rows were measured on (several values where rows differ)."""
    parts = []
    for key in ("machine", "device", "dtype", "torch", "diffusers", "date"):
        values = sorted({str(r[key]) for r in rows if key in r})
        parts.append(f"{key}: {', '.join(values) if values else 'not recorded'}")
    return "; ".join(parts)


def _plot(rows: list[dict], stage: str, measures: list[tuple[str, str]], title: str, path: Path) -> bool:
    """One panel per measure ((row key, axis label)), one line per variant; False when there is nothing to plot."""
    rows = [r for r in rows if r["stage"] == stage]
    if not rows:
        return False
    Figure = figure_class()
    figure = Figure(figsize=(5.5 * len(measures), 4.2), layout="constrained")
    axes = figure.subplots(1, len(measures), squeeze=False)[0]
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    for ax, (key, label) in zip(axes, measures):
        scale = 1e9 if key.startswith("peak") else 1
        for variant in variants:
            points = sorted((r["seconds"], r[key] / scale) for r in rows if r["variant"] == variant and key in r)
            line = ax.plot([p[0] for p in points], [p[1] for p in points], marker=_MARKERS.get(variant, "o"),
                           label=variant)[0]
            failed = [r for r in rows if r["variant"] == variant and "error" in r]
            for r in failed:
                limit = r.get("memory_limit_bytes")
                y = limit / scale if key.startswith("peak") and limit else (points[-1][1] if points else 0)
                ax.plot([r["seconds"]], [y], marker="x", markersize=10, color=line.get_color())
                ax.annotate("out of memory" if "memory" in r["error"] else "failed", (r["seconds"], y),
                            textcoords="offset points", xytext=(-80, -16), fontsize="small", color=line.get_color())
        limits = {r["memory_limit_bytes"] for r in rows if "memory_limit_bytes" in r}
        if key == "peak_rss_bytes" and limits:
            ax.axhline(max(limits) / scale, color="grey", linestyle=":", linewidth=1, label="memory limit")
        ax.set_xlabel("audio length (s)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    figure.suptitle(title)
    figure.supxlabel(_environment(rows), fontsize="x-small", color="grey")
    figure.savefig(path, dpi=80)
    return True


def build_report(rows: list[dict], folder: str | os.PathLike) -> Path:
    """Write report.md, memory.png, time.png and end_to_end.png (those with rows) into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    pictures = []
    decode_memory = "peak_cuda_bytes" if any(memory_key(r) == "peak_cuda_bytes" for r in rows) else "peak_rss_bytes"
    label = "peak CUDA memory (GB)" if decode_memory == "peak_cuda_bytes" else "peak RSS (GB)"
    if _plot(rows, "decode", [(decode_memory, label)], "VAE decode: peak memory", folder / "memory.png"):
        pictures.append(("Peak memory of the VAE decode against length", "memory.png"))
    if _plot(rows, "decode", [("time_s", "wall time (s)")], "VAE decode: time", folder / "time.png"):
        pictures.append(("Time of the VAE decode against length", "time.png"))
    if _plot(rows, "generate", [("time_s", "wall time (s)"), ("peak_rss_bytes", "peak RSS (GB)")],
             "End to end (10 steps): windowed and tiled vs single pass", folder / "end_to_end.png"):
        pictures.append(("End to end, time and memory against length", "end_to_end.png"))
    lines = ["# Benchmark report", "", f"Measured on {_environment(rows)}.", ""]
    for stage in dict.fromkeys(r["stage"] for r in rows):
        lines += [f"## {stage}", "", to_markdown([r for r in rows if r["stage"] == stage]), ""]
    lines += [f"![{alt}]({name})" for alt, name in pictures]
    path = folder / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="audioldm-tiled bench report", description=__doc__)
    parser.add_argument("--json", nargs="+", default=None, metavar="FILE",
                        help="saved rows (bench ... --json FILE) to report on, instead of running the suites")
    parser.add_argument("--run", action="store_true", help="run the suites now (decode, generate; long)")
    parser.add_argument("--memory-limit", type=float, default=None, metavar="GB",
                        help="with --run: stop a point whose resident memory passes this and report it as out of "
                        "memory")
    parser.add_argument("--out", required=True, help="folder for report.md and the PNG plots")
    args = parser.parse_args(argv)
    if bool(args.json) == args.run:
        parser.error("give either --json FILE... or --run")
    figure_class()  # matplotlib missing: say so before running anything
    if args.run:
        limit = None if args.memory_limit is None else int(args.memory_limit * 1e9)
        rows = []
        for stage, lengths, variants in SUITES:
            rows += run_suite(stage, lengths, variants, 10 if stage == "generate" else 0, limit)
            Path(args.out).mkdir(parents=True, exist_ok=True)
            (Path(args.out) / "rows.json").write_text(json.dumps(rows, indent=1))
    else:
        rows = []
        for name in args.json:
            try:
                rows += json.loads(Path(name).read_text())
            except (OSError, ValueError) as error:
                parser.error(f"--json {name}: cannot read benchmark rows ({error})")
    logger.info("wrote %s", build_report(rows, args.out))
    return 0
