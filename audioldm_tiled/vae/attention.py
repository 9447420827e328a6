"""The VAE's mid-block self-attention (diffusers' ``AttnProcessor2_0``) computed in pieces.

- ``attend``: GroupNorm statistics given from outside and keys that can come from elsewhere in the sequence (what fast
  mode's tiles attend with);
- ``attend_in_blocks``: the whole sequence with queries in blocks, so memory does not depend on the SDPA backend;
- ``OnlineSoftmax``: queries against keys and values that arrive in parts (exact mode with the sequence held off the
  device), merged with a running maximum as in FlashAttention.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..offload import weights_on_device
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


def project(linear: torch.nn.Linear, tokens: torch.Tensor) -> torch.Tensor:
    """``linear(tokens)`` in the tokens' dtype (float32 tokens of a half-precision model widen its weights)."""
    if tokens.dtype == linear.weight.dtype:
        return linear(tokens)
    with weights_on_device(linear):
        weight, bias = linear.weight.to(tokens.dtype), None if linear.bias is None else linear.bias.to(tokens.dtype)
    return F.linear(tokens, weight, bias)


def group_norm(norm: torch.nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
    """``norm(x)`` with its own statistics, in x's dtype."""
    if not norm.affine or x.dtype == norm.weight.dtype:
        return norm(x)
    with weights_on_device(norm):
        weight, bias = norm.weight.to(x.dtype), norm.bias.to(x.dtype)
    return F.group_norm(x, norm.num_groups, weight, bias, norm.eps)


def split_heads(attn, tokens: torch.Tensor) -> torch.Tensor:
    """(B, n, heads * d) -> (B, heads, n, d)."""
    return tokens.unflatten(-1, (attn.heads, -1)).transpose(1, 2)


def normed_tokens(attn, x: torch.Tensor, stats: GroupStats | None, batch_groups: int = 1) -> torch.Tensor:
    """The attention's GroupNorm (with the given statistics) applied to x (B, C, T, F), as tokens (B, T*F, C)."""
    if attn.spatial_norm is not None or attn.norm_q is not None or attn.norm_k is not None:
        raise ValueError("tiled VAE: this VAE's attention uses spatial_norm/norm_q/norm_k, which only the "
                         "whole-sequence attention supports: use TilingConfig(mode='exact', store='device')")
    if attn.group_norm is not None:
        x = apply_group_norm(x, stats, attn.group_norm, batch_groups)
    return x.flatten(2).transpose(1, 2)


def attention_memory(attn, x: torch.Tensor, stats: GroupStats | None) -> AttentionMemory:
    tokens = normed_tokens(attn, x, stats)
    return AttentionMemory(split_heads(attn, project(attn.to_k, tokens)), split_heads(attn, project(attn.to_v, tokens)),
                           x.shape[2])


def attend(attn, x: torch.Tensor, stats: GroupStats | None, memory: AttentionMemory | None,
            outside_frames: int = 0, local: bool = True, batch_groups: int = 1) -> torch.Tensor:
    """What ``attn(x)`` computes (diffusers' AttnProcessor2_0), with keys from x itself and/or from a memory.

    With ``local`` the tokens of x are keys at weight one. The memory's tokens are a sample of the rest of the
    sequence: ``outside_frames`` frames stand behind its ``memory.frames`` frames, so each of its keys enters the
    softmax with the multiplicity outside_frames / memory.frames (a log-weight added to its logits). Without local
    keys the memory is the whole sequence's sample and its weight cancels in the softmax.
    """
    tokens = normed_tokens(attn, x, stats, batch_groups)
    query = split_heads(attn, project(attn.to_q, tokens))
    keys, values, bias = [], [], []
    if local:
        keys.append(split_heads(attn, project(attn.to_k, tokens)))
        values.append(split_heads(attn, project(attn.to_v, tokens)))
        bias.append(torch.zeros(keys[0].shape[2], dtype=query.dtype, device=x.device))
    if memory is not None and (outside_frames > 0 or not local):
        keys.append(memory.key.to(query.dtype))
        values.append(memory.value.to(query.dtype))
        weight = math.log(outside_frames / memory.frames) if local else 0.0
        bias.append(torch.full((memory.key.shape[2],), weight, dtype=query.dtype, device=x.device))
    mask = torch.cat(bias)[None, None, None] if local and len(bias) > 1 else None
    out = F.scaled_dot_product_attention(query, torch.cat(keys, dim=2), torch.cat(values, dim=2), attn_mask=mask)
    return attention_output(attn, out, x)


def project_out(attn, heads: torch.Tensor) -> torch.Tensor:
    """(B, heads, n, d) attention output -> (B, n, C) through the output projection."""
    return attn.to_out[1](project(attn.to_out[0], heads.transpose(1, 2).flatten(2)))


def with_residual(attn, tokens: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Tokens (B, T*F, C) back to x's shape (B, C, T, F), with the attention's residual and output rescaling."""
    out = tokens.transpose(1, 2).reshape(x.shape)
    if attn.residual_connection:
        out = out + x
    return out / attn.rescale_output_factor


def attention_output(attn, heads: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return with_residual(attn, project_out(attn, heads), x)




# Peak bytes of one query block per (query, key) pair: the math backend of scaled_dot_product_attention keeps the
# scores, their softmax and its input at once.
SCORE_COPIES = 3
MIN_BLOCK_TOKENS = 256


def query_block_tokens(attn, x: torch.Tensor, budget: int, key_tokens: int | None = None) -> int:
    """Queries per block so that one block's scores (``SCORE_COPIES`` x B x heads x block x ``key_tokens``, at
    least 4 bytes each) fit ``budget`` bytes; at least ``MIN_BLOCK_TOKENS``, at most every token of x (B, C, T, F).
    ``key_tokens`` defaults to x's own tokens."""
    tokens = x.shape[2] * x.shape[3]
    keys = tokens if key_tokens is None else key_tokens
    per_query = SCORE_COPIES * x.shape[0] * attn.heads * keys * max(4, x.element_size())
    return int(min(tokens, max(MIN_BLOCK_TOKENS, budget // per_query)))


def attend_in_blocks(attn, x: torch.Tensor, block_tokens: int) -> torch.Tensor:
    """What ``attn(x)`` computes (diffusers' AttnProcessor2_0, self-attention over the whole of x (B, C, T, F)),
    with the queries in blocks of ``block_tokens``: each block attends to every key and value, so memory is
    O(block x tokens) under any backend of ``scaled_dot_product_attention``, where the math backend would hold
    all tokens x tokens scores at once (29 GB in float16 for 300 s of AudioLDM latents)."""
    if attn.spatial_norm is not None or attn.norm_q is not None or attn.norm_k is not None:
        return attn(x)
    normed = x if attn.group_norm is None else group_norm(attn.group_norm, x)
    tokens = normed.flatten(2).transpose(1, 2)  # (B, T*F, C)
    key, value = split_heads(attn, project(attn.to_k, tokens)), split_heads(attn, project(attn.to_v, tokens))
    out = torch.empty_like(tokens)
    for start in range(0, tokens.shape[1], block_tokens):
        query = split_heads(attn, project(attn.to_q, tokens[:, start : start + block_tokens]))
        out[:, start : start + block_tokens] = project_out(attn, F.scaled_dot_product_attention(query, key, value))
    return with_residual(attn, out, x)


class OnlineSoftmax:
    """``softmax(q k^T / sqrt(d)) v`` for queries (B, heads, n, d) against keys and values given in parts.

    Each part's scores are taken in blocks of ``block_tokens`` queries; a running maximum and sum per query rescale
    what earlier parts contributed (the log-sum-exp merge of FlashAttention), so the result equals one softmax over
    all keys to float rounding, whatever order or size the parts come in. Scores and sums are float32 at least.
    """

    def __init__(self, query: torch.Tensor, block_tokens: int):
        b, h, n, d = query.shape
        self.dtype = query.dtype
        compute = torch.promote_types(query.dtype, torch.float32)
        # q / sqrt(d) first, as scaled_dot_product_attention does, so half-precision scores do not overflow.
        self.query = query * d**-0.5
        self.block = block_tokens
        self.sum = torch.zeros((b, h, n, d), dtype=compute, device=query.device)
        self.total = torch.zeros((b, h, n, 1), dtype=compute, device=query.device)
        self.peak = torch.full((b, h, n, 1), -math.inf, dtype=compute, device=query.device)

    def add(self, key: torch.Tensor, value: torch.Tensor) -> None:
        key_t = key.to(self.dtype).transpose(-1, -2)
        value = value.to(self.dtype)
        for start in range(0, self.query.shape[2], self.block):
            rows = slice(start, start + self.block)
            scores = torch.matmul(self.query[:, :, rows], key_t).to(self.sum.dtype)
            peak = torch.maximum(self.peak[:, :, rows], scores.amax(-1, keepdim=True))
            weights = scores.sub_(peak).exp_()
            correction = (self.peak[:, :, rows] - peak).exp_()
            self.total[:, :, rows].mul_(correction).add_(weights.sum(-1, keepdim=True))
            self.sum[:, :, rows].mul_(correction).add_(torch.matmul(weights.to(self.dtype), value))
            self.peak[:, :, rows] = peak
            del scores, weights

    def result(self) -> torch.Tensor:
        return (self.sum / self.total).to(self.dtype)
