"""What to render: one frozen ``Request`` that every front door builds (the Python call, ``stream()``, ``live()``,
the command line, ``batch``, the studio), and the only home of the defaults and the rules between the arguments.

A request knows nothing of the model: what depends on it (the family's own checks, the latent geometry, memory) is
decided once per render by ``plan.RenderPlan``. The field names are diffusers' call arguments, so a call's
arguments become a request by name.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import math
import numbers
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import torch

from .config import TilingConfig
from .constants import COMMAND_SECONDS, HOP_LENGTH, MAX_SEED, SAMPLE_RATE, VAE_FACTOR
from .distributed import check_ranks_argument
from .editing import edit_geometry, seconds_argument
from .timeline import Segment, is_timeline, parse_timeline

KINDS = ("generate", "restyle", "extend", "regenerate", "loop")
# Beyond this the guided noise prediction overflows float32 into NaN audio (the models use 1 to 20).
MAX_GUIDANCE = 1000.0
# How far audio-to-audio takes its input towards noise when the caller does not say.
DEFAULT_STRENGTH = 0.5


def call_signature(handler: str) -> Callable[[Callable], Callable]:
    """Decorates a pipeline's ``__call__`` whose body is only its signature and documentation: a call's arguments
    are bound to that signature, its defaults filled in, and handed by name to the method named ``handler``."""

    def decorate(signature_only: Callable) -> Callable:
        signature = inspect.signature(signature_only)

        @functools.wraps(signature_only)
        def call(self, *args: Any, **kwargs: Any) -> Any:
            try:
                bound = signature.bind(self, *args, **kwargs)
            except TypeError as error:
                raise TypeError(f"{type(self).__name__}.__call__(): {error}") from None
            bound.apply_defaults()
            arguments = dict(bound.arguments)
            del arguments["self"]
            return getattr(self, handler)(arguments)

        return call

    return decorate


def is_changing_prompt(prompt: Any) -> bool:
    """A prompt read anew at every window of a live render: a function of seconds, or a queue of texts."""
    return callable(prompt) or hasattr(prompt, "get_nowait")


def named_for(error: Exception, names: Mapping[str, str]) -> str:
    """``error``'s message with each `argument` called what a front door calls it (an option, a job field, a label
    of the page); the messages name the call's arguments in backticks."""
    message = str(error)
    for argument, name in names.items():
        message = message.replace(f"`{argument}`", name)
    return message


def check_seed(seed: object, name: str = "seed") -> int:
    """A seed as torch takes it: a whole number from 0 to ``MAX_SEED`` (a whole float from a JSON or a form too)."""
    whole = isinstance(seed, numbers.Integral) or (
        isinstance(seed, float) and math.isfinite(seed) and seed.is_integer())
    if isinstance(seed, bool) or not whole or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"`{name}` must be a whole number from 0 to {MAX_SEED}, got {seed!r}")
    return int(seed)


def _positive_integer(name: str, value: object) -> None:
    """An int or numpy integer >= 1 (a bool is no count)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer, got {value!r}")


def source_seconds(audio: Any, sample_rate: int | None) -> float | None:
    """The length of ``audio`` in seconds where it can be known without decoding it: a file's header, an array's
    length at ``sample_rate`` (given); None otherwise."""
    if isinstance(audio, (str, os.PathLike)):
        import soundfile

        try:
            info = soundfile.info(os.fspath(audio))
        except Exception:  # noqa: BLE001 - an unreadable input is reported, with its path, when it is read
            return None
        return info.frames / info.samplerate
    if sample_rate and isinstance(audio, (np.ndarray, torch.Tensor)) and audio.ndim in (1, 2):
        return audio.shape[0] / sample_rate
    return None


@dataclass(frozen=True, eq=False)
class Request:
    """One render: what to make (prompt or timeline, length, source audio and the kind of edit), how (steps,
    guidance, seed, tiling) and where (one process, or shared over ranks when asked). Validated when built; a
    ``ValueError`` names the argument and what is allowed."""

    prompt: str | list | None = None  # a text, texts (one waveform each), or a timeline of (start_s, [end_s,] text)
    audio_length_in_s: float | None = None  # None: the family's training window, or the input's length
    num_inference_steps: int | None = None  # None: the family's default (AudioLDM 10, AudioLDM 2, MusicLDM 200)
    guidance_scale: float | None = None  # None: the family's default (AudioLDM 2.5, AudioLDM 2 3.5, MusicLDM 2.0)
    negative_prompt: str | list[str] | None = None  # global along a timeline
    num_waveforms_per_prompt: int | None = 1
    generator: torch.Generator | list[torch.Generator] | None = None  # noise is drawn from it
    seed: int | None = None  # or from a CPU generator seeded with this, 0 to MAX_SEED (the command line's --seed)
    eta: float = 0.0  # DDIM's eta, passed to the scheduler as the parent does
    latents: torch.Tensor | None = None  # the starting noise instead of drawing it
    prompt_embeds: torch.Tensor | None = None
    negative_prompt_embeds: torch.Tensor | None = None
    cross_attention_kwargs: dict[str, Any] | None = None
    audio: Any = None  # source recording: a path soundfile reads, or samples (samples,) / (samples, channels)
    strength: float | None = None  # restyle: how far towards noise the input goes, in (0, 1]; None: 0.5
    loop: bool = False  # a seamless loop: the latent is circular
    extend_s: float | None = None  # continue `audio` by this many seconds
    regenerate: Any = None  # remake these (start_s, end_s) spans of `audio`
    context_s: float | None = None  # seconds of `audio` encoded as context around an edit
    crossfade_s: float | None = None  # each crossfade between original and generated audio; None: 0.25
    tiling: TilingConfig | None = None  # None: the pipeline's `tiling`
    ranks: Any = None  # None: this process alone; "auto": the default process group; or a ProcessGroup
    progressive: bool = False  # live: windows denoised one after another, left to right (``pipe.live``)
    family_inputs: Mapping[str, Any] = field(default_factory=dict)  # arguments only some families take

    def __post_init__(self) -> None:
        if self.num_inference_steps is not None:
            _positive_integer("num_inference_steps", self.num_inference_steps)
            object.__setattr__(self, "num_inference_steps", int(self.num_inference_steps))
        if self.guidance_scale is not None:
            if isinstance(self.guidance_scale, bool) or not isinstance(self.guidance_scale, numbers.Real) \
                    or not math.isfinite(self.guidance_scale) or abs(self.guidance_scale) > MAX_GUIDANCE:
                raise ValueError(f"`guidance_scale` must be a number from {-MAX_GUIDANCE:g} to {MAX_GUIDANCE:g}, got "
                                 f"{self.guidance_scale!r}")
            object.__setattr__(self, "guidance_scale", float(self.guidance_scale))
        waveforms = 1 if self.num_waveforms_per_prompt is None else self.num_waveforms_per_prompt
        _positive_integer("num_waveforms_per_prompt", waveforms)
        object.__setattr__(self, "num_waveforms_per_prompt", int(waveforms))
        if isinstance(self.prompt, (list, tuple)) and not self.prompt:
            raise ValueError("`prompt` is an empty list: give a string, a non-empty list of strings or a timeline")
        if self.tiling is not None and not isinstance(self.tiling, TilingConfig):
            raise TypeError(f"`tiling` must be a TilingConfig or None, got {type(self.tiling).__name__}")
        check_ranks_argument(self.ranks)
        if self.seed is not None:
            object.__setattr__(self, "seed", check_seed(self.seed))
            if self.generator is not None:
                raise ValueError("pass either `seed` or `generator`: the seed makes the generator")
        if self.audio_length_in_s is not None:
            object.__setattr__(self, "audio_length_in_s", seconds_argument("audio_length_in_s", self.audio_length_in_s))
        self._check_kind()
        if not isinstance(self.progressive, bool):
            raise ValueError(f"`progressive` must be True or False, got {self.progressive!r}")
        if self.progressive:
            self._check_progressive()
        elif is_changing_prompt(self.prompt):
            raise ValueError("a `prompt` that changes while rendering (a function of seconds, or a queue) needs a "
                             "live render: pipe.live(...)")
        if is_timeline(self.prompt):
            self._check_timeline()

    def _check_kind(self) -> None:
        """The rules between the source audio, the edit arguments, the length and the starting latents."""
        if not isinstance(self.loop, bool):
            raise ValueError(f"`loop` must be True or False, got {self.loop!r}")
        edit = any(v is not None for v in (self.extend_s, self.regenerate, self.context_s, self.crossfade_s))
        if self.loop and self.audio is not None:
            raise ValueError("`loop` makes a new loop; it cannot restyle `audio` (loop the input's continuation "
                             "or a regenerated span in a second call instead)")
        if edit:
            if self.audio is None:
                raise ValueError("`extend_s`, `regenerate`, `context_s` and `crossfade_s` continue or remake a "
                                 "recording: pass it as `audio`")
            if self.strength is not None:
                raise ValueError("`strength` restyles the whole input (audio-to-audio); it does not go with "
                                 "`extend_s` or `regenerate`, which keep the input's own samples")
            if self.audio_length_in_s is not None:
                raise ValueError("the output's length follows from `audio` and `extend_s`: leave "
                                 "`audio_length_in_s` out (to continue for N seconds, pass extend_s=N)")
            if self.latents is not None:
                raise ValueError("pass either `latents` or an edit of `audio`: an edit starts from the input's "
                                 "latents")
            if self.num_waveforms_per_prompt != 1 or (isinstance(self.prompt, list) and not is_timeline(self.prompt)
                                                      and len(self.prompt) > 1):
                raise ValueError("an edit makes one waveform: give one prompt (or a timeline) and "
                                 "num_waveforms_per_prompt=1")
            # The numbers, spans and crossfades against the input's length (arrays are at the vocoder's rate, 16 kHz
            # in every family), before any model is loaded; an input that cannot be measured is checked when read.
            length = source_seconds(self.audio, SAMPLE_RATE)
            if length is not None:
                edit_geometry(max(1, round(length * SAMPLE_RATE)), SAMPLE_RATE, VAE_FACTOR * HOP_LENGTH,
                              self.extend_s, self.regenerate, self.context_s, self.crossfade_s)
        elif self.audio is not None:
            if self.audio_length_in_s is not None:
                raise ValueError("pass either `audio` or `audio_length_in_s`: with `audio` the output has the "
                                 "input's length")
            if self.latents is not None:
                raise ValueError("pass either `audio` or `latents`: with `audio` the starting latents are the input's")
            strength = DEFAULT_STRENGTH if self.strength is None else self.strength
            if isinstance(strength, bool) or not isinstance(strength, numbers.Real) or not 0 < strength <= 1:
                raise ValueError(f"`strength` must be a number in (0, 1], got {strength!r}")
            object.__setattr__(self, "strength", float(strength))
        elif self.strength is not None:
            raise ValueError("`strength` goes with `audio` (how far the input is taken towards noise); "
                             "without `audio` the render starts from noise")

    def _check_progressive(self) -> None:
        """What a live render cannot do: it starts from noise, in one process, and never wraps around."""
        refused = [("loop", self.loop, "a live render does not wrap around; render the loop with pipe(..., "
                    "loop=True)"),
                   ("audio", self.audio is not None, "a live render starts from noise; continue a recording with "
                    "pipe(..., audio=..., extend_s=...)"),
                   ("latents", self.latents is not None, "a live render draws each window's noise from "
                    "`generator` as it goes"),
                   ("ranks", self.ranks is not None, "a live render runs in one process; give each rank its own "
                    "render")]
        for name, given, why in refused:
            if given:
                raise ValueError(f"`{name}` is not taken by a live render: {why}")
        if is_changing_prompt(self.prompt) and self.prompt_embeds is not None:
            raise ValueError("a `prompt` that changes while rendering is encoded as it goes: leave `prompt_embeds` "
                             "out")

    def _check_timeline(self) -> None:
        if self.prompt_embeds is not None:
            raise ValueError("a prompt timeline cannot be combined with `prompt_embeds`")
        if self.negative_prompt is not None and not isinstance(self.negative_prompt, str):
            raise ValueError("with a prompt timeline, `negative_prompt` must be one string (it is global)")
        if self.audio is None:  # with an input the length, and so the segments' bounds, come from it
            parse_timeline(self.prompt, self.audio_length_in_s if self.audio_length_in_s is not None else math.inf)

    # --------------------------------------------------------------------------------------------------- derived
    def noise_generator(self) -> torch.Generator | list[torch.Generator] | None:
        """What a render draws its noise from: ``generator``, or a new CPU generator seeded with ``seed`` (so the
        audio does not depend on the device), or None (torch's global generator, as the parents do)."""
        if self.seed is not None:
            return torch.Generator("cpu").manual_seed(self.seed)
        return self.generator

    @property
    def kind(self) -> str:
        """What the request makes: one of ``KINDS``."""
        if self.loop:
            return "loop"
        if self.extend_s is not None:
            return "extend"
        if self.regenerate is not None:
            return "regenerate"
        return "restyle" if self.audio is not None else "generate"

    def output_seconds(self, sample_rate: int) -> float | None:
        """The output's length where it is known before the model: the length asked for, or the input's (plus the
        continuation); None when it is the family's default or the input cannot be measured."""
        if self.audio is None:
            return self.audio_length_in_s
        length = source_seconds(self.audio, sample_rate)
        return None if length is None else length + (self.extend_s or 0.0)

    def timeline(self, length_s: float) -> list[Segment] | None:
        """The timeline's segments over ``length_s`` seconds, or None for a text prompt."""
        return parse_timeline(self.prompt, length_s) if is_timeline(self.prompt) else None

    def replace(self, **changes: Any) -> Request:
        """A copy with some fields changed, validated again."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        unknown = sorted(set(changes) - set(values))
        if unknown:
            raise ValueError(f"unknown Request field(s) {unknown}")
        return Request(**{**values, **changes})

    @classmethod
    def from_arguments(cls, arguments: Mapping[str, Any], reject: Callable[[dict], None]) -> Request:
        """A request from a pipeline call's arguments by name: the fields it names, and the rest as
        ``family_inputs`` (``reject`` raises for those the family does not take)."""
        names = {f.name for f in fields(cls)} - {"family_inputs"}
        extra = {k: v for k, v in arguments.items() if k not in names}
        reject(extra)
        return cls(**{k: v for k, v in arguments.items() if k in names}, family_inputs=extra)

    @classmethod
    def given_or_from(cls, prompt: Any, arguments: Mapping[str, Any], reject: Callable[[dict], None],
                      progressive: bool = False) -> Request:
        """``prompt`` itself when it is a whole request (then no other call argument may come beside it), else the
        request a call's ``prompt`` and ``arguments`` make (``from_arguments``); live with ``progressive``."""
        if isinstance(prompt, Request):
            if arguments:
                raise ValueError(f"a Request carries the call's arguments; got {', '.join(sorted(arguments))} "
                                 "beside it")
            return prompt.replace(progressive=True) if progressive and not prompt.progressive else prompt
        return cls.from_arguments({"prompt": prompt, **arguments, **({"progressive": True} if progressive else {})},
                                  reject)

    @classmethod
    def for_command_line(cls, **fields_: Any) -> Request:
        """A request as the command lines, batch and the studio make it: a prompt that is not blank, and
        ``COMMAND_SECONDS`` when neither a length nor an input is given (a live render without one is endless)."""
        if fields_.get("audio_length_in_s") is None and fields_.get("audio") is None and \
                not fields_.get("progressive"):
            fields_["audio_length_in_s"] = COMMAND_SECONDS
        prompt = fields_.get("prompt")
        if isinstance(prompt, str) and not prompt.strip():
            raise ValueError(f"`prompt` must be a text describing the sound, got {prompt!r}")
        return cls(**fields_)

    def digest(self) -> str:
        """A fingerprint of everything that decides the audio (not where it is computed): ranks that share one
        render compare it, so that different arguments on different ranks are refused instead of mixed."""
        hasher = hashlib.sha256()
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "ranks":
                continue
            if f.name == "tiling" and value is not None:  # where each rank keeps its work may differ; the tiles
                value = value.replace(store="auto", store_dir=None, memory_budget=None, show_progress=True)  # do not
            hasher.update(f.name.encode())
            _feed(hasher, value)
        return hasher.hexdigest()


def _feed(hasher, value: Any) -> None:
    """Hash ``value`` by content: tensors and arrays by their bytes, generators by their state."""
    if isinstance(value, torch.Generator):
        value = value.get_state()
    elif is_changing_prompt(value):  # by name: the object itself differs from one process to the next
        value = f"{type(value).__module__}.{getattr(value, '__qualname__', type(value).__qualname__)}"
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().contiguous()
        hasher.update(f"tensor{tuple(value.shape)}{value.dtype}".encode())
        hasher.update(value.view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    elif isinstance(value, np.ndarray):
        hasher.update(f"array{value.shape}{value.dtype}".encode())
        hasher.update(np.ascontiguousarray(value).tobytes())
    elif isinstance(value, Mapping):
        hasher.update(b"{")
        for key in sorted(value, key=repr):
            hasher.update(repr(key).encode())
            _feed(hasher, value[key])
        hasher.update(b"}")
    elif isinstance(value, (list, tuple)):
        hasher.update(b"[")
        for item in value:
            _feed(hasher, item)
        hasher.update(b"]")
    else:
        hasher.update(repr(value).encode())
