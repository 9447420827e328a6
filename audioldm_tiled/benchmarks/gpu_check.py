"""``audioldm-tiled bench gpu``: every measurement that needs an accelerator, in one prepared command.

GPU time often comes in short slots. The checks run in order of value, each row written to the JSON file as soon
as it exists, and the whole run stops within ``--budget-s`` seconds (a check that would run past it is stopped
and recorded as such, and the rest as skipped):

1. the main job: ``--seconds`` of audio in fp16 with the defaults, wall time split into denoising and
   decode + vocoder, peak device memory;
2. the parent pipeline's single pass on the same components (windowing and tiling off);
3. the VAE decode of the same length: untiled, exact, fast and diffusers' ``enable_tiling``, with SNR against an
   fp32 untiled decode;
4. the vocoder: one pass against chunked, fp16 and bf16, SNR against fp32;
5. the automatic fallback catching a real CUDA out-of-memory error under ``set_per_process_memory_fraction``;
6. a ``--hour-seconds`` fast-mode stream;
7. the main job in fp32.

Components are randomly initialised with the named architecture's shapes: cost depends only on shapes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from ..arguments import positive_int, positive_number
from ..config import TilingConfig
from ..constants import LATENT_FRAMES_PER_SECOND, MEL_FRAMES_PER_SECOND
from ..files import atomic_file
from ..memory import OUT_OF_MEMORY
from ..testing.architectures import ARCHITECTURES, random_pipeline
from .audiosr import device_rows as audiosr_rows
from .device import Device, snr_db
from .runner import environment

PROMPT = "soft rain on leaves"


class CheckTimeout(Exception):
    """The check ran past the time left in the budget."""


class GpuCheck:
    """The checks, sharing one device, one set of settings and the pipelines they build."""

    def __init__(self, args: argparse.Namespace):
        self.args, self.dev = args, Device(args.device)
        self._pipe = None  # one pipeline on the device at a time, rebuilt when the dtype changes

    def pipe(self, dtype: torch.dtype):
        if self._pipe is None or self._pipe.unet.dtype != dtype:
            self._pipe = None  # freed before the next one is built
            self._pipe = random_pipeline(self.args.arch, dtype=dtype).to(self.dev.device)
            self._pipe.set_progress_bar_config(disable=True)
        return self._pipe

    def generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(0)

    def main_job(self, dtype: torch.dtype) -> dict:
        pipe, seconds = self.pipe(dtype), self.args.seconds
        self.dev.reset_peak()
        latents, denoise_s = self.dev.timed(lambda: pipe(
            PROMPT, audio_length_in_s=seconds, num_inference_steps=self.args.steps, generator=self.generator(),
            output_type="latent").audios)
        waves, decode_s = self.dev.timed(lambda: sum(p.shape[1] for p in pipe.stream_latents(latents, seconds)))
        return {"denoise_s": denoise_s, "decode_and_vocoder_s": decode_s, "time_s": denoise_s + decode_s,
                "samples": waves, "peak_bytes": self.dev.peak_bytes()}

    def live(self) -> dict:
        """A live render of ``seconds`` in float16 (float32 on the CPU): the wait for its first piece and its
        real-time factor (seconds of audio per second of rendering; above 1 it keeps ahead of playback)."""
        pipe = self.pipe(torch.float16 if self.dev.cuda else torch.float32)
        self.dev.reset_peak()
        render = pipe.live(PROMPT, audio_length_in_s=self.args.seconds, num_inference_steps=self.args.steps,
                           generator=self.generator())
        start = time.perf_counter()
        first = None
        for _ in render:
            self.dev.sync()
            first = first if first is not None else time.perf_counter() - start
        elapsed = time.perf_counter() - start
        seconds = render.samples / pipe.vocoder.config.sampling_rate
        return {"seconds": seconds, "first_audio_s": first, "time_s": elapsed, "real_time_factor": seconds / elapsed,
                "peak_bytes": self.dev.peak_bytes()}

    def parent_single_pass(self) -> dict:
        pipe = self.pipe(torch.float16 if self.dev.cuda else torch.float32)
        self.dev.reset_peak()
        _, elapsed = self.dev.timed(lambda: pipe(
            PROMPT, audio_length_in_s=self.args.seconds, num_inference_steps=self.args.steps,
            generator=self.generator(), tiling=TilingConfig(enabled=False, windowed=False)))
        return {"time_s": elapsed, "peak_bytes": self.dev.peak_bytes()}

    def decode(self) -> dict:
        from ..vae import tiled_decode

        dtype = torch.float16 if self.dev.cuda else torch.float32
        vae = self.pipe(dtype).vae
        frames = int(self.args.seconds * LATENT_FRAMES_PER_SECOND)
        latents = torch.randn(1, vae.config.latent_channels, frames, 16, generator=self.generator())
        row = {}
        with torch.no_grad():
            try:  # the whole-sequence attention may not fit in float32 at long lengths: then no SNR column
                reference = vae.float().decode(latents.to(self.dev.device)).sample.cpu()
            except OUT_OF_MEMORY:
                reference, row["reference"] = None, "fp32 untiled decode: out of memory"
            vae.to(dtype)
            x = latents.to(self.dev.device, dtype)
            variants = {
                "untiled": lambda: vae.decode(x).sample,
                "exact": lambda: tiled_decode(vae, x, TilingConfig(enabled=True, show_progress=False)),
                # the paused tiles in pinned host memory: device memory that does not grow with the length
                "exact-host": lambda: tiled_decode(vae, x, TilingConfig(enabled=True, store="host",
                                                                        show_progress=False)),
                "fast": lambda: tiled_decode(vae, x, TilingConfig(enabled=True, mode="fast", show_progress=False)),
                "diffusers": lambda: _diffusers_tiled(vae, x),
            }
            for name, run in variants.items():
                self.dev.reset_peak()
                try:
                    out, elapsed = self.dev.timed(run)
                except OUT_OF_MEMORY:
                    row[name] = {"error": "out of memory"}
                    continue
                row[name] = {"time_s": elapsed, "peak_bytes": self.dev.peak_bytes()}
                if reference is not None:
                    row[name]["snr_db_vs_fp32_untiled"] = snr_db(out, reference)
                del out
        return row

    def decode_bfloat16(self) -> dict:
        """A bfloat16 VAE's exact tiled decode with each ``decode_precision``: time, peak memory and SNR against
        the float32 decode of the same (rounded) weights. "float32" is what "auto" picks for bfloat16."""
        from ..vae import tiled_decode

        vae = self.pipe(torch.bfloat16).vae
        frames = int(self.args.seconds * LATENT_FRAMES_PER_SECOND)
        latents = torch.randn(1, vae.config.latent_channels, frames, 16, generator=self.generator())
        x = latents.to(self.dev.device, torch.bfloat16)
        row = {}
        with torch.no_grad():
            reference = tiled_decode(vae, x, TilingConfig(enabled=True, decode_precision="float32",
                                                          show_progress=False)).float().cpu()
            for precision in ("model", "output", "float32"):
                self.dev.reset_peak()
                try:
                    out, elapsed = self.dev.timed(lambda precision=precision: tiled_decode(
                        vae, x, TilingConfig(enabled=True, decode_precision=precision, show_progress=False)))
                except OUT_OF_MEMORY:
                    row[precision] = {"error": "out of memory"}
                    continue
                row[precision] = {"time_s": elapsed, "peak_bytes": self.dev.peak_bytes(),
                                  "snr_db_vs_float32_decode": snr_db(out.float().cpu(), reference)}
                del out
        return row

    def vocoder(self) -> dict:
        """One pass and chunked in float16 and bfloat16 against float32, on a vocoder rescaled to a trained one's
        activation scale (``stages.unit_scale_activations``): random weights would underflow in float16."""
        from transformers import SpeechT5HifiGan, SpeechT5HifiGanConfig

        from ..vocoder import chunked_vocode
        from .stages import unit_scale_activations

        vocoder = SpeechT5HifiGan(SpeechT5HifiGanConfig(**ARCHITECTURES[self.args.arch].vocoder)).eval()
        mel = torch.randn(1, int(self.args.seconds * MEL_FRAMES_PER_SECOND), vocoder.config.model_in_dim,
                          generator=self.generator()) * 2 - 5  # about a log-mel's level and spread
        unit_scale_activations(vocoder, mel[:, :200])
        vocoder, mel = vocoder.to(self.dev.device), mel.to(self.dev.device)
        row = {}
        with torch.no_grad():
            reference = vocoder(mel).cpu()
            for dtype in (torch.float16, torch.bfloat16):
                vocoder.to(dtype)
                x = mel.to(dtype)
                chunked = lambda x=x: chunked_vocode(vocoder, x, TilingConfig(show_progress=False))  # noqa: E731
                for name, run in (("one-pass", lambda x=x: vocoder(x)), ("chunked", chunked)):
                    self.dev.reset_peak()
                    out, elapsed = self.dev.timed(run)
                    row[f"{name}-{str(dtype).split('.')[-1]}"] = {
                        "time_s": elapsed, "peak_bytes": self.dev.peak_bytes(),
                        "snr_db_vs_fp32": snr_db(out, reference), "peak_abs": float(out.abs().max())}
        return row

    def fallback(self) -> dict:
        """An untiled decode told it fits, under a memory fraction it cannot fit: the error must be caught and the
        decode retried in tiles."""
        if not self.dev.cuda:
            return {"skipped": "needs CUDA (torch.cuda.set_per_process_memory_fraction)"}
        from ..vae import tiled_decode
        from ..vae.budget import UNTILED_DECODE_PEAK_FACTOR, untiled_bytes
        from ..vae.dispatch import decode_job

        vae = self.pipe(torch.float16).vae
        latents = torch.randn(1, 8, int(self.args.seconds * LATENT_FRAMES_PER_SECOND), 16,
                              generator=self.generator()).to(self.dev.device, torch.float16)
        needed = untiled_bytes(decode_job(vae).tasks, latents, UNTILED_DECODE_PEAK_FACTOR)
        total = torch.cuda.get_device_properties(self.dev.device).total_memory
        # Under the untiled decode's estimated peak, above what exact tiles hold (about 0.42 of it, 1.5 against 3.6
        # widest activations per frame): the untiled attempt must fail and the tiled retry fit.
        cap = torch.cuda.memory_allocated(self.dev.device) + int(0.75 * needed)
        messages = []
        handler = logging.Handler(logging.WARNING)
        handler.emit = lambda record: messages.append(record.getMessage()[:300])
        logging.getLogger("audioldm_tiled").addHandler(handler)
        torch.cuda.set_per_process_memory_fraction(min(1.0, cap / total), self.dev.device)
        try:
            config = TilingConfig(memory_budget=10**15, show_progress=False)  # wrongly says untiled fits
            with torch.no_grad():
                out, elapsed = self.dev.timed(lambda: tiled_decode(vae, latents, config))
                exact = tiled_decode(vae, latents, TilingConfig(enabled=True, show_progress=False))
        finally:
            torch.cuda.set_per_process_memory_fraction(1.0, self.dev.device)
            logging.getLogger("audioldm_tiled").removeHandler(handler)
        return {"cap_bytes": cap, "untiled_estimate_bytes": needed, "time_s": elapsed,
                "caught": any("ran out of memory" in m for m in messages), "warnings": messages,
                "equal_to_exact": bool(torch.equal(out, exact))}

    def hour_stream(self) -> dict:
        import soundfile

        from ..render import render_to_wav

        pipe = self.pipe(torch.float16 if self.dev.cuda else torch.float32)
        self.dev.reset_peak()
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "hour.wav"
            _, elapsed = self.dev.timed(lambda: render_to_wav(
                pipe, path, PROMPT, audio_length_in_s=self.args.hour_seconds, num_inference_steps=self.args.steps,
                generator=self.generator(), tiling=TilingConfig(mode="fast")))
            size, samples = path.stat().st_size, soundfile.info(str(path)).frames
        return {"seconds": self.args.hour_seconds, "time_s": elapsed, "peak_bytes": self.dev.peak_bytes(),
                "wav_bytes": size, "samples": samples}

    def hour_exact_host(self) -> dict:
        """An exact decode of ``hour_seconds`` with the paused tiles in host memory: peak device memory and time.
        Each piece is dropped once counted: the hour's output would not fit where its activations do not."""
        from ..vae import iter_decode

        vae = self.pipe(torch.float16 if self.dev.cuda else torch.float32).vae
        frames = int(self.args.hour_seconds * LATENT_FRAMES_PER_SECOND)
        x = torch.randn(1, vae.config.latent_channels, frames, 16, generator=self.generator())
        x = x.to(self.dev.device, vae.dtype)
        self.dev.reset_peak()
        with torch.no_grad():
            config = TilingConfig(enabled=True, store="host", show_progress=False)
            out, elapsed = self.dev.timed(lambda: sum(piece.shape[2] for piece in iter_decode(vae, x, config)))
        return {"seconds": self.args.hour_seconds, "time_s": elapsed, "peak_bytes": self.dev.peak_bytes(),
                "mel_frames": out}

    def audiosr(self) -> dict:
        """AudioSR against the original package (``benchmarks.audiosr.device_rows``)."""
        self._pipe = None  # the text-to-audio pipeline makes room
        return audiosr_rows(self.dev, "tiny" in self.args.arch, self.args.seconds, self.args.steps)

    def checks(self) -> list[tuple[str, Callable[[], dict]]]:
        return [
            ("main-job-fp16", lambda: self.main_job(torch.float16)),
            ("live-fp16", self.live),
            ("parent-single-pass", self.parent_single_pass),
            ("decode", self.decode),
            ("decode-bf16-precision", self.decode_bfloat16),
            ("vocoder", self.vocoder),
            ("fallback", self.fallback),
            ("hour-stream-fast", self.hour_stream),
            ("hour-exact-host", self.hour_exact_host),
            ("audiosr", self.audiosr),
            ("main-job-fp32", lambda: self.main_job(torch.float32)),
        ]


def _diffusers_tiled(vae, latents: torch.Tensor) -> torch.Tensor:
    vae.enable_tiling()
    try:
        return vae.decode(latents).sample
    finally:
        vae.disable_tiling()


@contextlib.contextmanager
def _time_limit(seconds: float):
    """Raise CheckTimeout in the main thread once ``seconds`` have passed (SIGALRM; Unix only)."""
    def expire(signum, frame):
        raise CheckTimeout(f"stopped after {seconds:.0f} s: the budget was spent")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.001))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _write(path: Path | None, report: dict) -> None:
    """The report so far, replacing the file atomically: a run stopped at any point leaves valid JSON."""
    if path is None:
        return
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(report, indent=1))


def run(args: argparse.Namespace) -> dict:
    start = time.perf_counter()
    check = GpuCheck(args)
    report = {"device": check.dev.name(), "arch": args.arch, "seconds": args.seconds, "steps": args.steps,
              "budget_s": args.budget_s, **environment(), "rows": []}
    _write(args.json, report)
    for name, fn in check.checks():
        left = args.budget_s - (time.perf_counter() - start)
        row = {"check": name}
        if left <= 0:
            row["skipped"] = "the budget was spent"
        else:
            began = time.perf_counter()
            try:
                with _time_limit(left):
                    row.update(fn())
            except CheckTimeout as error:
                row["error"] = str(error)
            except Exception as error:  # noqa: BLE001 - recorded, and the next check still runs
                row["error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:300] if str(error) else ''}"
            row["wall_s"] = time.perf_counter() - began
        report["rows"].append(row)
        _write(args.json, report)
        print(json.dumps(row), flush=True)
    return report


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="audioldm-tiled bench gpu", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget-s", type=positive_number("--budget-s", "seconds"), default=420.0,
                        help="stop within this many seconds (default 420)")
    parser.add_argument("--json", type=Path, default=None, help="write the report here, row by row")
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu to try the command")
    parser.add_argument("--arch", choices=sorted(ARCHITECTURES), default="audioldm-s")
    parser.add_argument("--seconds", type=positive_number("--seconds", "seconds"), default=300.0,
                        help="length of the main job and of the decode and vocoder checks (default 300)")
    parser.add_argument("--hour-seconds", type=positive_number("--hour-seconds", "seconds"), default=3600.0,
                        help="length of the fast-mode stream (default 3600)")
    parser.add_argument("--steps", type=positive_int("--steps"), default=10, help="denoising steps (default 10)")
    args = parser.parse_args(argv)
    if args.json is not None and not args.json.parent.is_dir():
        parser.error(f"--json: folder {str(args.json.parent)!r} does not exist")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available on this machine (--device cpu tries the command)")
    report = run(args)
    failed = [r["check"] for r in report["rows"] if "error" in r]
    if failed:
        print(f"audioldm-tiled bench gpu: {', '.join(failed)} failed or ran out of time", file=sys.stderr)
    return 1 if failed else 0
