"""AudioSR (Liu et al., 2023; the ``audiosr`` package, MIT): latent-diffusion super-resolution of any audio to
48 kHz, by the AudioLDM authors, as components of this engine.

- ``components``: its UNet, VAE, vocoder and scheduler as diffusers and transformers classes, with the public
  checkpoints' shapes (``haoheliu/audiosr_basic``, ``haoheliu/audiosr_speech``) read off the package's own config;
- ``convert``: the original checkpoint's ``state_dict`` into those components, and a diffusers folder.
"""
