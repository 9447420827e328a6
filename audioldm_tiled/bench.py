"""Benchmarks, run by ``audioldm-tiled bench decode|encode|vocode|stream|generate``: each point in its own process,
so peak RSS is honest.

Not part of the test suite. Components are randomly initialised with the audioldm-s shapes (cost depends only on
shapes). Ratios are taken within one run, against the first variant of the same length. ``stream`` runs the CLI
itself (``random:audioldm-s``, streamed to a WAV) end to end; ``generate`` calls the pipeline windowed and tiled
(memory bounded at any length) or as the parent does (one denoising pass, untiled decode and vocoder).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

# The first variant of each stage is the reference that errors and ratios are taken against.
VARIANTS = {
    # Under a real allocator limit (--memory-limit, see _cap_allocator), enabled="auto": "auto" with the budget it
    # reads from the device, "fallback" with one that wrongly says the untiled decode fits, so that the untiled
    # attempt's out-of-memory error is caught and the decode retried in exact tiles.
    "decode": ("untiled", "exact", "fast", "diffusers", "auto", "fallback"),
    "encode": ("untiled", "exact", "fast", "diffusers"),
    # one-pass is the unmodified SpeechT5HifiGan forward; channels-last is the speed work alone, without chunks
    "vocode": ("one-pass", "channels-last", "chunked"),
    # the CLI's streamed path (VAE mode exact or fast): what memory a long soundscape needs end to end
    "stream": ("fast", "exact"),
    "generate": ("windowed", "single-pass", "windowed-fast"),
    # denoising only (output_type="latent"), windows per UNet call: what a window costs in memory and time
    "windows": ("batch-1", "batch-2", "batch-4"),
}
DEFAULT_STEPS = {"stream": 2, "generate": 10, "windows": 2}
# the others run every variant by default
DEFAULT_VARIANTS = {"stream": ("fast",), "generate": ("windowed", "single-pass"),
                    "decode": ("untiled", "exact", "fast", "diffusers")}


# Where a child runs its stage: set from the command line in _measure.
_TARGET = {"device": "cpu", "dtype_name": "fp32", "memory_limit": None}
DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def _target() -> dict:
    """``.to(**_target())`` arguments: the bench's device and dtype."""
    import torch

    return {"device": torch.device(_TARGET["device"]), "dtype": getattr(torch, DTYPES[_TARGET["dtype_name"]])}


def _audioldm_vae():
    """The audioldm-s VAE, randomly initialised, on the bench's device and dtype."""
    import torch
    from diffusers import AutoencoderKL

    from .architectures import ARCHITECTURES

    vae = AutoencoderKL(**ARCHITECTURES["audioldm-s"].vae).eval().to(_target()["device"])
    # diffusers warns on every dtype cast of a model (naming no module here), so cast only when there is one to do
    return vae if _target()["dtype"] == torch.float32 else vae.to(_target()["dtype"])


def _elapsed(start: float) -> float:
    """Seconds since ``start``, after the device has finished its queued work."""
    import torch

    if _TARGET["device"].startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def _run_decode(variant: str, seconds: float, steps: int):
    import torch

    from .config import TilingConfig
    from .constants import LATENT_FRAMES_PER_SECOND
    from .vae import decode_tiles, tiled_decode

    vae = _audioldm_vae()
    latents = torch.randn(1, 8, int(seconds * LATENT_FRAMES_PER_SECOND), 16).to(**_target())
    config = TilingConfig(enabled=True, mode=variant if variant in ("exact", "fast") else "exact", show_progress=False)
    if variant in ("auto", "fallback"):
        config = config.replace(enabled="auto", memory_budget=10**15 if variant == "fallback" else None)
        _cap_allocator(_TARGET["memory_limit"])
    start = time.perf_counter()
    if variant == "untiled":
        out = vae.decode(latents).sample
    elif variant == "diffusers":
        vae.enable_tiling()
        out = vae.decode(latents).sample
    else:
        out = tiled_decode(vae, latents, config)
    elapsed = _elapsed(start)
    factor = out.shape[2] // latents.shape[2]
    # Seams are looked for where this variant's tiles meet (untiled: where the tiled variants' would).
    seams = _diffusers_seams(vae, out.shape[2]) if variant == "diffusers" else \
        [t.core_start * factor for t in decode_tiles(vae, latents, config)[1:]]
    return out, elapsed, seams


def _run_encode(variant: str, seconds: float, steps: int):
    import torch

    from .config import TilingConfig
    from .constants import MEL_FRAMES_PER_SECOND
    from .vae import encode_tiles, tiled_encode

    vae = _audioldm_vae()
    mel = (torch.randn(1, 1, int(seconds * MEL_FRAMES_PER_SECOND), 64) - 4).to(**_target())  # a log-mel's level
    config = TilingConfig(enabled=True, mode=variant if variant in ("exact", "fast") else "exact", show_progress=False)
    start = time.perf_counter()
    if variant == "untiled":
        out = vae.encode(mel).latent_dist.mean
    elif variant == "diffusers":
        vae.enable_tiling()
        out = vae.encode(mel).latent_dist.mean
    else:
        out = tiled_encode(vae, mel, config).mean
    elapsed = _elapsed(start)
    factor = mel.shape[2] // out.shape[2]  # mel frames per latent frame
    seams = [t.core_start // factor for t in encode_tiles(vae, mel, config)[1:]]
    return out, elapsed, seams


def _run_vocode(variant: str, seconds: float, steps: int):
    import torch
    from transformers import SpeechT5HifiGan, SpeechT5HifiGanConfig

    from .architectures import ARCHITECTURES
    from .config import TilingConfig
    from .constants import MEL_FRAMES_PER_SECOND
    from .vocoder import _hifigan_channels_last, chunked_vocode, plan_chunks

    vocoder = SpeechT5HifiGan(SpeechT5HifiGanConfig(**ARCHITECTURES["audioldm-s"].vocoder)).eval().to(**_target())
    mel = torch.randn(1, int(seconds * MEL_FRAMES_PER_SECOND), 64).to(**_target())
    config = TilingConfig(show_progress=False)
    start = time.perf_counter()
    if variant == "one-pass":
        out = vocoder(mel)
    elif variant == "channels-last":
        out = _hifigan_channels_last(vocoder, mel)
    else:
        out = chunked_vocode(vocoder, mel, config)
    elapsed = _elapsed(start)
    seams = [c.core_start / MEL_FRAMES_PER_SECOND for c in plan_chunks(vocoder, mel, mel.shape[1], config)[1:]]
    return out, elapsed, seams


def _run_generate(variant: str, seconds: float, steps: int):
    import torch

    from .architectures import random_pipeline
    from .config import TilingConfig

    pipe = random_pipeline("audioldm-s", seed=0, torch_dtype=_target()["dtype"]).to(_target()["device"])
    pipe.set_progress_bar_config(disable=True)
    # windows, tiled decode (exact, or fast for windowed-fast) and chunked vocoder; else the parent's single passes
    windowed = variant.startswith("windowed")
    config = TilingConfig(windowed=windowed, enabled=windowed, mode="fast" if variant.endswith("fast") else "exact",
                          show_progress=False)
    start = time.perf_counter()
    out = pipe("soft rain on leaves", audio_length_in_s=seconds, num_inference_steps=steps,
               generator=torch.Generator().manual_seed(0), output_type="pt", tiling=config).audios
    elapsed = _elapsed(start)
    return out, elapsed, _all_seams(pipe.seam_positions(seconds, config.replace(windowed=True, enabled=True)))


def _run_windows(variant: str, seconds: float, steps: int):
    import torch

    from .architectures import random_pipeline
    from .config import TilingConfig

    pipe = random_pipeline("audioldm-s", seed=0, torch_dtype=_target()["dtype"]).to(_target()["device"])
    pipe.set_progress_bar_config(disable=True)
    config = TilingConfig(window_batch_size=int(variant.split("-")[1]), show_progress=False)
    start = time.perf_counter()
    out = pipe("soft rain on leaves", audio_length_in_s=seconds, num_inference_steps=steps,
               generator=torch.Generator().manual_seed(0), output_type="latent", tiling=config).audios
    return out, _elapsed(start), []


def _run_stream(variant: str, seconds: float, steps: int):
    import soundfile
    import torch

    from .cli import main as cli_main

    with tempfile.TemporaryDirectory() as tmp:
        wav = os.path.join(tmp, "stream.wav")
        start = time.perf_counter()
        code = cli_main(["soft rain on leaves", "--model", "random:audioldm-s", "--seconds", str(seconds), "--steps",
                         str(steps), "--mode", variant, "--quiet", "-o", wav, "--device", str(_target()["device"]),
                         "--dtype", _TARGET["dtype_name"]])
        elapsed = _elapsed(start)
        if code != 0:
            raise SystemExit(code)
        out = torch.from_numpy(soundfile.read(wav, dtype="float32")[0])
    return out, elapsed, []  # the CLI's pipeline is gone here; generate reports seams of the same pieces


def _all_seams(positions: dict[str, list[float]]) -> list[float]:
    return sorted({t for times in positions.values() for t in times})


def _diffusers_seams(vae, frames: int) -> list[int]:
    """Where diffusers' AutoencoderKL.tiled_decode crops its blended rows: every ``row_limit`` output frames."""
    size = vae.tile_sample_min_size
    size = size[0] if isinstance(size, (list, tuple)) else size
    row_limit = size - int(size * vae.tile_overlap_factor)
    return list(range(row_limit, frames, row_limit))


RUNNERS = {"decode": _run_decode, "encode": _run_encode, "vocode": _run_vocode, "windows": _run_windows,
           "stream": _run_stream, "generate": _run_generate}


# A child's exit status for a CUDA out-of-memory error (the parent reports it as out of memory).
CUDA_OUT_OF_MEMORY = 3


def _measure(stage: str, variant: str, seconds: float, steps: int, out_path: str, device: str = "cpu",
             dtype: str = "fp32", memory_limit: str = "none") -> None:
    """Child process: build only the measured component (so peak memory is that stage's), run one variant, save its
    output (float32, on the CPU), timing and the library's warnings (a fallback, a float32 retry)."""
    import logging
    import resource

    import torch

    _TARGET.update(device=device, dtype_name=dtype, memory_limit=None if memory_limit == "none" else int(memory_limit))
    cuda = device.startswith("cuda")
    torch.manual_seed(0)
    warnings = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: warnings.append(record.getMessage()[:500])
    logging.getLogger("audioldm_tiled").addHandler(handler)
    try:
        with torch.inference_mode():
            out, elapsed, seams = RUNNERS[stage](variant, seconds, steps)
    except torch.OutOfMemoryError as error:
        print(f"out of memory: {error}", file=sys.stderr)
        sys.exit(CUDA_OUT_OF_MEMORY)
    out = out.float().cpu()
    seam = _seam(out, seams)
    torch.save(out, out_path)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    row = {"time_s": elapsed, "peak_rss_bytes": peak, "output_shape": list(out.shape), "seam": seam,
           "device": torch.cuda.get_device_name(device) if cuda else "cpu", "dtype": dtype, **environment()}
    if warnings:
        row["warnings"] = warnings
    if cuda:
        row["peak_cuda_bytes"] = torch.cuda.max_memory_allocated(device)
    with open(out_path + ".json", "w") as f:
        json.dump(row, f)


def _seam(out, seams: list) -> float | None:
    """The seam score (see seams.py) of a stage's output at its boundaries: frames of a (B, C, T, F) output, the
    channels and frequency rows as bands; seconds of a waveform. None without boundaries."""
    import math

    from .seams import audio_seam_score, seam_score

    if not seams:
        return None
    if out.dim() == 4:
        score = seam_score(out[0].transpose(0, 1).flatten(1), seams)
    else:
        score = audio_seam_score(out.reshape(-1).float().numpy(), seams)
    return None if math.isnan(score) else score


def environment() -> dict:
    """What a measurement ran on: machine, library versions, date."""
    import datetime
    import platform

    import diffusers
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    memory_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    return {"machine": f"{cpu}, {os.cpu_count()} cores, {memory_gb:.0f} GB", "torch": torch.__version__,
            "diffusers": diffusers.__version__, "date": datetime.date.today().isoformat()}


def _rss(pid: int) -> int:
    from .memory import process_sizes

    return process_sizes(f"/proc/{pid}").get("VmRSS", 0)


def _cap_allocator(limit: int | None) -> None:
    """Make this process's allocations past ``limit`` bytes fail, as on a device of that size: on CUDA the caching
    allocator's share of the device, on the host the data segment's rlimit (what is left under the limit now, as
    more data segment). Without a limit only the device's real size binds."""
    import resource

    import torch

    from .memory import process_sizes

    if limit is None:
        return
    device = torch.device(_TARGET["device"])
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, limit / total), device)
        return
    sizes = process_sizes()
    soft = sizes["VmData"] + max(0, limit - sizes["VmRSS"])
    _, hard = resource.getrlimit(resource.RLIMIT_DATA)
    resource.setrlimit(resource.RLIMIT_DATA, (soft if hard == resource.RLIM_INFINITY else min(soft, hard), hard))


def _run_child(args: list[str], memory_limit: int | None) -> str | None:
    """Run one measurement in its own process; None on success, else why it failed. With ``memory_limit`` (bytes)
    the child is stopped once its resident memory passes it: what a machine with that much free memory would do."""
    child = subprocess.Popen([sys.executable, "-m", "audioldm_tiled.bench", "--child", *args])
    while child.poll() is None:
        if memory_limit is not None and _rss(child.pid) > memory_limit:
            child.kill()
            child.wait()
            return f"out of memory: passed the {memory_limit / 1e9:.1f} GB limit"
        time.sleep(0.05)
    if child.returncode == 0:
        return None
    if child.returncode == CUDA_OUT_OF_MEMORY:
        return "out of memory (CUDA)"
    return "out of memory (killed)" if child.returncode in (-9, 137) else f"exit status {child.returncode}"


def run_suite(stage: str, lengths: list[float], variants: list[str], steps: int = 0,
              memory_limit: int | None = None, device: str = "cpu", dtype: str = "fp32") -> list[dict]:
    import torch

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seconds in lengths:
            reference, base = None, None
            for variant in variants:
                path = os.path.join(tmp, f"{stage}-{variant}-{seconds}.pt")
                failure = _run_child([stage, variant, str(seconds), str(steps), path, device, dtype,
                                      "none" if memory_limit is None else str(memory_limit)], memory_limit)
                row = {"stage": stage, "variant": variant, "seconds": seconds}
                if steps:
                    row["steps"] = steps
                if memory_limit is not None:
                    row["memory_limit_bytes"] = memory_limit
                if failure is not None:
                    row["error"] = failure
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                    continue
                with open(path + ".json") as f:
                    row.update(json.load(f))
                row["time_per_audio_second"] = row["time_s"] / seconds
                out = torch.load(path).double()
                if variant == variants[0]:
                    reference, base = out, row
                    row["snr_db"] = float("inf")
                    row["max_abs_err"] = 0.0
                elif reference is not None:  # no comparison when the reference itself could not run
                    err = out - reference
                    row["snr_db"] = float(10 * torch.log10(reference.pow(2).mean() / err.pow(2).mean()))
                    row["max_abs_err"] = float(err.abs().max())
                    row["max_rel_err"] = float(err.abs().max() / reference.abs().max())
                    row["time_ratio"] = row["time_s"] / base["time_s"]
                    key = memory_key(row)  # on a GPU, the device's peak; else the process's
                    row["memory_ratio"] = row[key] / base[key]
                rows.append(row)
                print(json.dumps(row), flush=True)
    return rows


def memory_key(row: dict) -> str:
    return "peak_cuda_bytes" if "peak_cuda_bytes" in row else "peak_rss_bytes"


def _relative(row: dict) -> str:
    if "max_rel_err" in row:
        return f"{row['max_rel_err']:.1e}"
    return "0" if row.get("max_abs_err") == 0 else ""  # rows saved before the field existed


def _ratio(row: dict, key: str) -> float | None:
    """A ratio to the reference; 1 for the reference itself, None where the reference could not run."""
    if key in row:
        return row[key]
    return 1.0 if row.get("snr_db") == float("inf") and "max_rel_err" not in row else None


def _number(value, spec: str) -> str:
    return "" if value is None else format(value, spec)


def to_markdown(rows: list[dict]) -> str:
    cuda = any("peak_cuda_bytes" in r for r in rows)
    extra = " peak CUDA (GB) |" if cuda else ""
    lines = ["| stage | variant | audio (s) | time (s) | s per audio s | peak RSS (GB) |" + extra + " time / base "
             "| memory / base | SNR vs base (dB) | max abs err | max err / max abs | seam score |",
             "|---|---|---|---|---|---|" + ("---|" if cuda else "") + "---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['stage']} | {r['variant']} | {r['seconds']:g} | {r['error']} |" + " |" * (8 + cuda))
            continue
        cuda_cell = f" {_number(r.get('peak_cuda_bytes', None) and r['peak_cuda_bytes'] / 1e9, '.2f')} |" if cuda \
            else ""
        lines.append(
            f"| {r['stage']} | {r['variant']} | {r['seconds']:g} | {r['time_s']:.1f} "
            f"| {r['time_s'] / r['seconds']:.2f} | {r['peak_rss_bytes'] / 1e9:.2f} |{cuda_cell} "
            f"{_number(_ratio(r, 'time_ratio'), '.2f')} | {_number(_ratio(r, 'memory_ratio'), '.2f')} "
            f"| {_number(r.get('snr_db'), '.1f')} | {_number(r.get('max_abs_err'), '.2e')} | {_relative(r)} "
            f"| {_number(r.get('seam'), '.2f')} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        _measure(argv[1], argv[2], float(argv[3]), int(argv[4]), *argv[5:9])
        return 0
    if argv and argv[0] == "report":
        from .report import main as report_main

        return report_main(argv[1:])
    parser = argparse.ArgumentParser(prog="audioldm-tiled bench", description=__doc__,
                                     epilog="audioldm-tiled bench report --help: the report with plots")
    parser.add_argument("stage", choices=sorted(VARIANTS))
    parser.add_argument("--seconds", type=float, nargs="+", default=[10, 40, 120])
    parser.add_argument("--variants", nargs="+", default=None, help="first one is the reference")
    parser.add_argument("--steps", type=int, default=None,
                        help="denoising steps for stream/generate/windows (default: stream 2, generate 10, "
                        "windows 2)")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    parser.add_argument("--memory-limit", type=float, default=None, metavar="GB",
                        help="stop a point whose resident memory passes this; it is reported as out of memory (the "
                        "auto and fallback variants instead fail their allocations past it, on the device under cuda)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="fp32 (default), fp16 or bf16")
    args = parser.parse_args(argv)
    variants = args.variants or list(DEFAULT_VARIANTS.get(args.stage, VARIANTS[args.stage]))
    unknown = [v for v in variants if v not in VARIANTS[args.stage]]
    if unknown:
        parser.error(f"--variants for {args.stage} must be among {', '.join(VARIANTS[args.stage])}; got {unknown}")
    steps = args.steps if args.steps is not None else DEFAULT_STEPS.get(args.stage, 0)
    limit = None if args.memory_limit is None else int(args.memory_limit * 1e9)
    rows = run_suite(args.stage, args.seconds, variants, steps, limit, args.device, args.dtype)
    print(to_markdown(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    import logging

    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    sys.exit(main())
