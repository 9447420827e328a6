"""Fast-mode tiles shrink their extent task by task to what the remaining tasks still read. That must not change a
single value of the tile's core, in either direction (upsampling decoder, stride-2 encoder)."""

import pytest
import torch

from audioldm_tiled.geometry import frames_at
from audioldm_tiled.vae.groupnorm import group_stats
from audioldm_tiled.vae.interpreter import run_tasks
from audioldm_tiled.vae.tasks import (
    Global,
    alignment,
    conv_cost,
    decoder_tasks,
    encoder_tasks,
    halo_frames,
    reaches,
    time_scale,
)
from conftest import EXACT_TOLERANCE, relative_error


def local_tasks(vae, direction: str):
    """The direction's tasks without self-attention, which is not local (fast mode gives it a memory instead)."""
    tasks = decoder_tasks(vae) if direction == "decoder" else encoder_tasks(vae)
    return [t for t in tasks if not isinstance(t, Global)]


def direction_input(vae, direction: str, frames: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    if direction == "decoder":
        return torch.randn(1, vae.config.latent_channels, frames, 16, generator=g)
    return torch.randn(1, vae.config.in_channels, frames, 64, generator=g) - 4


@pytest.mark.parametrize("direction", ["decoder", "encoder"])
def test_reaches_are_the_halo_of_every_suffix(tiny, direction):
    tasks = decoder_tasks(tiny["vae"]) if direction == "decoder" else encoder_tasks(tiny["vae"])
    assert reaches(tasks) == [halo_frames(tasks[i:]) for i in range(len(tasks))]
    assert reaches(tasks)[0] > reaches(tasks)[len(tasks) // 2] > 0


# Where the core sits in its extent: inside (a halo on both sides), at the sequence's start (no left halo) and at its
# end, with a length that is not a multiple of the encoder's 4 frames (the stride-2 layers floor it).
@pytest.mark.parametrize("direction", ["decoder", "encoder"])
@pytest.mark.parametrize("place", ["inside", "start", "end"])
def test_shrinking_the_extent_leaves_the_core_unchanged(tiny, direction, place):
    vae = tiny["vae"]
    tasks = local_tasks(vae, direction)
    halo, unit = halo_frames(tasks), alignment(tasks)
    width = 6 * unit
    core = {"inside": (halo, halo + width), "start": (0, width), "end": (halo, halo + width + unit - 1)}[place]
    frames = core[1] + (halo if place != "end" else 0)
    x = direction_input(vae, direction, frames)

    recorded = []

    def record(norm, values):  # the whole extent's statistics, replayed below: both runs normalise alike
        recorded.append(group_stats(values, norm.num_groups))
        return recorded[-1]

    replay = iter([])
    with torch.no_grad():
        whole, _, _ = run_tasks(tasks, x, None, record)
        replay = iter(recorded)
        shrunk, _, _ = run_tasks(tasks, x, None, lambda norm, values: next(replay), core=core)
    scale = time_scale(tasks)
    expected = whole[:, :, frames_at(core[0], scale) : frames_at(core[1], scale)]
    assert relative_error(shrunk, expected) < EXACT_TOLERANCE
    assert next(replay, None) is None  # every GroupNorm was met, in order
    if place != "start":
        assert conv_cost(tasks, frames, core) < conv_cost(tasks, frames)


def test_conv_cost_grows_with_the_frames_and_the_shrunk_halo_costs_little(tiny):
    tasks = decoder_tasks(tiny["vae"])
    halo = halo_frames(tasks)
    assert conv_cost(tasks, 200) == pytest.approx(2 * conv_cost(tasks, 100))
    shrunk = conv_cost(tasks, 64 + 2 * halo, (halo, halo + 64))
    assert conv_cost(tasks, 64) < shrunk < conv_cost(tasks, 64 + 2 * halo)
