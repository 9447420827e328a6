"""The whole-sequence attention of exact mode runs its queries in blocks: equal to the unblocked attention within
float rounding, and never holding tokens x tokens scores, even under the math backend of SDPA."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from audioldm_tiled import TilingConfig, tiled_decode
from audioldm_tiled.vae.attention import MIN_BLOCK_TOKENS, attend_in_blocks, query_block_tokens
from audioldm_tiled.vae.tasks import Global, decoder_tasks
from conftest import EXACT_TOLERANCE, nonstationary_latents, relative_error


def math_attention():
    """SDPA's math backend only (torch.nn.attention from torch 2.3 on; before it, torch.backends.cuda's switch,
    which set the backend for every device)."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:
        return torch.backends.cuda.sdp_kernel(enable_flash=False, enable_mem_efficient=False, enable_math=True)
    return sdpa_kernel(SDPBackend.MATH)


class LargestTensor(TorchDispatchMode):
    """Records the largest number of elements, and of bytes, of any tensor an op makes."""

    def __init__(self):
        super().__init__()
        self.numel = self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.numel = max(self.numel, t.numel())
                self.bytes = max(self.bytes, t.numel() * t.element_size())
        return out


def _attention(vae):
    return next(task.module for task in decoder_tasks(vae) if isinstance(task, Global))


@pytest.mark.parametrize("block", [1, 7, 64, 10_000])
def test_blocked_attention_equals_the_module(tiny, block):
    attn = _attention(tiny["vae"])
    x = torch.randn(2, attn.to_q.in_features, 40, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert relative_error(attend_in_blocks(attn, x, block), attn(x)) < EXACT_TOLERANCE


def test_exact_decode_never_holds_all_scores_under_the_math_backend(tiny):
    vae = tiny["vae"]
    frames = 100  # 1600 tokens at the attention: 2.56 M scores per (batch, head)
    z = nonstationary_latents(1, frames)
    tokens = frames * 16
    attn = _attention(vae)
    budget = 10**6  # a block of MIN_BLOCK_TOKENS queries
    assert query_block_tokens(attn, z, budget) == MIN_BLOCK_TOKENS
    config = TilingConfig(enabled=True, tile_frames=16, memory_budget=budget, show_progress=False)
    with torch.no_grad(), math_attention():
        expected = vae.decode(z).sample
        largest = LargestTensor()
        with largest:
            actual = tiled_decode(vae, z, config)
        unblocked = LargestTensor()
        with unblocked:  # the check can fail: the module's own attention makes the whole score matrix
            attn(torch.randn(1, attn.to_q.in_features, frames, 16))
    assert relative_error(actual, expected) < EXACT_TOLERANCE
    assert largest.numel < tokens * tokens <= unblocked.numel
