"""The VAE's mid-block self-attention (diffusers' ``AttnProcessor2_0``) with its GroupNorm statistics given from
outside and keys that can come from elsewhere in the sequence: what fast mode's tiles attend with."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .groupnorm import GroupStats, apply_group_norm


@dataclass(frozen=True)
class AttentionMemory:
    """Keys and values of the proxy's tokens at one self-attention, per batch row: (B, heads, n, head_dim)."""

    key: torch.Tensor
    value: torch.Tensor
    frames: int  # time frames (at the attention's resolution) that the n tokens were taken from

    def rows(self, repeats: int) -> AttentionMemory:
        return AttentionMemory(self.key.repeat(repeats, 1, 1, 1), self.value.repeat(repeats, 1, 1, 1), self.frames)

    @staticmethod
    def join(parts: list[AttentionMemory]) -> AttentionMemory:
        return AttentionMemory(torch.cat([m.key for m in parts], dim=2), torch.cat([m.value for m in parts], dim=2),
                                sum(m.frames for m in parts))


def split_heads(attn, tokens: torch.Tensor) -> torch.Tensor:
    """(B, n, heads * d) -> (B, heads, n, d)."""
    return tokens.unflatten(-1, (attn.heads, -1)).transpose(1, 2)


def normed_tokens(attn, x: torch.Tensor, stats: GroupStats | None, batch_groups: int = 1) -> torch.Tensor:
    """The attention's GroupNorm (with the given statistics) applied to x (B, C, T, F), as tokens (B, T*F, C)."""
    if attn.spatial_norm is not None or attn.norm_q is not None or attn.norm_k is not None:
        raise ValueError("fast tiled decode: the VAE's attention uses spatial_norm/norm_q/norm_k; use mode='exact'")
    if attn.group_norm is not None:
        x = apply_group_norm(x, stats, attn.group_norm, batch_groups)
    return x.flatten(2).transpose(1, 2)


def attention_memory(attn, x: torch.Tensor, stats: GroupStats | None) -> AttentionMemory:
    tokens = normed_tokens(attn, x, stats)
    return AttentionMemory(split_heads(attn, attn.to_k(tokens)), split_heads(attn, attn.to_v(tokens)), x.shape[2])


def attend(attn, x: torch.Tensor, stats: GroupStats | None, memory: AttentionMemory | None,
            outside_frames: int = 0, local: bool = True, batch_groups: int = 1) -> torch.Tensor:
    """What ``attn(x)`` computes (diffusers' AttnProcessor2_0), with keys from x itself and/or from a memory.

    With ``local`` the tokens of x are keys at weight one. The memory's tokens are a sample of the rest of the
    sequence: ``outside_frames`` frames stand behind its ``memory.frames`` frames, so each of its keys enters the
    softmax with the multiplicity outside_frames / memory.frames (a log-weight added to its logits). Without local
    keys the memory is the whole sequence's sample and its weight cancels in the softmax.
    """
    b, c, t, f = x.shape
    tokens = normed_tokens(attn, x, stats, batch_groups)
    query = split_heads(attn, attn.to_q(tokens))
    keys, values, bias = [], [], []
    if local:
        keys.append(split_heads(attn, attn.to_k(tokens)))
        values.append(split_heads(attn, attn.to_v(tokens)))
        bias.append(torch.zeros(keys[0].shape[2], dtype=query.dtype, device=x.device))
    if memory is not None and (outside_frames > 0 or not local):
        keys.append(memory.key.to(query.dtype))
        values.append(memory.value.to(query.dtype))
        weight = math.log(outside_frames / memory.frames) if local else 0.0
        bias.append(torch.full((memory.key.shape[2],), weight, dtype=query.dtype, device=x.device))
    mask = torch.cat(bias)[None, None, None] if local and len(bias) > 1 else None
    out = F.scaled_dot_product_attention(query, torch.cat(keys, dim=2), torch.cat(values, dim=2), attn_mask=mask)
    out = attn.to_out[1](attn.to_out[0](out.transpose(1, 2).flatten(2)))
    out = out.transpose(1, 2).reshape(b, c, t, f)
    if attn.residual_connection:
        out = out + x
    return out / attn.rescale_output_factor




# Peak bytes of one query block per (query, key) pair: the math backend of scaled_dot_product_attention keeps the
# scores, their softmax and its input at once.
SCORE_COPIES = 3
MIN_BLOCK_TOKENS = 256


def query_block_tokens(attn, x: torch.Tensor, budget: int) -> int:
    """Queries per block so that one block's scores (``SCORE_COPIES`` x B x heads x block x tokens) fit
    ``budget`` bytes; at least ``MIN_BLOCK_TOKENS``, at most every token."""
    tokens = x.shape[2] * x.shape[3]
    per_query = SCORE_COPIES * x.shape[0] * attn.heads * tokens * x.element_size()
    return int(min(tokens, max(MIN_BLOCK_TOKENS, budget // per_query)))


def attend_in_blocks(attn, x: torch.Tensor, block_tokens: int) -> torch.Tensor:
    """What ``attn(x)`` computes (diffusers' AttnProcessor2_0, self-attention over the whole of x (B, C, T, F)),
    with the queries in blocks of ``block_tokens``: each block attends to every key and value, so memory is
    O(block x tokens) under any backend of ``scaled_dot_product_attention``, where the math backend would hold
    all tokens x tokens scores at once (29 GB in float16 for 300 s of AudioLDM latents)."""
    if attn.spatial_norm is not None or attn.norm_q is not None or attn.norm_k is not None:
        return attn(x)
    b, c, t, f = x.shape
    normed = x if attn.group_norm is None else attn.group_norm(x)
    tokens = normed.flatten(2).transpose(1, 2)  # (B, T*F, C)
    key, value = split_heads(attn, attn.to_k(tokens)), split_heads(attn, attn.to_v(tokens))
    out = torch.empty_like(tokens)
    for start in range(0, tokens.shape[1], block_tokens):
        query = split_heads(attn, attn.to_q(tokens[:, start : start + block_tokens]))
        block = F.scaled_dot_product_attention(query, key, value)
        out[:, start : start + block_tokens] = attn.to_out[1](attn.to_out[0](block.transpose(1, 2).flatten(2)))
    out = out.transpose(1, 2).reshape(b, c, t, f)
    if attn.residual_connection:
        out = out + x
    return out / attn.rescale_output_factor
