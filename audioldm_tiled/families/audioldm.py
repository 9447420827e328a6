"""``AudioLDMTiledPipeline``: diffusers' AudioLDM pipeline through the engine. AudioLDM conditions its UNet on
CLAP's text embedding as a class label, the engine's default hooks (``TiledAudioPipelineMixin``)."""

from __future__ import annotations

from diffusers import AudioLDMPipeline

from ..deprecation import parent_deprecation_once
from ..pipeline import TiledAudioPipelineMixin


class AudioLDMTiledPipeline(TiledAudioPipelineMixin, AudioLDMPipeline):
    r"""Text-to-audio with AudioLDM for audio of any length.

    Same components, call signature and defaults as [`AudioLDMPipeline`]; on top of it, denoising runs on overlapping
    time windows, the VAE decode is tiled along time with GroupNorm statistics shared across tiles, and the vocoder
    runs over overlapping chunks. With windowing and tiling off, it computes exactly what the parent computes.
    """

    model_cpu_offload_seq = "text_encoder->unet->vae->vocoder"
    _callback_tensor_inputs = ["latents", "prompt_embeds"]

    def __init__(self, vae, text_encoder, tokenizer, unet, scheduler, vocoder):
        with parent_deprecation_once(AudioLDMPipeline, type(self).__name__):
            super().__init__(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                             scheduler=scheduler, vocoder=vocoder)
        self._init_tiling()
