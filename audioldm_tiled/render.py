"""One render, streamed straight into a WAV file: what the command line, the samples and the benchmarks call."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .audio import open_wav, wav_bytes
from .callbacks import CALLBACK_ARGUMENTS
from .distributed import guarded, ranks_for
from .files import check_output_path
from .request import Request


def render_to_wav(pipe, path: str | os.PathLike, prompt: Any = None, *, subtype: str = "PCM_16",
                  overwrite: bool = True, **call_kwargs: Any) -> Path:
    """Generate with ``pipe.stream(prompt, **call_kwargs)`` and write the waveform to ``path`` as it arrives.

    The path, and the free space for a render of known length, are checked before any model work; the file
    appears only once the render has succeeded (``files.atomic_file``: an existing file is replaced then, or kept
    when the render fails or is interrupted). Memory stays that of one piece, whatever the length.

    Args:
        pipe: an ``AudioLDMTiledPipeline``.
        path: the ``.wav`` file to write.
        prompt: a prompt or a timeline (one waveform: the file holds one channel).
        subtype: soundfile subtype, ``"PCM_16"`` (default), ``"PCM_24"``, ``"PCM_32"`` or ``"FLOAT"``.
        overwrite: replace an existing file; with False an existing ``path`` raises before anything runs.
        call_kwargs: the pipeline's call arguments (``audio_length_in_s``, ``num_inference_steps``, ``tiling``, ...).

    With ``ranks="auto"`` (one render shared over the ranks of the default process group) every rank calls it
    with the same arguments: all of them render their shares, rank 0 checks the path and writes the file, and a
    failure on any rank fails them all. Without it, each process renders and writes alone.

    Returns:
        The path written.
    """
    ranks = ranks_for(call_kwargs.get("ranks"))
    writes = ranks is None or ranks.rank == 0
    with guarded(ranks):  # a failure on any rank, the file's commit included, fails every rank
        # The request's own rules first; arguments no field takes are the pipeline's to name (family inputs).
        callbacks = dict(CALLBACK_ARGUMENTS)
        request = Request.from_arguments({"prompt": prompt, **{k: v for k, v in call_kwargs.items()
                                                               if k not in callbacks}},
                                         reject=lambda family_inputs: None)
        if request.num_waveforms_per_prompt != 1 or (
            isinstance(prompt, list) and len(prompt) > 1 and all(isinstance(p, str) for p in prompt)
        ):
            raise ValueError("render_to_wav writes one waveform: give one prompt (or one timeline) and "
                             "num_waveforms_per_prompt=1")
        rate = pipe.vocoder.config.sampling_rate
        seconds = request.output_seconds(rate)
        size = None if seconds is None else wav_bytes(seconds * rate, subtype)
        path = check_output_path(path, overwrite=overwrite, size=size) if writes else Path(path)
        pieces = pipe.stream(prompt, **call_kwargs)
        if not writes:
            for _ in pieces:  # this rank's share of the work; its pieces reach rank 0
                pass
        else:
            with open_wav(path, rate, subtype, overwrite=overwrite) as writer:
                for piece in pieces:
                    writer.write(piece[0])
    return path
