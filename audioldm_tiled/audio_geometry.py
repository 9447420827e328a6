"""A model family's geometry in time and frequency: where its samples, mel frames and latent frames fall. Every
module reads it from the pipeline (``pipe.geometry``, from the loaded components' configs), never from constants:
AudioLDM's 40 ms latent frame is not every family's."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass


@dataclass(frozen=True)
class AudioGeometry:
    """Where a family's samples, mel frames and latent frames fall: one latent frame is ``vae_factor`` mel frames,
    one mel frame ``mel_hop`` samples at ``sample_rate``. AudioLDM, AudioLDM 2 and MusicLDM: 16 kHz, hop 160, 64
    mel bands, VAE factor 4, 8 latent channels (40 ms per latent frame, 256 frames per 10.24 s window)."""

    sample_rate: int  # Hz, the vocoder's output rate
    mel_hop: int  # samples per mel frame: the product of the vocoder's upsample rates
    mel_bands: int  # the vocoder's input channels
    vae_factor: int  # mel frames per latent frame (and mel bands per latent row)
    latent_channels: int
    default_frames: int  # the UNet's sample_size: the parents' default length in latent frames
    vocoder_context_frames: int  # mel frames per side that one vocoder output sample depends on

    @property
    def latent_rows(self) -> int:
        """Frequency rows of the latent."""
        return self.mel_bands // self.vae_factor

    @property
    def mel_frame_seconds(self) -> float:
        return self.mel_hop / self.sample_rate

    @property
    def samples_per_latent_frame(self) -> int:
        return self.vae_factor * self.mel_hop

    @property
    def latent_frame_seconds(self) -> float:
        """Seconds per latent frame, also the shortest render (40 ms for AudioLDM)."""
        return self.samples_per_latent_frame / self.sample_rate

    @property
    def default_seconds(self) -> float:
        """The parents' default length: the UNet's sample_size in latent frames (128, 5.12 s for AudioLDM)."""
        return self.default_frames * self.latent_frame_seconds

    def lengths(self, audio_length_in_s: float | None) -> tuple[float, int, int]:
        """(seconds, mel frames rounded up to whole latent frames, samples to keep) of a render, as the diffusers
        parents compute them; None is the parents' default length."""
        if audio_length_in_s is None:
            audio_length_in_s = self.default_seconds
        if isinstance(audio_length_in_s, bool) or not isinstance(audio_length_in_s, numbers.Real) or not (
            math.isfinite(audio_length_in_s) and audio_length_in_s > 0
        ):
            raise ValueError(
                f"`audio_length_in_s` must be a positive finite number of seconds, got {audio_length_in_s!r}"
            )
        mel_frames = int(audio_length_in_s / self.mel_frame_seconds)
        mel_frames = math.ceil(mel_frames / self.vae_factor) * self.vae_factor
        return float(audio_length_in_s), mel_frames, int(audio_length_in_s * self.sample_rate)
