"""What each benchmark point runs: one stage, one variant, on randomly initialised components (cost depends only
on shapes): audioldm-s's, or for the whole-pipeline stages the architecture the point names. Each function returns
(output, seconds taken, boundaries where a seam could show)."""

from __future__ import annotations

import os
import tempfile
import time

import torch

from ..config import TilingConfig
from ..constants import LATENT_FRAMES_PER_SECOND, MEL_FRAMES_PER_SECOND
from ..testing.architectures import ARCHITECTURES, random_pipeline
from .audiosr import run_audiosr
from .device import Target

PROMPT = "soft rain on leaves"


def cap_allocator(target: Target) -> None:
    """Make this process's allocations past ``target.memory_limit`` bytes fail, as on a device of that size: on
    CUDA the caching allocator's share of the device, on the host the data segment's rlimit (what is left under the
    limit now, as more data segment). Without a limit only the device's real size binds."""
    import resource

    import torch

    from ..memory import process_sizes

    limit = target.memory_limit
    if limit is None:
        return
    device = torch.device(target.device)
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, limit / total), device)
        return
    sizes = process_sizes()
    soft = sizes["VmData"] + max(0, limit - sizes["VmRSS"])
    _, hard = resource.getrlimit(resource.RLIMIT_DATA)
    resource.setrlimit(resource.RLIMIT_DATA, (soft if hard == resource.RLIM_INFINITY else min(soft, hard), hard))


def unit_scale_activations(module: torch.nn.Module, example: torch.Tensor) -> None:
    """Rescale each convolution of ``module`` so that its output has unit standard deviation on ``example``, in
    forward order (layer-sequential unit variance, Mishkin and Matas 2016).

    Randomly initialised HiFi-GAN weights shrink the signal at every layer (outputs of order 1e-9 at the end), which
    a trained vocoder does not: in float16 such activations underflow to zero. Rescaled, the random vocoder runs at
    a trained one's scale, which is what a precision measurement needs."""
    def rescale(conv, inputs, output):
        std = output.float().std().clamp_min(1e-12)
        conv.weight.data /= std
        if conv.bias is not None:
            conv.bias.data /= std
        return output / std

    hooks = [m.register_forward_hook(rescale) for m in module.modules()
             if isinstance(m, (torch.nn.Conv1d, torch.nn.ConvTranspose1d))]
    try:
        with torch.no_grad():
            module(example)
    finally:
        for hook in hooks:
            hook.remove()


def audioldm_vae(target: Target):
    """The audioldm-s VAE, randomly initialised, on the target's device and dtype."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(**ARCHITECTURES["audioldm-s"].vae).eval().to(target.device)
    # diffusers warns on every dtype cast of a model (naming no module here), so cast only when there is one to do
    return vae if target.dtype == torch.float32 else vae.to(target.dtype)


def audioldm_pipeline(target: Target):
    pipe = random_pipeline(target.model, seed=0, dtype=target.dtype).to(target.device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def diffusers_seams(vae, frames: int) -> list[int]:
    """Where diffusers' AutoencoderKL.tiled_decode crops its blended rows: every ``row_limit`` output frames."""
    size = vae.tile_sample_min_size
    size = size[0] if isinstance(size, (list, tuple)) else size
    row_limit = size - int(size * vae.tile_overlap_factor)
    return list(range(row_limit, frames, row_limit))


def all_seams(positions: dict[str, list[float]]) -> list[float]:
    return sorted({t for times in positions.values() for t in times})


def tiling_for(variant: str, **fields) -> TilingConfig:
    """``exact``, ``fast`` or ``exact-<store>``: the VAE mode and where exact mode keeps its paused tiles (other
    variant names tile in exact mode with ``store="auto"``)."""
    mode, _, store = variant.partition("-")
    return TilingConfig(mode=mode if mode in ("exact", "fast") else "exact", store=store or "auto",
                        show_progress=False, **fields)


def run_decode(target: Target, variant: str, seconds: float, steps: int):
    from ..vae import decode_tiles, tiled_decode

    vae = audioldm_vae(target)
    latents = torch.randn(1, 8, int(seconds * LATENT_FRAMES_PER_SECOND), 16).to(target.device, target.dtype)
    config = tiling_for(variant, enabled=True)
    if variant in ("auto", "fallback"):
        config = config.replace(enabled="auto", memory_budget=10**15 if variant == "fallback" else None)
        cap_allocator(target)
    start = time.perf_counter()
    if variant == "untiled":
        out = vae.decode(latents).sample
    elif variant == "diffusers":
        vae.enable_tiling()
        out = vae.decode(latents).sample
    else:
        out = tiled_decode(vae, latents, config)
    elapsed = target.elapsed(start)
    factor = out.shape[2] // latents.shape[2]
    # Seams are looked for where this variant's tiles meet (untiled: where the tiled variants' would).
    seams = diffusers_seams(vae, out.shape[2]) if variant == "diffusers" else \
        [t.core_start * factor for t in decode_tiles(vae, latents, config)[1:]]
    return out, elapsed, seams


def run_encode(target: Target, variant: str, seconds: float, steps: int):
    from ..vae import encode_tiles, tiled_encode

    vae = audioldm_vae(target)
    mel = (torch.randn(1, 1, int(seconds * MEL_FRAMES_PER_SECOND), 64) - 4).to(target.device, target.dtype)
    config = TilingConfig(enabled=True, mode=variant if variant in ("exact", "fast") else "exact", show_progress=False)
    start = time.perf_counter()
    if variant == "untiled":
        out = vae.encode(mel).latent_dist.mean
    elif variant == "diffusers":
        vae.enable_tiling()
        out = vae.encode(mel).latent_dist.mean
    else:
        out = tiled_encode(vae, mel, config).mean
    elapsed = target.elapsed(start)
    factor = mel.shape[2] // out.shape[2]  # mel frames per latent frame
    seams = [t.core_start // factor for t in encode_tiles(vae, mel, config)[1:]]
    return out, elapsed, seams


def run_vocode(target: Target, variant: str, seconds: float, steps: int):
    from transformers import SpeechT5HifiGan, SpeechT5HifiGanConfig

    from ..vocoder import chunked_vocode, hifigan_channels_last, plan_chunks

    vocoder = SpeechT5HifiGan(SpeechT5HifiGanConfig(**ARCHITECTURES["audioldm-s"].vocoder)).eval()
    vocoder = vocoder.to(target.device, target.dtype)
    mel = torch.randn(1, int(seconds * MEL_FRAMES_PER_SECOND), 64).to(target.device, target.dtype)
    config = TilingConfig(show_progress=False)
    start = time.perf_counter()
    if variant == "one-pass":
        out = vocoder(mel)
    elif variant == "channels-last":
        out = hifigan_channels_last(vocoder, mel)
    else:
        out = chunked_vocode(vocoder, mel, config)
    elapsed = target.elapsed(start)
    seams = [c.core_start / MEL_FRAMES_PER_SECOND for c in plan_chunks(vocoder, mel, mel.shape[1], config)[1:]]
    return out, elapsed, seams


def run_generate(target: Target, variant: str, seconds: float, steps: int):
    pipe = audioldm_pipeline(target)
    # windows, tiled decode (exact, or fast for windowed-fast) and chunked vocoder; else the parent's single passes
    windowed = variant.startswith("windowed")
    config = TilingConfig(windowed=windowed, enabled=windowed, mode="fast" if variant.endswith("fast") else "exact",
                          show_progress=False)
    start = time.perf_counter()
    out = pipe(PROMPT, audio_length_in_s=seconds, num_inference_steps=steps,
               generator=torch.Generator().manual_seed(0), output_type="pt", tiling=config).audios
    elapsed = target.elapsed(start)
    return out, elapsed, all_seams(pipe.seam_positions(seconds, config.replace(windowed=True, enabled=True)))


def run_windows(target: Target, variant: str, seconds: float, steps: int):
    pipe = audioldm_pipeline(target)
    config = TilingConfig(window_batch_size=int(variant.split("-")[1]), show_progress=False)
    start = time.perf_counter()
    out = pipe(PROMPT, audio_length_in_s=seconds, num_inference_steps=steps,
               generator=torch.Generator().manual_seed(0), output_type="latent", tiling=config).audios
    return out, target.elapsed(start), []


def run_stream(target: Target, variant: str, seconds: float, steps: int):
    """The command line's path: the pipeline streamed into a WAV file (VAE mode ``variant``)."""
    import soundfile

    from ..render import render_to_wav

    pipe = audioldm_pipeline(target)
    config = tiling_for(variant)
    with tempfile.TemporaryDirectory() as tmp:
        wav = os.path.join(tmp, "stream.wav")
        start = time.perf_counter()
        render_to_wav(pipe, wav, PROMPT, audio_length_in_s=seconds, num_inference_steps=steps,
                      generator=torch.Generator().manual_seed(0), tiling=config)
        elapsed = target.elapsed(start)
        out = torch.from_numpy(soundfile.read(wav, dtype="float32")[0])
    return out, elapsed, all_seams(pipe.seam_positions(seconds, config))


def run_live(target: Target, variant: str, seconds: float, steps: int):
    """A render handed out in pieces, timed to its first piece and to its end: ``windowed`` (``pipe.stream``, all
    windows denoised together, then the streamed decode and vocoder), ``progressive`` (``pipe.live``), or
    ``first-piece`` (``pipe.live`` stopped after its first piece: the wait before any audio)."""
    from ..seams import live_seams

    pipe = audioldm_pipeline(target)
    config = TilingConfig(show_progress=False)
    arguments = {"audio_length_in_s": seconds, "num_inference_steps": steps, "tiling": config,
                 "generator": torch.Generator().manual_seed(0)}
    start = time.perf_counter()
    if variant == "windowed":
        pieces = pipe.stream(PROMPT, **arguments)
        seams = all_seams(pipe.seam_positions(seconds, config))
    else:
        pieces = pipe.live(PROMPT, **arguments)
        seams = all_seams(live_seams(pipe, seconds, config))
    out, first = [], None
    for piece in pieces:
        out.append(torch.from_numpy(piece))
        if first is None:
            first = target.elapsed(start)
            if variant == "first-piece":
                pieces.close()
                break
    elapsed = target.elapsed(start)
    audio = torch.cat(out, dim=1)
    return audio, elapsed, [s for s in seams if s < audio.shape[1] / pipe.vocoder.config.sampling_rate], {
        "first_audio_s": first, "audio_s": audio.shape[1] / pipe.vocoder.config.sampling_rate}


STAGES = {"decode": run_decode, "encode": run_encode, "vocode": run_vocode, "windows": run_windows,
          "stream": run_stream, "generate": run_generate, "live": run_live, "audiosr": run_audiosr}
