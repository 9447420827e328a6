"""Live rendering: a progressive schedule that hands out audio while it denoises, for as long as the caller wants.

Windowed denoising (``denoise.py``) steps every window of the whole length together, so no audio exists before
the last step over the last window. Here window k (``geometry.ProgressiveLayout``) runs all its steps before
window k + 1 starts. Its first ``overlap`` frames are final already, from window k - 1: they are a known region
(``editing.KnownRegion``, as a continuation keeps its input): after every scheduler step they are set to the final
latents noised to the next step's level, with noise drawn once, so the new frames are drawn to fit them; after
the last step they are the final latents exactly. Each window's new frames are then decoded as soon as the
decoder's halo is final (``vae.running``, GroupNorm statistics from the recent past) and vocoded as soon as the
vocoder's context is decoded (``vocoder.vocode_chunk``). Memory is that of one window, whatever the length.

Every window, tile and chunk falls where it falls in any render of any length, and each window's noise is drawn
from the generator in window order, so a render's first N seconds do not depend on how long it runs, bit for bit.
What a render needs to go on after a window (the final latents the next window and tile read, the decoder's
running statistics, the mel the next chunk reads, the generators' states, its position) is a ``LiveState``: save
it, and a render resumed from it (``pipe.live(..., resume=state)``) hands out the same samples as one that never
stopped, also later and with a longer length.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch
from diffusers.utils.torch_utils import randn_tensor
from tqdm.auto import tqdm

from .callbacks import Callbacks
from .denoise import denoise, plan_windows
from .editing import KnownRegion
from .files import atomic_file
from .geometry import Tile
from .plan import LivePlan, render_recipe
from .request import Request
from .timeline import span_mix
from .vae.running import RunningDecoder, RunningStatistics
from .vocoder import vocode_chunk

# Bumped when what a saved state holds changes.
STATE_FORMAT = 1


@dataclass
class LiveState:
    """Where a live render stands after a whole window: what it needs to go on from there bit for bit. Tensors
    live on the CPU; ``save`` and ``load`` keep it in a file."""

    fingerprint: str  # the render it belongs to: request (but its length) and model (``fingerprint``)
    window: int  # the next window to denoise
    samples: int  # samples handed out before it
    generators: list[torch.Tensor]  # each generator's state
    latents: torch.Tensor | None  # final latents the next window and decode tile read, from frame latents_start
    latents_start: int
    statistics: list[list[torch.Tensor]]  # the decoder's running GroupNorm moments (``RunningStatistics``)
    mel: torch.Tensor | None  # decoded mel frames the next vocoder chunk reads, from frame mel_start
    mel_start: int
    text: str | None  # the text in force, for a prompt that changes while rendering

    def save(self, path: str | os.PathLike) -> None:
        """Write the state to ``path`` atomically (an existing state is replaced only once this one is whole)."""
        with atomic_file(path) as tmp:
            torch.save({"format": STATE_FORMAT, **asdict(self)}, tmp)

    @classmethod
    def load(cls, path: str | os.PathLike) -> LiveState:
        """A state written by ``save``; ValueError when the file is not one."""
        try:
            values = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise
        except Exception as error:  # noqa: BLE001 - a truncated or foreign file: say which, not how torch failed
            raise ValueError(f"{os.fspath(path)!r} is not a live render's saved state ({error})") from None
        if not isinstance(values, dict) or values.pop("format", None) != STATE_FORMAT or \
                set(values) != {f.name for f in fields(cls)}:
            raise ValueError(f"{os.fspath(path)!r} is not a live render's saved state of format {STATE_FORMAT}")
        problem = _field_problem(values)
        if problem:
            raise ValueError(f"{os.fspath(path)!r} is a damaged live render state: {problem}")
        return cls(**values)


def _field_problem(values: dict[str, Any]) -> str | None:
    """What is wrong with a saved state's fields by their kinds alone (a file edited or damaged), or None."""
    def count(name):
        return isinstance(values[name], int) and not isinstance(values[name], bool) and values[name] >= 0

    for name in ("window", "samples", "latents_start", "mel_start"):
        if not count(name):
            return f"{name} must be a whole number >= 0, got {values[name]!r}"
    if not isinstance(values["fingerprint"], str) or not (values["text"] is None or isinstance(values["text"], str)):
        return "its fingerprint and text must be texts"
    if not isinstance(values["generators"], list) or not all(isinstance(g, torch.Tensor) and g.dtype == torch.uint8
                                                             for g in values["generators"]):
        return "its generators must be generator states"
    for name, dims in (("latents", 4), ("mel", 3)):
        tensor = values[name]
        if tensor is not None and not (isinstance(tensor, torch.Tensor) and tensor.dim() == dims
                                       and tensor.is_floating_point()):
            return f"{name} must be a {dims}-d float tensor or None"
    if not isinstance(values["statistics"], list) or not all(
            isinstance(layer, list) and all(isinstance(t, torch.Tensor) for t in layer)
            for layer in values["statistics"]):
        return "its statistics must be lists of tensors"
    return None


def fingerprint(pipe, request: Request) -> str:
    """What a saved state must match to be resumed: the request without its length (a render may be resumed
    longer) and the model (its class, component configs and dtype)."""
    hasher = hashlib.sha256(request.replace(audio_length_in_s=None).digest().encode())
    for name in ("unet", "vae", "vocoder"):
        module = getattr(pipe, name)
        config = module.config.to_dict() if hasattr(module.config, "to_dict") else dict(module.config)
        config = {k: v for k, v in config.items() if not k.startswith("_")}  # bookkeeping, in no fixed order
        hasher.update(json.dumps(config, sort_keys=True, default=str).encode())
        hasher.update(str(module.dtype).encode())
    hasher.update(type(pipe).__name__.encode())
    return hasher.hexdigest()


def _on(tensor: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    return None if tensor is None else tensor.to(device)


def _generators(generator) -> list[torch.Generator]:
    return generator if isinstance(generator, list) else [generator]


class LiveRender:
    """A live render's waveform, one piece per window: iterate for float32 arrays (batch, samples), the first
    after one window whatever the length. ``state`` is where the render stands after the last whole window handed
    out. Made by ``pipe.live(...)``."""

    def __init__(self, pipe, plan: LivePlan, request: Request, callbacks: Callbacks, resume: LiveState | None):
        self.pipe, self.plan, self.request, self.callbacks = pipe, plan, request, callbacks
        self.device = pipe._execution_device
        self._generator = request.noise_generator()
        if self._generator is None:  # a seed of its own: the caller's global RNG is theirs
            self._generator = torch.Generator().manual_seed(torch.Generator().seed())
        self._fingerprint = fingerprint(pipe, request)
        self._guidance, self._interrupted = plan.guidance, False  # a callback may change them from step to step
        self._decoder = RunningDecoder(pipe.vae, plan.config, plan.history)
        self._encoded: dict[str | None, dict[str, torch.Tensor]] = {}
        self._text: str | None = None
        self._window, self._samples = 0, 0
        self._latents, self._latents_start = None, 0
        self._mel, self._mel_start = None, 0
        self._bar = None
        self._done = False
        if resume is not None:
            self._restore(resume)
        self._state = self._snapshot()

    # ------------------------------------------------------------------------------------------------ the public side
    @property
    def recipe(self) -> dict[str, Any]:
        """What the render's plan resolved (``plan.render_recipe``): prompt, steps, guidance, seed, ..."""
        return render_recipe(self.pipe, self.request, self.plan)

    @property
    def state(self) -> LiveState:
        """Where the render stands after the last whole window handed out (a last piece cut short to the length
        asked for is not whole: resuming from here makes it again)."""
        return self._state

    @property
    def sample_rate(self) -> int:
        return self.pipe.vocoder.config.sampling_rate

    @property
    def samples(self) -> int:
        """Samples handed out so far."""
        return self._samples

    def __iter__(self) -> Iterator[np.ndarray]:
        return self

    def __next__(self) -> np.ndarray:
        keep = self.plan.keep
        if self._done or (keep is not None and self._samples >= keep) or self._interrupted:
            self.close()
            raise StopIteration
        if self._bar is None:
            self._bar = self._progress_bar()
        rate = self.sample_rate
        try:
            with torch.no_grad():
                wave = self._next_window().cpu().float().numpy()
        except BaseException:
            self.close()  # a window left half done cannot be gone on from; its state is the last whole one's
            raise
        whole = keep is None or self._samples + wave.shape[1] <= keep
        if not whole:
            wave = wave[:, : keep - self._samples]
        self._samples += wave.shape[1]
        if whole:
            self._state = self._snapshot()
        self._bar.update(round(wave.shape[1] / rate, 2))
        return wave

    def close(self) -> None:
        """End the render: close its progress bar and offload the models (as a call does at its end). Also what
        leaving a ``for`` loop over it early does, once the render is garbage collected."""
        if not self._done:
            self._done = True
            if self._bar is not None:
                self._bar.close()
            self.pipe.maybe_free_model_hooks()

    def __del__(self) -> None:
        if not getattr(self, "_done", True):
            self.close()

    def _progress_bar(self):
        """Seconds of audio handed out (of those asked for)."""
        keep, rate = self.plan.keep, self.sample_rate
        config = {"desc": "live", **getattr(self.pipe, "_progress_bar_config", {})}
        return tqdm(total=None if keep is None else round(keep / rate, 2), initial=round(self._samples / rate, 2),
                    unit="s", bar_format="{desc}: {n:.1f}/{total_fmt} s of audio [{elapsed}, {rate_fmt}]"
                    if keep is not None else "{desc}: {n:.1f} s of audio [{elapsed}, {rate_fmt}]", **config)

    # --------------------------------------------------------------------------------------------------- one window
    def _next_window(self) -> torch.Tensor:
        """Denoise window k, decode what it made final, vocode what that decoded: the samples of chunk k."""
        layout, k = self.plan.layout, self._window
        window = layout.denoised(k)
        latents = self._denoise(window)
        if self._latents is None:
            held, held_start = latents, window.start
        else:
            held = torch.cat([self._latents, latents[:, :, window.core_start - window.start :]], dim=2)
            held_start = self._latents_start
        tile = layout.decoded(k)
        mel = self._decoder.decode(held[:, :, tile.start - held_start : tile.stop - held_start],
                                   (tile.core_start - tile.start, tile.core_stop - tile.start),
                                   (tile.core_start, tile.core_stop)).squeeze(1)
        kept = window.stop - layout.kept_frames
        self._latents, self._latents_start = held[:, :, max(0, kept - held_start) :], max(held_start, kept)

        if self._mel is not None:
            mel = torch.cat([self._mel.to(mel.dtype), mel], dim=1)
        chunk = layout.vocoded(k)
        wave = vocode_chunk(self.pipe.vocoder, mel[:, chunk.start - self._mel_start : chunk.stop - self._mel_start],
                            chunk, self.plan.config)
        following = layout.vocoded(k + 1).start
        self._mel, self._mel_start = mel[:, following - self._mel_start :], following
        self._window += 1
        return wave

    def _denoise(self, window: Tile) -> torch.Tensor:
        """Window ``window`` denoised from fresh noise, its frames before ``core_start`` a known region."""
        pipe, plan, generator = self.pipe, self.plan, self._generator
        conditioning = self._conditioning(window)
        pipe.scheduler.set_timesteps(plan.steps, device=self.device)  # also resets a multistep scheduler's history
        timesteps = pipe.scheduler.timesteps
        pipe._num_timesteps = len(timesteps)
        shape = (plan.batch, pipe.unet.config.in_channels, window.length, pipe.geometry.latent_rows)
        dtype = pipe.unet.dtype
        latents = randn_tensor(shape, generator=generator, device=self.device, dtype=dtype)
        latents = latents * pipe.scheduler.init_noise_sigma
        known = None
        if window.core_start > window.start:
            final = self._latents[:, :, window.start - self._latents_start : window.core_start - self._latents_start]
            region = torch.cat([final, final.new_zeros(*shape[:2], window.stop - window.core_start, shape[3])], 2)
            mask = torch.arange(window.length) < window.core_start - window.start
            noise = randn_tensor(shape, generator=generator, device=self.device, dtype=dtype)
            known = KnownRegion(region, mask, noise, pipe.scheduler)
            latents = known.replace(latents, timesteps[0])
        single = plan_windows(window.length, plan.config.replace(windowed=False))
        # The guidance and the interrupt flag are this render's: the pipeline holds them only while this window is
        # denoised (diffusers' callbacks read and set them there), so another render or call on the same pipeline,
        # between this one's pieces, changes nothing of it.
        pipe._guidance_scale, pipe._interrupt = self._guidance, False
        try:
            return denoise(pipe.unet, pipe.scheduler, latents, lambda: (conditioning, pipe._guidance_scale), single,
                           pipe.prepare_extra_step_kwargs(generator, self.request.eta), 1,
                           lambda total: tqdm(total=total, disable=True),
                           self.callbacks.step_function(pipe, self._encoded[self._text]),
                           self.request.cross_attention_kwargs, timesteps, interrupted=lambda: False, known=known)
        finally:
            self._guidance, self._interrupted = pipe._guidance_scale, pipe._interrupt

    # ------------------------------------------------------------------------------------------------- conditioning
    def _conditioning(self, window: Tile):
        """The family's UNet conditioning for ``window``: the prompt's, a timeline's mix over its frames, or the
        text a changing prompt gives at the window's first new frame."""
        pipe, plan, request = self.pipe, self.plan, self.request
        geometry = pipe.geometry
        frame_seconds = geometry.latent_frame_seconds
        if plan.changing is not None:
            self._text = self._read_text(window.core_start * frame_seconds)
        if self._text not in self._encoded:
            prompt = plan.prompt if plan.changing is None else self._text
            if plan.changing is not None:
                pipe.check_prompt_inputs(prompt, window.length * frame_seconds, geometry.mel_frame_seconds, 1,
                                          request.negative_prompt, None, request.negative_prompt_embeds,
                                          **request.family_inputs)
            self._encoded = {self._text: pipe.encode_conditioning(
                prompt, self.device, request.num_waveforms_per_prompt, plan.guided, plan.negative_prompt,
                request.prompt_embeds, request.negative_prompt_embeds, **request.family_inputs)}
        mix = None
        if plan.timeline is not None:  # checked once, for the whole timeline, by the plan
            mix = span_mix(plan.timeline, window.start, window.stop, 1 / frame_seconds)[None]
        return pipe.unet_conditioning(self._encoded[self._text], plan.groups, pipe.do_classifier_free_guidance,
                                       mix).for_windows(1)

    def _read_text(self, seconds: float) -> str:
        """The changing prompt's text at ``seconds``: a function's value there, or the last text in the queue
        (the one in force when the queue holds nothing new)."""
        source = self.plan.changing
        text = self._text
        if callable(source):
            text = source(seconds)
        else:
            while True:
                try:
                    text = source.get_nowait()
                except Exception as error:  # noqa: BLE001 - queue.Empty, or the caller's queue type's own
                    if type(error).__name__ not in ("Empty", "QueueEmpty"):
                        raise
                    break
        if not isinstance(text, str) or not text.strip():
            what = "the prompt function returned" if callable(source) else "the prompt queue held"
            raise ValueError(f"`prompt`: {what} {text!r} at {seconds:g} s; it must give a text describing the sound")
        return text

    # ------------------------------------------------------------------------------------------------------- state
    def _snapshot(self) -> LiveState:
        return LiveState(
            fingerprint=self._fingerprint, window=self._window, samples=self._samples,
            generators=[g.get_state() for g in _generators(self._generator)],
            latents=None if self._latents is None else self._latents.to("cpu", copy=True),
            latents_start=self._latents_start, statistics=self._decoder.statistics.to_state(),
            mel=None if self._mel is None else self._mel.to("cpu", copy=True), mel_start=self._mel_start,
            text=self._text)

    def _restore(self, state: LiveState) -> None:
        if not isinstance(state, LiveState):
            raise TypeError(f"`resume` must be a LiveState (LiveRender.state, LiveState.load), got "
                            f"{type(state).__name__}")
        if state.fingerprint != self._fingerprint:
            raise ValueError("`resume`: the saved state belongs to another render: the prompt, seed, steps, "
                             "guidance, tiling or model differ (only the length may change)")
        generators = _generators(self._generator)
        if len(state.generators) != len(generators):
            raise ValueError(f"`resume`: the saved state has {len(state.generators)} generator(s), the call "
                             f"{len(generators)}")
        problem = self._state_problem(state)
        if problem:
            raise ValueError(f"`resume`: the saved state is damaged: {problem}")
        for generator, saved in zip(generators, state.generators):
            generator.set_state(saved)
        self._window, self._samples = state.window, state.samples
        self._latents, self._latents_start = _on(state.latents, self.device), state.latents_start
        self._mel, self._mel_start = _on(state.mel, self.device), state.mel_start
        try:
            self._decoder.statistics = RunningStatistics.from_state(self.plan.history, state.statistics)
        except (ValueError, TypeError, IndexError, RuntimeError) as error:
            raise ValueError(f"`resume`: the saved state is damaged: its GroupNorm statistics ({error})") from None
        self._text = state.text

    def _state_problem(self, state: LiveState) -> str | None:
        """Where a state of this render's fingerprint disagrees with the layout it was saved under (a file
        edited or damaged after it was written), or None. After window k - 1: the held latents end where it
        ended, the held mel where decode tile k - 1 ended, and the samples where vocoder chunk k - 1 ended."""
        k, layout, geometry = state.window, self.plan.layout, self.pipe.geometry
        if k == 0:
            return None if state.latents is None and state.mel is None and state.samples == 0 else \
                "window 0 holds nothing yet"
        if state.latents is None or state.mel is None:
            return f"window {k} needs the latents and mel of the window before it"
        latents, mel = state.latents.shape, state.mel.shape
        expected = (self.plan.batch, self.pipe.unet.config.in_channels, geometry.latent_rows)
        if (latents[0], latents[1], latents[3]) != expected or state.latents_start + latents[2] != \
                layout.denoised(k - 1).stop:
            return f"its latents {tuple(latents)} from frame {state.latents_start} do not fit window {k}"
        if (mel[0], mel[2]) != (self.plan.batch, geometry.mel_bands) or \
                state.mel_start + mel[1] != geometry.vae_factor * layout.decoded(k - 1).core_stop:
            return f"its mel {tuple(mel)} from frame {state.mel_start} does not fit window {k}"
        if state.samples != layout.vocoded(k - 1).core_stop * geometry.mel_hop:
            return f"{state.samples} samples handed out do not fit window {k}"
        return None
