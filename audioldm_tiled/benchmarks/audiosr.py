"""``bench audiosr``: super-resolution to 48 kHz of a recording of any length, this project's path against the
original ``audiosr`` package, each with random weights of the architecture the point names (``audiosr``: the
public checkpoints' shapes).

- ``tiled``: what ``audioldm-tiled upsample`` runs: the recording read from a file, the passes, windowed denoising,
  the exact tiled encode and decode and the chunked vocoder, streamed into a 48 kHz WAV file; ``tiled-disk`` the
  same always in tiles, with exact mode's paused tiles in temporary files (what ``auto`` turns to where memory
  runs out): the memory that does not grow with the length; ``tiled-fast`` the same in fast mode (``upsample
  --mode fast``), whose time, unlike exact mode's attention over the whole recording, grows linearly;
- ``original``: the package's ``LatentDiffusion.generate_batch`` on the batch its ``make_batch_for_super_resolution``
  makes (``testing.audiosr_original``), the whole recording at once, as its command line runs it.

The output returned for the report is the first second only: the two are made with different random weights, so
they are not compared, and holding a whole hour to hand back would be measured as the render's memory.
"""

from __future__ import annotations

import os
import tempfile
import time

import numpy as np
import torch

SAMPLE_RATE = 48000
SEED = 0


def band_limited_blocks(seconds: float, rows: int = 1 << 20):
    """``seconds`` of 48 kHz noise with nothing above 8 kHz and a tone: a 16 kHz render's content, float32 blocks
    (the same samples whatever ``rows``)."""
    from scipy import signal

    samples = max(1, round(seconds * SAMPLE_RATE))
    rng = np.random.default_rng(SEED)
    sos = signal.butter(12, 8000 / (SAMPLE_RATE / 2), output="sos")
    state = np.zeros((sos.shape[0], 2))
    for lo in range(0, samples, rows):
        n = min(rows, samples - lo)
        noise, state = signal.sosfilt(sos, rng.standard_normal(n), zi=state)
        tone = 0.3 * np.sin(2 * np.pi * 440 * np.arange(lo, lo + n) / SAMPLE_RATE)
        yield (0.1 * noise + tone).astype(np.float32)


def band_limited_recording(seconds: float) -> np.ndarray:
    return np.concatenate(list(band_limited_blocks(seconds)))


def run_audiosr(target, variant: str, seconds: float, steps: int):
    from ..config import TilingConfig

    if variant in ("tiled", "tiled-disk", "tiled-fast"):
        # tiles and chunks of 10.24 s: the budget would otherwise size them, larger the more memory is free
        tiles = {"enabled": True, "tile_frames": 128, "vocoder_chunk_frames": 1024}
        settings = {"tiled": {}, "tiled-disk": {**tiles, "store": "disk"}, "tiled-fast": {**tiles, "mode": "fast"}}
        return _tiled(target, seconds, steps, TilingConfig(show_progress=False, **settings[variant]))
    if variant == "original":
        return _original(target, seconds, steps)
    raise ValueError(f"audiosr's variants are tiled, tiled-disk, tiled-fast and original, got {variant!r}")


def _tiled(target, seconds: float, steps: int, tiling):
    import soundfile as sf

    from ..audiosr.command import write_pieces
    from ..loading import load_pipeline

    pipe = load_pipeline(f"random:{target.model}", target.dtype, target.device)
    pipe.set_progress_bar_config(disable=True)
    with tempfile.TemporaryDirectory() as folder:
        source, output = os.path.join(folder, "in.wav"), os.path.join(folder, "out.wav")
        with sf.SoundFile(source, "w", SAMPLE_RATE, 1, subtype="FLOAT") as file:  # written in blocks: not held
            for block in band_limited_blocks(seconds):
                file.write(block)
        start = time.perf_counter()
        pieces = pipe.upsampled(source, num_inference_steps=steps, seed=SEED,
                                generator=torch.Generator().manual_seed(SEED), tiling=tiling)
        frames = write_pieces(pieces, output, 1)
        elapsed = target.elapsed(start)
        first, _ = sf.read(output, frames=SAMPLE_RATE, dtype="float32")
    return torch.from_numpy(first), elapsed, [], {"samples_written": frames}


def _original(target, seconds: float, steps: int):
    from ..audiosr.components import ARCHITECTURES
    from ..testing.audiosr_original import latent_diffusion, original_batch

    model = latent_diffusion(ARCHITECTURES[target.model], seed=SEED).to(target.device, target.dtype)
    model.device = torch.device(target.device)  # where generate_batch puts the batch (built for the CPU)
    recording = band_limited_recording(seconds)
    start = time.perf_counter()
    batch = original_batch(recording, seed=SEED)
    torch.manual_seed(SEED)
    waveform = model.generate_batch(batch, ddim_steps=steps, unconditional_guidance_scale=3.5)
    elapsed = target.elapsed(start)
    out = torch.as_tensor(np.asarray(waveform))[0, 0, :SAMPLE_RATE].float()
    return out, elapsed, [], {"samples_written": min(int(np.asarray(waveform).shape[-1]), recording.shape[0])}


def device_rows(dev, tiny: bool, tiny_seconds: float, steps: int = 2) -> dict:
    """``bench gpu``'s AudioSR rows: this project's path (float16 on CUDA) and the original's (float32, as its
    command line runs) at 10.24 and 60 s, or with the tiny shapes at ``tiny_seconds``: time, time per audio second and
    peak device memory; where the original's modules are not installed or run out of memory, the row says so."""
    import gc
    from dataclasses import replace

    from ..memory import OUT_OF_MEMORY
    from ..testing.audiosr_original import OriginalUnavailable
    from .device import Target

    target = Target(str(dev.device), "fp16" if dev.cuda else "fp32", model="audiosr-tiny" if tiny else "audiosr")
    rows = {}
    for seconds in (tiny_seconds,) if tiny else (10.24, 60.0):
        for variant, where in (("tiled", target), ("original", replace(target, dtype_name="fp32"))):
            key = f"{variant}-{seconds:g}s"
            dev.reset_peak()
            try:
                with torch.inference_mode():
                    _, elapsed, _, extra = run_audiosr(where, variant, seconds, steps)
                rows[key] = {"time_s": elapsed, "time_per_audio_second": elapsed / seconds, "steps": steps,
                             "dtype": where.dtype_name, **extra}
                if dev.cuda:  # on the CPU the process's peak would hold every earlier row's
                    rows[key]["peak_bytes"] = dev.peak_bytes()
            except OriginalUnavailable as error:
                rows[key] = {"skipped": str(error)}
            except OUT_OF_MEMORY as error:
                rows[key] = {"error": f"out of memory: {str(error)[:200]}"}
            gc.collect()
    return rows
