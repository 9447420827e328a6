"""Ranking several waveforms per prompt by CLAP's audio-text similarity, for long waveforms.

MusicLDM and AudioLDM 2 return the waveforms of a prompt best first, as scored by their CLAP model (text and audio
towers). CLAP hears 10 s at a time: given a longer clip, its feature extractor keeps a random 10 s of it. So each
waveform is scored per 10 s window and the windows' similarities are averaged, weighted by their lengths, and each
prompt's own waveforms are ordered among themselves.
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers.pipelines.pipeline_utils import AudioPipelineOutput

# CLAP's input length: the HTSAT audio tower was trained on 10 s clips (ClapFeatureExtractor's max_length_s).
SCORE_WINDOW_S = 10.0


class ClapRanking:
    """``score_waveforms`` for a tiled pipeline whose ``text_encoder`` is a ``ClapModel`` with its
    ``feature_extractor``, and the ranked call built on the engine's ``_call``."""

    def _ranked_call(self, call: dict):
        """The engine's ``__call__`` with ``call``'s arguments; then, with ``num_waveforms_per_prompt`` > 1 and a
        text prompt, each prompt's waveforms are ordered by ``score_waveforms``, best first, as the parents order
        them."""
        prompt, per_prompt = call["prompt"], call["num_waveforms_per_prompt"] or 1
        rank = per_prompt > 1 and isinstance(prompt, (str, list)) and self.feature_extractor is not None and \
            call["output_type"] != "latent" and all(isinstance(p, str) for p in np.atleast_1d(prompt))
        if not rank:
            return self._call(dict(call))
        output_type, return_dict = call["output_type"], call["return_dict"]
        audio = self._call({**call, "output_type": "pt", "return_dict": True}).audios
        audio = self.score_waveforms(prompt, audio, per_prompt, self._execution_device, self.text_encoder.dtype)
        if output_type == "np":
            audio = audio.numpy()
        return AudioPipelineOutput(audios=audio) if return_dict else (audio,)

    def score_waveforms(self, text, audio: torch.Tensor, num_waveforms_per_prompt: int, device, dtype):
        """``audio`` (prompts x waveforms, samples) reordered best first within each prompt's waveforms, by CLAP's
        text-audio similarity averaged over windows of ``SCORE_WINDOW_S``, each weighted by its length (the parents
        score one clip, which for a long waveform CLAP would cut to a random 10 s)."""
        import librosa

        texts = [text] if isinstance(text, str) else list(text)
        rate = self.vocoder.config.sampling_rate
        window = int(SCORE_WINDOW_S * rate)
        starts = range(0, audio.shape[1], window)
        inputs = self.tokenizer(texts, return_tensors="pt", padding=True).to(device)
        scores = torch.zeros(len(texts), audio.shape[0], dtype=torch.float64)
        for start in starts:
            piece = audio[:, start : start + window].float().numpy()
            resampled = librosa.resample(piece, orig_sr=rate, target_sr=self.feature_extractor.sampling_rate)
            features = self.feature_extractor(list(resampled), return_tensors="pt",
                                              sampling_rate=self.feature_extractor.sampling_rate).input_features
            logits = self.text_encoder(**inputs, input_features=features.to(device=device, dtype=dtype)).logits_per_text
            scores += logits.double().cpu() * piece.shape[1] / audio.shape[1]  # a short last window counts less
        order = []
        for p in range(len(texts)):
            own = torch.arange(p * num_waveforms_per_prompt, (p + 1) * num_waveforms_per_prompt)
            order.append(own[torch.argsort(scores[p, own], descending=True)])
        return torch.index_select(audio, 0, torch.cat(order))
