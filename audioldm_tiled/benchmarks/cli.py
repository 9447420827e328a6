"""``audioldm-tiled bench STAGE ...`` and ``audioldm-tiled bench report ...``: argument parsing for the benchmarks."""

from __future__ import annotations

import argparse
import json
import sys

from ..arguments import positive_int, positive_number
from ..constants import DTYPES
from .runner import DEFAULT_STEPS, DEFAULT_VARIANTS, VARIANTS, is_memory_failure, run_suite, to_markdown

DESCRIPTION = """Benchmarks: each point runs in its own process, so its peak memory is its own. Components are
randomly initialised with the audioldm-s shapes (cost depends only on shapes), or for generate, windows and stream
those of --model. Ratios are taken within one run,
against the first variant of the same length. 'stream' is the command line's path (streamed to a WAV file);
'generate' calls the pipeline windowed and tiled, or as the parent does (one denoising pass, untiled decode and
vocoder)."""


def main(argv: list[str] | None = None) -> int:
    """Run one stage's points; exit status 1 when a point failed for any reason but the memory it measures."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "report":
        from .report import main as report_main

        return report_main(argv[1:])
    if argv and argv[0] == "gpu":
        from .gpu_check import main as gpu_main

        return gpu_main(argv[1:])
    if argv and argv[0] == "distributed":
        from .distributed import main as distributed_main

        return distributed_main(argv[1:])
    if argv and argv[0] == "delivery":
        from .delivery import main as delivery_main

        return delivery_main(argv[1:])
    if argv and argv[0] == "rerun":
        from .rerun import main as rerun_main

        return rerun_main(argv[1:])
    parser = argparse.ArgumentParser(prog="audioldm-tiled bench", description=DESCRIPTION,
                                     epilog="audioldm-tiled bench report --help: the report with plots; "
                                     "audioldm-tiled bench gpu --help: every accelerator measurement in one command; "
                                     "audioldm-tiled bench distributed --help: one render over 1 and N ranks; "
                                     "audioldm-tiled bench rerun --help: a rerun of a finished batch; "
                                     "audioldm-tiled bench delivery --help: writing a render as each file format")
    parser.add_argument("stage", choices=sorted(VARIANTS))
    parser.add_argument("--seconds", type=positive_number("--seconds", "seconds"), nargs="+", default=[10, 40, 120])
    parser.add_argument("--variants", nargs="+", default=None, help="first one is the reference")
    parser.add_argument("--steps", type=positive_int("--steps"), default=None,
                        help="denoising steps for stream/generate/windows (default: stream 2, generate 10, "
                        "windows 2)")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    parser.add_argument("--memory-limit", type=positive_number("--memory-limit", "GB"), default=None, metavar="GB",
                        help="stop a point whose resident memory passes this; it is reported as out of memory (the "
                        "auto and fallback variants instead fail their allocations past it, on the device under cuda)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="fp32 (default), fp16 or bf16")
    parser.add_argument("--model", default="audioldm-s", metavar="ARCH",
                        help="random architecture of generate, windows and stream (default audioldm-s); decode, "
                        "encode and vocode measure audioldm-s's VAE and vocoder, which every family shares; "
                        "audiosr takes audiosr (default) or audiosr-tiny")
    args = parser.parse_args(argv)
    from .runner import check_json_path

    check_json_path(parser, args.json)
    from ..audiosr.components import ARCHITECTURES as AUDIOSR  # after parsing: --help needs no torch
    from ..testing.architectures import ARCHITECTURES

    if args.stage == "audiosr":
        args.model = "audiosr" if args.model == "audioldm-s" else args.model
        if args.model not in AUDIOSR:
            parser.error(f"--model of audiosr must be one of {', '.join(AUDIOSR)}; got {args.model!r}")
    elif args.model not in ARCHITECTURES:
        parser.error(f"--model must be one of {', '.join(ARCHITECTURES)}; got {args.model!r}")
    variants = args.variants or list(DEFAULT_VARIANTS.get(args.stage, VARIANTS[args.stage]))
    unknown = [v for v in variants if v not in VARIANTS[args.stage]]
    if unknown:
        parser.error(f"--variants for {args.stage} must be among {', '.join(VARIANTS[args.stage])}; got {unknown}")
    steps = args.steps if args.steps is not None else DEFAULT_STEPS.get(args.stage, 0)
    limit = None if args.memory_limit is None else int(args.memory_limit * 1e9)
    rows = run_suite(args.stage, args.seconds, variants, steps, limit, args.device, args.dtype, args.model)
    print(to_markdown(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    failed = [r for r in rows if "error" in r and not is_memory_failure(r)]
    for row in failed:
        print(f"audioldm-tiled bench: {row['stage']} {row['variant']} at {row['seconds']:g} s failed: {row['error']}",
              file=sys.stderr)
    return 1 if failed else 0
