"""The original AudioSR modules, from the ``audiosr`` 0.0.7 wheel installed without its dependencies
(``pip install --no-deps audiosr==0.0.7 einops``), for the parity tests and ``bench audiosr``; where the wheel
is absent ``original()`` raises ``OriginalUnavailable`` (the tests skip).

The package's ``__init__`` imports its whole command line (phonemizer, torchaudio, ...), so its submodules are
imported under an empty package of the same path. Stand-ins take the place of what the compared modules import but
never call: torchaudio, torchvision, progressbar, and the CLAP, AudioMAE and phoneme encoders that ``LatentDiffusion``
builds for training and evaluation (``CLAPAudioEmbeddingClassifierFreev2`` becomes an empty module). The
stand-ins are removed from ``sys.modules`` once the modules are imported.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import sys
import types
from typing import Any

import torch

STAND_INS = ["torchaudio", "progressbar", "torchvision", "torchvision.utils", "audiosr.clap", "audiosr.clap.open_clip",
             "audiosr.clap.training", "audiosr.clap.training.data", "audiosr.latent_diffusion.modules.audiomae",
             "audiosr.latent_diffusion.modules.audiomae.AudioMAE",
             "audiosr.latent_diffusion.modules.phoneme_encoder",
             "audiosr.latent_diffusion.modules.phoneme_encoder.encoder"]
MODULES = ["audiosr.utils", "audiosr.lowpass", "audiosr.hifigan", "audiosr.utilities.model",
           "audiosr.latent_encoder.autoencoder", "audiosr.latent_diffusion.modules.diffusionmodules.openaimodel",
           "audiosr.latent_diffusion.models.ddpm"]


class _StandIn(types.ModuleType):
    """A module whose every attribute is another stand-in, and which fails if anything is called."""

    def __init__(self, name: str):
        super().__init__(name)
        self.__spec__ = importlib.machinery.ModuleSpec(name, None)
        self.__path__ = []

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return _StandIn(f"{self.__name__}.{name}")

    def __call__(self, *args, **kwargs):
        raise RuntimeError(f"{self.__name__} is a stand-in of the parity tests")


class OriginalUnavailable(RuntimeError):
    """The original modules cannot be imported here; the message says what to install."""


def original() -> dict[str, types.ModuleType]:
    """The original modules by name (``MODULES``)."""
    if importlib.util.find_spec("einops") is None:
        raise OriginalUnavailable("the original AudioSR modules need einops: pip install einops")
    if "audiosr.latent_diffusion.models.ddpm" in sys.modules:
        return {name: sys.modules[name] for name in MODULES}
    spec = importlib.util.find_spec("audiosr")
    if spec is None or spec.submodule_search_locations is None:
        raise OriginalUnavailable("the audiosr wheel is not installed: pip install --no-deps audiosr==0.0.7 einops")
    import transformers  # its lazy names the modules import, loaded before any stand-in exists

    for name in ("RobertaTokenizer", "AutoTokenizer", "T5EncoderModel", "T5Config"):
        getattr(transformers, name)
    package = types.ModuleType("audiosr")
    package.__path__, package.__spec__ = list(spec.submodule_search_locations), spec
    added = {"audiosr": package, **{name: _StandIn(name) for name in STAND_INS}}
    previous = {name: sys.modules.get(name) for name in added}
    sys.modules.update(added)
    try:
        modules = {name: importlib.import_module(name) for name in MODULES}
    except ImportError as error:  # e.g. a pandas that needs a newer NumPy than this environment's
        raise OriginalUnavailable(f"the original AudioSR modules do not import here: {error}") from None
    finally:
        for name, module in previous.items():
            if name == "audiosr" or name.startswith("audiosr."):
                continue  # the imported modules find their package and stand-ins through these
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
    modules["audiosr.latent_diffusion.models.ddpm"].CLAPAudioEmbeddingClassifierFreev2 = \
        lambda *args, **kwargs: torch.nn.Module()
    return modules


def tiny_config(arch) -> dict[str, Any]:
    """The original ``LatentDiffusion``'s parameters (``utils.get_basic_config``) with ``arch``'s sizes (an
    ``AudioSRArchitecture``), and the HiFi-GAN config the package reads for 256 mels set to ``arch``'s vocoder."""
    modules = original()
    config = modules["audiosr.utils"].get_basic_config()["model"]["params"]
    config["device"] = "cpu"
    vae, unet = arch.vae, arch.unet
    ch = vae["block_out_channels"][0]
    ddconfig = dict(ch=ch, ch_mult=[c // ch for c in vae["block_out_channels"]], num_res_blocks=vae["layers_per_block"])
    for first_stage in (config["first_stage_config"]["params"],
                        config["cond_stage_config"]["concat_lowpass_cond"]["params"]["first_stage_config"]["params"]):
        first_stage["ddconfig"].update(ddconfig)
    channels = unet["block_out_channels"]
    config["unet_config"]["params"].update(
        model_channels=channels[0], channel_mult=[c // channels[0] for c in channels],
        num_res_blocks=unet["layers_per_block"], num_head_channels=channels[0] // unet["attention_head_dim"][0])
    vocoder = modules["audiosr.utilities.model"]
    if not hasattr(vocoder, "public_config_48k"):
        vocoder.public_config_48k = vocoder.get_vocoder_config_48k
    public = vocoder.public_config_48k()
    vocoder.get_vocoder_config_48k = lambda: {
        **public, **{k: arch.vocoder[k] for k in ("upsample_initial_channel", "upsample_rates", "upsample_kernel_sizes",
                                                  "resblock_kernel_sizes", "resblock_dilation_sizes")}}
    return config


def latent_diffusion(arch, seed: int = 0):
    """The original ``LatentDiffusion`` of ``arch``'s sizes, randomly initialised from ``seed``."""
    config = tiny_config(arch)
    ddpm = original()["audiosr.latent_diffusion.models.ddpm"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ddpm.LatentDiffusion(**config)
    return model.eval()


def original_batch(recording, seed: int) -> dict:
    """``pipeline.make_batch_for_super_resolution`` for a 48 kHz recording (samples,), without its torchaudio
    reading: the input the original's ``generate_batch`` takes."""
    import numpy as np

    utils = original()["audiosr.utils"]
    rate = 48000
    duration = -(-recording.shape[0] // round(5.12 * rate)) * 5.12
    frames = round(duration * 100)
    waveform = utils.pad_wav(utils.normalize_wav(recording)[None], round(duration * rate))
    log_mel, stft = utils.wav_feature_extraction(waveform, frames)
    batch = {"waveform": torch.FloatTensor(waveform), "stft": stft, "log_mel_spec": log_mel, "sampling_rate": rate}
    np.random.seed(seed)  # as the package's seed_everything before it
    batch.update(utils.lowpass_filtering_prepare_inference(batch))
    batch["lowpass_mel"], _ = utils.wav_feature_extraction(batch["waveform_lowpass"], frames)
    return {k: v.unsqueeze(0) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
