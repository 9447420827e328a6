"""A pipeline from a hub id, a local folder written by ``save_pretrained``, or ``random:ARCH`` (random weights of a
public checkpoint's shapes, built offline): what the command line, the samples and the notebooks load with."""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported on use: the command line's --help does not need it
    import torch

DEFAULT_MODEL = "cvssp/audioldm-s-full-v2"
RANDOM_PREFIX = "random:"
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")  # OWNER/NAME, as the hub spells repository ids


class ModelLoadError(ValueError):
    """The model named could not be loaded; the message says why and what to pass instead."""


def load_pipeline(model: str = DEFAULT_MODEL, dtype: torch.dtype | None = None,
                  device: torch.device | str = "cpu", *, torch_dtype: torch.dtype | None = None):
    """A tiled pipeline on ``device``: ``AudioLDMTiledPipeline``, ``MusicLDMTiledPipeline`` or
    ``AudioLDM2TiledPipeline``, as the folder's ``model_index.json`` (or the random architecture) says.

    Args:
        model: a hub id (``"cvssp/audioldm-s-full-v2"``), a folder written by ``save_pretrained`` or a downloaded
            snapshot, or ``"random:ARCH"`` with ARCH one of ``ARCHITECTURES`` (random weights, no download).
        dtype: the components' dtype (default float32); ``torch_dtype``, its older spelling, is accepted too.
        device: where the pipeline runs.

    Raises:
        ModelLoadError: the model could not be loaded (no such folder, not a pipeline folder, no network, ...).
    """
    import torch
    from diffusers import DiffusionPipeline

    from .families import REGISTRY, family_of

    if dtype is not None and torch_dtype is not None and dtype != torch_dtype:
        raise ValueError(f"`dtype` ({dtype}) and `torch_dtype` ({torch_dtype}) differ: pass `dtype` alone")
    dtype = dtype or torch_dtype or torch.float32

    if not isinstance(model, str) or not model:
        raise ModelLoadError(f"model must be a hub id, a folder or random:ARCH, got {model!r}")
    if model.startswith(RANDOM_PREFIX):
        from .audiosr import components as audiosr
        from .testing.architectures import ARCHITECTURES, random_pipeline  # random weights only when asked

        arch = model[len(RANDOM_PREFIX):]
        if arch in audiosr.ARCHITECTURES:
            from .audiosr.pipeline import AudioSRTiledPipeline

            pipe = AudioSRTiledPipeline(**audiosr.build_components(arch, dtype=dtype))
            pipe.register_to_config(_name_or_path=model)  # what a file it super-resolves names
            return pipe.to(device)
        if arch not in ARCHITECTURES:
            known = ", ".join([*ARCHITECTURES, *audiosr.ARCHITECTURES])
            raise ModelLoadError(f"random:ARCH: ARCH must be one of {known}, got {arch!r}")
        return random_pipeline(arch, dtype=dtype).to(device)
    if model in AUDIOSR_CHECKPOINTS:  # the hub holds the original checkpoint: converted on loading
        pipe = _audiosr_from_hub(model, dtype)
        pipe.register_to_config(_name_or_path=model)
        return pipe.to(device)
    folder = os.path.expanduser(model)
    if not os.path.isdir(folder) and not _HUB_ID.fullmatch(model):
        raise ModelLoadError(f"model folder {model!r} does not exist (a hub id reads OWNER/NAME)")
    if os.path.isdir(folder) and not os.path.isfile(os.path.join(folder, "model_index.json")):
        raise ModelLoadError(f"model folder {model!r} has no model_index.json: pass a folder written by "
                             "save_pretrained or a downloaded snapshot of the hub repo")
    source = folder if os.path.isdir(folder) else model
    try:
        name = DiffusionPipeline.load_config(source).get("_class_name")
        family = family_of(name)
        if name == "AudioSRTiledPipeline":  # super-resolution: a pipeline beside the text-to-audio families
            from .audiosr.pipeline import AudioSRTiledPipeline

            return AudioSRTiledPipeline.from_pretrained(source, **{_dtype_keyword(): dtype}).to(device)
        if family is None:
            raise ModelLoadError(f"{model!r} holds a {name}; the tiled pipelines load "
                                 f"{', '.join(sorted(f.parent_name for f in REGISTRY.values()))}")
        pipe = family.pipeline_class().from_pretrained(source, **{_dtype_keyword(): dtype})
    except ModelLoadError:
        raise
    except Exception as error:  # noqa: BLE001 - hub, filesystem and format errors all mean "cannot load this"
        raise ModelLoadError(
            f"{model!r} could not be loaded ({type(error).__name__}: {str(error).splitlines()[0][:200]}). "
            "Without network access the weights must already be on disk: pass the folder written by "
            "save_pretrained (or a downloaded snapshot of the hub repo). To try the pipeline without weights, "
            "use random:audioldm-s."
        ) from None
    return pipe.to(device)


# AudioSR's public checkpoints: the hub repository and its file, in the original format.
AUDIOSR_CHECKPOINTS = {"haoheliu/audiosr_basic": "pytorch_model.bin", "haoheliu/audiosr_speech": "pytorch_model.bin"}


def _audiosr_from_hub(model: str, dtype):
    """AudioSR from its hub repository: the original checkpoint downloaded (or found in the hub's cache) and
    converted (``audiosr.convert``)."""
    import torch
    from huggingface_hub import hf_hub_download

    from .audiosr.convert import convert_state_dict
    from .audiosr.pipeline import AudioSRTiledPipeline

    try:
        path = hf_hub_download(repo_id=model, filename=AUDIOSR_CHECKPOINTS[model])
    except Exception as error:  # noqa: BLE001 - no network, no cache: the same advice
        raise ModelLoadError(
            f"{model!r} could not be downloaded ({type(error).__name__}). Without network access, convert the "
            "checkpoint file once (audioldm-tiled convert audiosr CKPT OUT/) and pass the folder; to try the "
            "pipeline without weights, use random:audiosr.") from None
    state = torch.load(path, map_location="cpu", weights_only=True)
    pipe = AudioSRTiledPipeline(**convert_state_dict(state.get("state_dict", state)))
    return pipe.to(dtype=dtype)


def _dtype_keyword() -> str:
    """``from_pretrained``'s name for the dtype: ``dtype`` where diffusers reads it (it deprecates ``torch_dtype``
    from 0.36 on), else ``torch_dtype``."""
    import inspect

    from diffusers import DiffusionPipeline

    return "dtype" if '"dtype"' in inspect.getsource(DiffusionPipeline.from_pretrained) else "torch_dtype"
