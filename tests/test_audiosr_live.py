"""AudioSR at the recording's level, and a live render super-resolved segment by segment as it comes, in the
library and from ``live --upsample``; AudioSR's tiny random weights, two steps."""

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from audioldm_tiled.audiosr.live import LiveUpsampler
from audioldm_tiled.cli import main
from audioldm_tiled.loading import load_pipeline

RATE = 16000
STEPS = {"num_inference_steps": 2}


@pytest.fixture(scope="module")
def pipe():
    pipe = load_pipeline("random:audiosr-tiny")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _signal(seconds: float) -> np.ndarray:
    t = np.arange(round(seconds * RATE)) / RATE
    noise = np.random.default_rng(0).standard_normal(t.shape[0])
    return (0.3 * np.sin(2 * np.pi * 220 * t) * (1 + 0.5 * np.sin(t)) + 0.02 * noise).astype(np.float32)


def test_kept_level_follows_the_input_and_the_default_is_the_originals(pipe):
    x = _signal(1.0)
    kept = pipe(x, RATE, keep_level=True, generator=torch.Generator().manual_seed(0), **STEPS).audios
    quieter = pipe(0.1 * x, RATE, keep_level=True, generator=torch.Generator().manual_seed(0), **STEPS).audios
    # the model sees the same normalised input; what differs is float32 rounding of the input and the gains
    assert np.abs(quieter - 0.1 * kept).max() < 1e-5 * np.abs(kept).max()
    # the level is the input's (16 kHz content is carried below the cutoff), not the original's peak at 0.5
    assert 0.5 < np.abs(kept).max() / np.abs(x).max() < 2 and np.abs(quieter).max() < 0.1


# One clip of the model per segment (it pads every input to 5.12 s): the live default is two.
SHORT = {"segment_seconds": 5.12, "overlap_seconds": 1.28, **STEPS}


def test_segments_are_super_resolved_as_they_come_and_crossfaded(pipe):
    x = _signal(8.0)
    live = LiveUpsampler(pipe, RATE, seed=3, **SHORT)
    segment, overlap = live.segment, live.overlap
    assert (segment, overlap) == (round(5.12 * RATE), round(1.28 * RATE))
    pieces = []
    for lo in range(0, x.shape[0], 4000):  # pieces of a quarter second, as a live render hands them out
        got = list(live.feed(x[lo : lo + 4000]))
        assert not got or lo + 4000 >= segment  # nothing before one segment is rendered
        pieces += got
    assert len(pieces) == 1 and pieces[0].shape == (3 * (segment - overlap),)
    pieces += list(live.finish())
    assert list(live.finish()) == []
    out = np.concatenate(pieces)
    assert out.shape == (3 * x.shape[0],) and out.dtype == np.float32

    # the same by hand: each segment as the pipeline makes it, the noise drawn in order, faded across the overlap
    generator = torch.Generator().manual_seed(3)
    hop = segment - overlap
    first = pipe(x[:segment], RATE, keep_level=True, seed=3, generator=generator, **STEPS).audios[0]
    last = pipe(x[hop:], RATE, keep_level=True, seed=3, generator=generator, **STEPS).audios[0]
    ramp = (np.arange(3 * overlap, dtype=np.float32) + 0.5) / (3 * overlap)
    faded = first[3 * hop :] * (1 - ramp) + last[: 3 * overlap] * ramp
    assert np.array_equal(out, np.concatenate([first[: 3 * hop], faded, last[3 * overlap :]]))


def test_a_render_that_ends_with_a_segment_ends_with_its_overlap(pipe):
    live = LiveUpsampler(pipe, RATE, **SHORT)
    x = _signal(5.12)  # a next segment would hold nothing the first does not
    out = np.concatenate([*live.feed(x), *live.finish()])
    whole = pipe(x, RATE, keep_level=True, generator=torch.Generator().manual_seed(0), **STEPS).audios[0]
    assert np.array_equal(out, whole)
    with pytest.raises(ValueError, match="`overlap_seconds` must be above 0 and below `segment_seconds`"):
        LiveUpsampler(pipe, RATE, segment_seconds=5.12, overlap_seconds=5.12)


def test_live_upsample_writes_48_khz_and_refuses_a_resume(tmp_path, capsys):
    out = tmp_path / "bed.wav"
    argv = ["live", "rain", "--model", "random:tiny", "--steps", "1", "--seconds", "3", "--float", "--quiet",
            "--upsample", "random:audiosr-tiny", "--upsample-steps", "2", "-o", str(out)]
    assert main(argv) == 0
    audio, rate = sf.read(out, dtype="float32")
    assert rate == 48000 and audio.shape == (3 * 48000,) and np.isfinite(audio).all() and np.abs(audio).max() > 0
    assert main(argv + ["--resume"]) == 2
    assert "--upsample writes a 48 kHz file that cannot be resumed" in capsys.readouterr().err
    assert main(argv[:-1] + [str(tmp_path / "bed.opus")]) == 2  # Opus has no float samples: refused before
    assert "--float: " in capsys.readouterr().err and not (tmp_path / "bed.opus").exists()


def test_a_live_file_and_stream_hold_the_same_48_khz_and_say_how_it_was_made(tmp_path):
    import io

    from audioldm_tiled import Upsampling
    from audioldm_tiled.render import render_live, stream_live

    tiny = load_pipeline("random:tiny")
    tiny.set_progress_bar_config(disable=True)
    upsample = Upsampling(load_pipeline("random:audiosr-tiny"), num_inference_steps=2)
    args = dict(audio_length_in_s=2, num_inference_steps=1, seed=5, subtype="FLOAT", upsample=upsample)
    out = render_live(tiny, tmp_path / "bed.wav", "rain", **args)
    stream = io.BytesIO()
    assert stream_live(tiny, stream, "rain", **args) == 2 * 48000
    with sf.SoundFile(out) as file:
        assert file.samplerate == 48000
        recipe = json.loads(file.comment)
        written = file.read(dtype="float32")
    streamed, rate = sf.read(io.BytesIO(stream.getvalue()), dtype="float32")
    assert rate == 48000 and np.array_equal(streamed, written) and np.abs(written).max() > 0
    assert recipe["upsampled"]["level"] == "kept" and recipe["upsampled"]["seed"] == 5
    assert recipe["upsampled"]["num_inference_steps"] == 2
    assert recipe["upsampled"]["segment_seconds"] == 10.24


def test_a_render_without_a_seed_is_delivered_at_48_khz(tmp_path):
    """The render draws its own seed; AudioSR's noise then comes from seed 0."""
    from audioldm_tiled import Upsampling, render_to_file

    tiny = load_pipeline("random:tiny")
    tiny.set_progress_bar_config(disable=True)
    upsample = Upsampling(load_pipeline("random:audiosr-tiny"), num_inference_steps=2)
    delivered = render_to_file(tiny, tmp_path / "rain.wav", "rain", audio_length_in_s=1, num_inference_steps=1,
                               upsample=upsample)
    assert delivered.sample_rate == 48000 and sf.info(tmp_path / "rain.wav").frames == 48000
    assert json.loads(sf.SoundFile(tmp_path / "rain.wav").comment)["upsampled"]["seed"] == 0


def test_a_listener_gone_ends_the_live_upsampling_without_more_work(pipe, monkeypatch):
    """Once the sink behind it stops taking audio (the player closed the pipe), committing the stopped render does
    not super-resolve what is left: one segment made, none after."""
    from audioldm_tiled import Upsampling
    from audioldm_tiled.audiosr.sink import LiveUpsampledSink
    from audioldm_tiled.live_sinks import ListenerGone
    from audioldm_tiled.sinks import drive

    class Gone:  # a stream whose reader has left
        def open(self, *args):
            pass

        def write(self, piece):
            raise ListenerGone()

        def commit(self):
            return "kept"

        def abort(self):
            raise AssertionError("a stop commits")

    calls, call = [], type(pipe).__call__
    monkeypatch.setattr(type(pipe), "__call__", lambda self, *a, **k: calls.append(1) or call(self, *a, **k))
    sink = LiveUpsampledSink(Gone(), Upsampling(pipe, num_inference_steps=2))
    sink.open(RATE, 1, {})
    x = _signal(12.0)
    # pieces of 1 s: the first segment comes with 11 s rendered, 2 s past the next segment's start, which a
    # commit that went on would super-resolve
    assert drive((x[None, lo : lo + RATE] for lo in range(0, x.shape[0], RATE)), sink, (ListenerGone,)) == "kept"
    assert calls == [1]
