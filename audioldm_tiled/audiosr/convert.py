"""AudioSR's original checkpoint (the ``state_dict`` of ``audiosr``'s ``LatentDiffusion``, as the package loads it)
into this project's components.

The original modules' names map onto diffusers' one module at a time: the UNet's ``input_blocks``,
``middle_block`` and ``output_blocks`` (each a sequence of a ResBlock, its attention blocks and a resampler) onto
``down_blocks``, ``mid_block`` and ``up_blocks``; the VAE's ``down``/``mid``/``up`` onto their diffusers names (the
decoder's levels counted from the other end, and the middle attention's 1x1 convolutions into linear layers); the
HiFi-GAN's ``ups`` onto ``upsampler``. Every converted tensor must land on a parameter of the same shape, and every
parameter must be given one: a checkpoint of another layout is refused by name, not loaded in part.

Kept from the checkpoint besides the weights: ``scale_factor`` (the latent scale, ``scale_by_std``). Left out: the
EMA copy of the UNet (the package's inference does not use it), the CLAP model the package builds for evaluation,
the training schedule's buffers (the scheduler is rebuilt from its config), and the conditioning VAE's decoder and
vocoder (only its encoder makes the low-pass latent). The conditioning VAE's encoder is the first one's in the
package's training; where a checkpoint's differs, it is kept as ``condition_vae``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from .components import ARCHITECTURES, AudioSRArchitecture, build_components

UNET, VAE, CONDITION_VAE, VOCODER = "model.diffusion_model.", "first_stage_model.", "cond_stage_models.0.vae.", \
    "first_stage_model.vocoder."
_RESBLOCK = {"in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj", "out_layers.0": "norm2",
             "out_layers.3": "conv2", "skip_connection": "conv_shortcut"}
_VAE_ATTENTION = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}


def unet_names(unet_config: Mapping[str, Any]) -> dict[str, str]:
    """Original module path -> diffusers module path, for a UNet laid out as ``components._unet`` lays it out."""
    levels = len(unet_config["block_out_channels"])
    layers = unet_config["layers_per_block"]
    attention = [kind.startswith("CrossAttn") for kind in unet_config["down_block_types"]]
    per_block = len(unet_config["cross_attention_dim"][0])  # transformers per attention block
    names = {"time_embed.0": "time_embedding.linear_1", "time_embed.2": "time_embedding.linear_2",
             "input_blocks.0.0": "conv_in", "out.0": "conv_norm_out", "out.2": "conv_out"}
    block = 1
    for level in range(levels):
        for j in range(layers):
            names[f"input_blocks.{block}.0"] = f"down_blocks.{level}.resnets.{j}"
            for t in range(per_block if attention[level] else 0):
                names[f"input_blocks.{block}.{1 + t}"] = f"down_blocks.{level}.attentions.{j * per_block + t}"
            block += 1
        if level < levels - 1:
            names[f"input_blocks.{block}.0.op"] = f"down_blocks.{level}.downsamplers.0.conv"
            block += 1
    names["middle_block.0"] = "mid_block.resnets.0"
    for t in range(per_block):
        names[f"middle_block.{1 + t}"] = f"mid_block.attentions.{t}"
    names[f"middle_block.{1 + per_block}"] = "mid_block.resnets.1"
    block = 0
    for up in range(levels):
        with_attention = attention[levels - 1 - up]
        for j in range(layers + 1):
            names[f"output_blocks.{block}.0"] = f"up_blocks.{up}.resnets.{j}"
            for t in range(per_block if with_attention else 0):
                names[f"output_blocks.{block}.{1 + t}"] = f"up_blocks.{up}.attentions.{j * per_block + t}"
            if j == layers and up < levels - 1:
                names[f"output_blocks.{block}.{1 + (per_block if with_attention else 0)}.conv"] = \
                    f"up_blocks.{up}.upsamplers.0.conv"
            block += 1
    return names


def vae_names(levels: int, layers: int) -> dict[str, str]:
    """Original module path -> diffusers module path, for the encoder and decoder of an LDM ``AutoencoderKL``."""
    names = {"quant_conv": "quant_conv", "post_quant_conv": "post_quant_conv"}
    for part in ("encoder", "decoder"):
        names.update({f"{part}.conv_in": f"{part}.conv_in", f"{part}.conv_out": f"{part}.conv_out",
                      f"{part}.norm_out": f"{part}.conv_norm_out", f"{part}.mid.block_1": f"{part}.mid_block.resnets.0",
                      f"{part}.mid.block_2": f"{part}.mid_block.resnets.1",
                      f"{part}.mid.attn_1": f"{part}.mid_block.attentions.0"})
    for level in range(levels):
        for j in range(layers):
            names[f"encoder.down.{level}.block.{j}"] = f"encoder.down_blocks.{level}.resnets.{j}"
        if level < levels - 1:
            names[f"encoder.down.{level}.downsample.conv"] = f"encoder.down_blocks.{level}.downsamplers.0.conv"
        up = levels - 1 - level
        for j in range(layers + 1):
            names[f"decoder.up.{level}.block.{j}"] = f"decoder.up_blocks.{up}.resnets.{j}"
        if level > 0:
            names[f"decoder.up.{level}.upsample.conv"] = f"decoder.up_blocks.{up}.upsamplers.0.conv"
    return names


def _renamed(state: Mapping[str, torch.Tensor], prefix: str, names: Mapping[str, str],
             inner: Mapping[str, str]) -> dict[str, torch.Tensor]:
    """The tensors under ``prefix``, each module path renamed by its longest entry in ``names`` and the rest of
    its path by ``inner``; a tensor of no module in ``names`` is an error."""
    out, unknown = {}, []
    for key, tensor in state.items():
        if not key.startswith(prefix):
            continue
        path = key[len(prefix):]
        module = max((m for m in names if path == m or path.startswith(m + ".")), key=len, default=None)
        if module is None:
            unknown.append(key)
            continue
        rest = path[len(module) + 1:]
        head, _, tail = rest.rpartition(".")
        out[f"{names[module]}.{inner.get(head, head) + '.' if head else ''}{tail}"] = tensor
    if unknown:
        raise ValueError(f"not an AudioSR checkpoint of this layout: {len(unknown)} tensors of no known module, "
                         f"e.g. {unknown[:3]}")
    return out


def _vae_state(state: Mapping[str, torch.Tensor], prefix: str, config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    names = vae_names(len(config["block_out_channels"]), config["layers_per_block"])
    without_vocoder = {k: v for k, v in state.items() if not k.startswith(prefix + "vocoder.")}
    out = _renamed(without_vocoder, prefix, names, {"nin_shortcut": "conv_shortcut", **_VAE_ATTENTION})
    for key, tensor in out.items():  # the middle attention's 1x1 convolutions are linear layers in diffusers
        if ".mid_block.attentions." in key and key.endswith(".weight") and tensor.dim() == 4:
            out[key] = tensor[:, :, 0, 0]
    return out


def convert_state_dict(state: Mapping[str, torch.Tensor],
                       arch: str | AudioSRArchitecture = "audiosr") -> dict[str, Any]:
    """The components (``unet``, ``vae``, ``vocoder``, ``scheduler``; ``condition_vae`` where the checkpoint's
    conditioning encoder differs from its VAE's) with ``state``'s weights, for the architecture ``arch``."""
    arch = ARCHITECTURES[arch] if isinstance(arch, str) else arch
    if "scale_factor" in state:
        arch = arch.with_scaling_factor(float(state["scale_factor"]))
    with torch.device("meta"):  # the weights come from the checkpoint: nothing to initialise
        components = build_components(arch)
    converted = {
        "unet": _renamed(state, UNET, unet_names(arch.unet), _RESBLOCK),
        "vae": _vae_state(state, VAE, arch.vae),
        "vocoder": {k.replace("ups.", "upsampler.", 1) if k.startswith("ups.") else k: v
                    for k, v in ((k[len(VOCODER):], v) for k, v in state.items() if k.startswith(VOCODER))},
    }
    vocoder = components["vocoder"]
    converted["vocoder"].setdefault("mean", torch.zeros_like(vocoder.mean, device="cpu"))
    converted["vocoder"].setdefault("scale", torch.ones_like(vocoder.scale, device="cpu"))
    condition = _vae_state(state, CONDITION_VAE, arch.vae) if any(k.startswith(CONDITION_VAE) for k in state) else {}
    if any(not torch.equal(tensor, converted["vae"][key]) for key, tensor in condition.items()
           if key.startswith(("encoder.", "quant_conv."))):
        from diffusers import AutoencoderKL

        with torch.device("meta"):
            components["condition_vae"] = AutoencoderKL(**arch.vae)
        converted["condition_vae"] = condition
    for name, weights in converted.items():
        _check_and_load(name, components[name], weights)
    return components


def _check_and_load(name: str, module: torch.nn.Module, weights: Mapping[str, torch.Tensor]) -> None:
    expected = module.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    shapes = [k for k in set(expected) & set(weights) if tuple(expected[k].shape) != tuple(weights[k].shape)]
    if missing or unexpected or shapes:
        raise ValueError(f"the checkpoint's {name} does not fit AudioSR's layout: {len(missing)} missing "
                         f"(e.g. {missing[:2]}), {len(unexpected)} unknown (e.g. {unexpected[:2]}), {len(shapes)} of "
                         f"another shape (e.g. {shapes[:2]})")
    module.load_state_dict({k: v.to(expected[k].dtype) for k, v in weights.items()}, assign=True)
    module.eval()
