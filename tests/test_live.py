"""Live rendering: the progressive layout without a model, prefix stability, the known region at every step, the
first piece after one window, prompts that change while rendering, resuming after SIGKILL and extending a finished
file from the command line, the standard-output stream, and the refusals."""

import io
import os
import queue
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from audioldm_tiled import TilingConfig
from audioldm_tiled.cli import main
from audioldm_tiled.editing import KnownRegion
from audioldm_tiled.geometry import ProgressiveLayout
from audioldm_tiled.live import LiveState
from audioldm_tiled.testing.architectures import random_pipeline
from audioldm_tiled.vae.running import RunningDecoder
from audioldm_tiled.wav_stream import GrowingWav, WavStream, wav_header
from conftest import EXACT_TOLERANCE, HALF_PRECISION_TOLERANCE, child_process, relative_error


def _seed(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _live(pipe, seconds, prompt="rain on a tin roof", seed=0, **kwargs) -> np.ndarray:
    return np.concatenate(list(pipe.live(prompt, audio_length_in_s=seconds, num_inference_steps=1,
                                         generator=_seed(seed), **kwargs)), axis=1)


# ------------------------------------------------------------------------------------------------ the layout alone
@pytest.mark.parametrize("window, overlap, halo, context, factor",
                         [(256, 96, 17, 24, 4), (64, 0, 13, 13, 4), (64, 32, 32, 0, 4), (16, 8, 3, 5, 2),
                          (24, 11, 0, 3, 1), (256, 128, 128, 23, 4)])
def test_layout_covers_every_frame_once_and_reads_only_what_is_final(window, overlap, halo, context, factor):
    layout = ProgressiveLayout(window, overlap, halo, context, factor)
    windows = 12
    denoised = [layout.denoised(k) for k in range(windows)]
    decoded = [layout.decoded(k) for k in range(windows)]
    vocoded = [layout.vocoded(k) for k in range(windows)]
    for tiles in (denoised, decoded, vocoded):  # cores tile the axis: each frame owned once, in order
        assert tiles[0].core_start == 0
        assert all(a.core_stop == b.core_start for a, b in zip(tiles, tiles[1:]))
        assert all(t.core_length > 0 for t in tiles)
    for k in range(windows):
        w, d, v = denoised[k], decoded[k], vocoded[k]
        assert w.length == window and w.core_start - w.start == (overlap if k else 0)
        assert d.stop <= w.stop  # a tile reads only frames final after window k
        assert d.core_start - d.start == min(halo, d.core_start) and d.stop - d.core_stop == halo
        assert v.stop <= factor * d.core_stop  # a chunk reads only decoded mel
        assert v.core_start - v.start == min(context, v.core_start) and v.stop - v.core_stop == context
        if k + 1 < windows:  # what is held between windows covers what the next window and tile read
            held = w.stop - layout.kept_frames
            assert held <= denoised[k + 1].start and held <= decoded[k + 1].start
    for mel in (1, vocoded[0].core_stop, vocoded[0].core_stop + 1, vocoded[5].core_stop, vocoded[5].core_stop + 1):
        n = layout.windows_for(mel)
        assert vocoded[n - 1].core_stop >= mel and (n == 1 or vocoded[n - 2].core_stop < mel)


def test_layout_refuses_windows_too_short_for_the_halo():
    with pytest.raises(ValueError, match="too short"):
        ProgressiveLayout(32, 8, 17, 24, 4)
    with pytest.raises(ValueError, match="overlap"):
        ProgressiveLayout(32, 32, 1, 1, 4)


# ----------------------------------------------------------------------------------------------- the running decode
def test_one_running_tile_over_everything_is_the_untiled_decode(tiny_pipe):
    """With nothing before it and its core the whole input, a running tile normalises by the whole sequence and
    attends to all of it: vae.decode. Tolerance: tests/conftest.py's EXACT_TOLERANCE (same sums, other order)."""
    vae = tiny_pipe.vae
    latents = torch.randn(1, vae.config.latent_channels, 48, 16, generator=_seed(1))
    decoder = RunningDecoder(vae, TilingConfig(), history=4)
    mel = decoder.decode(latents, (0, 48), (0, 48))
    with torch.no_grad():
        expected = vae.decode(latents / vae.config.scaling_factor).sample
    assert relative_error(mel, expected) < EXACT_TOLERANCE
    assert len(decoder.statistics.tiles) == 1


# ------------------------------------------------------------------------------------------------ the live render
def test_the_first_60_s_do_not_depend_on_the_length(tiny_pipe):
    # 90 s: past the minute of statistics the decode pools, so the windows after it drop the oldest tiles
    short, long = _live(tiny_pipe, 60), _live(tiny_pipe, 90)
    assert short.shape == (1, 60 * 16000) and long.shape == (1, 90 * 16000)
    assert np.array_equal(short, long[:, : short.shape[1]])
    assert np.abs(short).max() > 0
    two = _live(tiny_pipe, 10, num_waveforms_per_prompt=2)  # the noise matters, so equality means something
    assert two.shape == (2, 10 * 16000) and not np.array_equal(two[0], two[1])


def test_known_frames_are_the_final_latents_noised_to_each_step(tiny_pipe, monkeypatch):
    """At every step of window k the overlap is window k - 1's final latents, noised with the region's noise to
    the next step's level; after the last step it is those latents exactly."""
    finals, replaced = [], []
    original = KnownRegion.replace

    def spy(self, latents, timestep):
        out = original(self, latents, timestep)
        replaced.append((self, timestep, out))
        return out

    monkeypatch.setattr(KnownRegion, "replace", spy)
    steps, layout_overlap = 3, tiny_pipe.tiling_for_call(None).window_overlap_frames

    def keep_final(pipe, step, timestep, tensors):
        if step == steps - 1:
            finals.append(tensors["latents"].clone())
        return {}

    render = tiny_pipe.live("rain", audio_length_in_s=25, num_inference_steps=steps, generator=_seed(),
                            callback_on_step_end=keep_final)
    list(render)
    assert len(finals) >= 3 and len(replaced) == (len(finals) - 1) * (steps + 1)
    scheduler = tiny_pipe.scheduler
    for index, (region, timestep, out) in enumerate(replaced):
        window = 1 + index // (steps + 1)
        previous = finals[window - 1][:, :, -layout_overlap:]
        assert torch.equal(region.latents[:, :, :layout_overlap], previous)
        expected = previous if timestep is None else scheduler.add_noise(
            previous, region.noise[:, :, :layout_overlap], timestep.reshape(1))
        assert torch.equal(out[:, :, :layout_overlap], expected)
        assert (out[:, :, :layout_overlap] - previous).abs().max() > 0 or timestep is None
    assert torch.equal(finals[1][:, :, :layout_overlap], finals[0][:, :, -layout_overlap:])


def test_the_first_piece_comes_after_one_window_whatever_the_length(tiny_pipe):
    calls = []
    hook = tiny_pipe.unet.register_forward_hook(lambda module, args, output: calls.append(1))
    try:
        for seconds in (30, None):
            calls.clear()
            render = tiny_pipe.live("rain", audio_length_in_s=seconds, num_inference_steps=2, generator=_seed())
            first = next(render)
            assert len(calls) == 2  # one window's steps, guidance batched
            assert first.shape[1] == render.samples > 8 * 16000
            second = next(render)
            window = tiny_pipe.tiling_for_call(None).window_frames
            assert len(calls) == 4 and second.shape[1] == 4 * 160 * window * 5 // 8
            render.close()
    finally:
        hook.remove()


def _class_labels_per_call(pipe):
    seen = []
    hook = pipe.unet.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["class_labels"][-1].clone()), with_kwargs=True)
    return seen, hook


def test_a_prompt_change_takes_effect_in_the_next_window(tiny_pipe):
    rain, thunder = (tiny_pipe._encode_prompt(text, "cpu", 1, True)[-1] for text in ("rain", "thunder"))
    texts = queue.Queue()
    texts.put("rain")
    seen, hook = _class_labels_per_call(tiny_pipe)
    try:
        render = tiny_pipe.live(texts, num_inference_steps=1, generator=_seed())
        next(render)
        texts.put("thunder")
        next(render)
        next(render)
        render.close()
        assert [torch.equal(s, rain) for s in seen] == [True, False, False]
        assert all(torch.equal(s, thunder) for s in seen[1:])
        assert render.state.text == "thunder"

        seen.clear()  # a function of seconds: read at each window's first new frame (0, 10.24, 16.64 s)
        list(tiny_pipe.live(lambda t: "rain" if t < 12 else "thunder", audio_length_in_s=20, num_inference_steps=1,
                            generator=_seed()))
        assert [torch.equal(s, thunder) for s in seen] == [False, False, True]
    finally:
        hook.remove()


def test_a_timeline_conditions_each_window_on_the_segments_it_covers(tiny_pipe):
    seen, hook = _class_labels_per_call(tiny_pipe)
    try:
        list(tiny_pipe.live([(0, "rain"), (14, "thunder")], audio_length_in_s=30, num_inference_steps=1,
                            generator=_seed()))
    finally:
        hook.remove()
    rain, thunder = (tiny_pipe._encode_prompt(text, "cpu", 1, True)[-1] for text in ("rain", "thunder"))
    torch.testing.assert_close(seen[0], rain.detach())  # window 0 (0-10.24 s): rain alone, renormalised
    cosine = [torch.nn.functional.cosine_similarity(s, thunder.detach(), dim=0).item() for s in seen]
    assert cosine[0] < cosine[1] < cosine[2]  # window 1 (6.4-16.64 s) mixes both; window 2 mostly thunder


def test_a_resumed_state_goes_on_bit_for_bit(tiny_pipe, tmp_path):
    whole = _live(tiny_pipe, 40)
    render = tiny_pipe.live("rain on a tin roof", audio_length_in_s=40, num_inference_steps=1, generator=_seed())
    head = [next(render), next(render)]
    render.state.save(tmp_path / "state.live")
    render.close()
    state = LiveState.load(tmp_path / "state.live")
    assert state.window == 2 and state.samples == sum(p.shape[1] for p in head)
    rest = tiny_pipe.live("rain on a tin roof", audio_length_in_s=40, num_inference_steps=1, generator=_seed(),
                          resume=state)
    assert np.array_equal(np.concatenate(head + list(rest), axis=1), whole)
    with pytest.raises(ValueError, match="another render"):
        tiny_pipe.live("wind", audio_length_in_s=40, num_inference_steps=1, generator=_seed(), resume=state)
    (tmp_path / "junk.live").write_bytes(b"not a state")
    with pytest.raises(ValueError, match="not a live render's saved state"):
        LiveState.load(tmp_path / "junk.live")


@pytest.mark.parametrize("arch", ["musicldm-tiny", "audioldm2-tiny"])
def test_the_other_families_render_live_and_prefix_stable(arch):
    pipe = random_pipeline(arch)
    pipe.set_progress_bar_config(disable=True)
    short, long = _live(pipe, 12, prompt="a piano"), _live(pipe, 20, prompt="a piano")
    assert np.array_equal(short, long[:, : short.shape[1]]) and np.abs(short).max() > 0


def test_bfloat16_live_render_follows_float32():
    """The same render in bfloat16 against float32: HALF_PRECISION_TOLERANCE (tests/conftest.py), measured for
    the tiled pipeline end to end; the running decode keeps its statistics in float32 or wider."""
    full = random_pipeline("tiny")
    half = random_pipeline("tiny", dtype=torch.bfloat16)
    for pipe in (full, half):
        pipe.set_progress_bar_config(disable=True)
    expected, actual = _live(full, 12), _live(half, 12)
    assert np.isfinite(actual).all()
    assert relative_error(torch.from_numpy(actual), torch.from_numpy(expected)) < \
        HALF_PRECISION_TOLERANCE[torch.bfloat16]


@pytest.mark.parametrize("arguments, message", [
    ({"loop": True}, "`loop` is not taken by a live render"),
    ({"audio": np.zeros(16000, dtype=np.float32)}, "`audio` is not taken by a live render"),
    ({"latents": torch.zeros(1, 8, 256, 16)}, "`latents` is not taken"),
    ({"ranks": "auto"}, "`ranks` is not taken"),
    ({"output_type": "pt"}, "no `output_type`"),
    ({"audio_length_in_s": -1}, "audio_length_in_s"),
    ({"tiling": TilingConfig(window_frames=16, window_overlap_frames=8)}, "TilingConfig.window_frames"),
])
def test_what_a_live_render_cannot_do_is_named(tiny_pipe, arguments, message):
    with pytest.raises(ValueError, match=message):
        tiny_pipe.live("rain", **arguments)


def test_a_changing_prompt_needs_a_live_render_and_a_text(tiny_pipe):
    with pytest.raises(ValueError, match="needs a live render"):
        tiny_pipe(lambda t: "rain", audio_length_in_s=1)
    render = tiny_pipe.live(lambda t: None, num_inference_steps=1)
    with pytest.raises(ValueError, match="prompt function returned None at 0 s"):
        next(render)


# -------------------------------------------------------------------------------------------------------- WAV files
def test_growing_wav_is_a_valid_file_after_every_piece_and_resumes_after_a_torn_frame(tmp_path):
    path = tmp_path / "g.wav"
    rng = np.random.default_rng(0)
    pieces = [rng.uniform(-1, 1, n).astype(np.float32) for n in (5, 300, 7)]
    for subtype in ("PCM_16", "PCM_24", "PCM_32", "FLOAT"):
        with GrowingWav(path, 16000, subtype) as wav:
            for count, piece in enumerate(pieces[:2], 1):
                wav.write(piece)
                read, rate = sf.read(path, dtype="float32")
                assert rate == 16000 and read.shape == (sum(len(p) for p in pieces[:count]),)
        with open(path, "ab") as f:
            f.write(b"\x01")  # a frame cut short by a crash
        with GrowingWav(path, 16000, subtype, resume=True) as wav:
            assert wav.frames == 305
            wav.write(pieces[2])
        expected = io.BytesIO()  # what soundfile writes for the whole, in one piece
        sf.write(expected, np.concatenate(pieces), 16000, subtype=subtype, format="WAV")
        assert path.read_bytes()[44:] == expected.getvalue()[-(len(path.read_bytes()) - 44) :]
    with pytest.raises(ValueError, match="cannot be continued"):
        GrowingWav(path, 22050, "FLOAT", resume=True)


def test_a_stream_header_says_unknown_length_and_soundfile_reads_it():
    buffer = io.BytesIO()
    writer = WavStream(buffer, 16000, "FLOAT")
    writer.write(np.linspace(-1, 1, 100, dtype=np.float32))
    assert buffer.getvalue()[:44] == wav_header(16000, "FLOAT") and buffer.getvalue()[40:44] == b"\xff" * 4
    buffer.seek(0)
    read, rate = sf.read(buffer, dtype="float32", frames=100)
    assert rate == 16000 and np.array_equal(read, np.linspace(-1, 1, 100, dtype=np.float32))


# ----------------------------------------------------------------------------------------------- the command line
LIVE = [sys.executable, "-m", "audioldm_tiled", "live", "rain", "--model", "random:tiny", "--steps", "1",
        "--quiet", "--float"]


def test_killed_resumed_and_extended_renders_give_the_same_bytes(tmp_path):
    """A 20 s render; a 12 s one extended to 20 s by --resume, killed with SIGKILL half way and resumed again:
    the same file, byte for byte, and the 12 s file intact after the killed extension."""
    whole, grown = tmp_path / "whole.wav", tmp_path / "grown.wav"
    # In this process where nothing is killed: a child costs seconds of start-up, and the bytes are the same
    # (test_standard_output_is_a_wav_stream_read_while_it_renders compares a child's render with this process's).
    assert main(LIVE[3:] + ["--seconds", "20", "-o", str(whole)]) == 0
    assert main(LIVE[3:] + ["--seconds", "12", "-o", str(grown)]) == 0
    first = grown.read_bytes()
    assert first[44:] == whole.read_bytes()[44 : len(first)]  # prefix-stable: the 40 s render begins the same
    part = tmp_path / "grown.wav.part"
    with child_process(LIVE + ["--seconds", "20", "-o", str(grown), "--resume"], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL) as process:
        deadline = time.monotonic() + 240
        while not (part.exists() and part.stat().st_size > 44 + 4 * 13 * 16000):  # past 13 s: the extension's
            assert process.poll() is None and time.monotonic() < deadline          # first window is written
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
    assert grown.read_bytes() == first  # the finished file survives the killed run
    assert main(LIVE[3:] + ["--seconds", "20", "-o", str(grown), "--resume"]) == 0
    assert grown.read_bytes() == whole.read_bytes() and not part.exists()


def test_standard_output_is_a_wav_stream_read_while_it_renders(tmp_path):
    with child_process(LIVE + ["--forever", "-o", "-"], stdout=subprocess.PIPE, stderr=subprocess.PIPE) as process:
        with sf.SoundFile(process.stdout.fileno(), closefd=False) as stream:
            assert (stream.samplerate, stream.channels, stream.subtype) == (16000, 1, "FLOAT")
            first = stream.read(12 * 16000, dtype="float32")  # more than the first window's piece
        assert first.shape == (12 * 16000,) and process.poll() is None  # still rendering: --forever
        process.stdout.close()  # the listener goes away: the render stops quietly
        assert process.wait(timeout=120) == 0, process.stderr.read()
    expected, _ = sf.read(_render_file(tmp_path), dtype="float32")
    assert np.array_equal(first, expected[: first.shape[0]])


def _render_file(tmp_path):
    out = tmp_path / "ref.wav"
    assert main(["live", "rain", "--model", "random:tiny", "--steps", "1", "--quiet", "--float", "--seconds", "13",
                 "-o", str(out)]) == 0
    return out


@pytest.mark.parametrize("args, message", [
    (["--seconds", "5", "--forever", "-o", "x.wav"], "not allowed with argument"),
    (["-o", "x.wav"], "one of the arguments --seconds --forever is required"),
    (["--seconds", "5"], "give -o FILE.wav, -o - (standard output) or --play"),
    (["--forever", "-o", "-", "--resume"], "--resume goes on with a file"),
    (["--seconds", "5", "-o", "x.wav", "--resume"], "nothing to resume"),
    (["--seconds", "5", "-o", "x.mp3"], "-o x.mp3: a live render grows a WAV file that it can resume"),
])
def test_live_command_errors_are_one_line(tmp_path, capsys, args, message, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["live", "rain", "--model", "random:tiny", "--steps", "1", "--quiet"] + args) == 2
    assert message in capsys.readouterr().err


def test_an_unfinished_render_is_not_overwritten_by_a_new_one(tmp_path, capsys):
    """A part with a state beside it holds whole windows to go on from (a part without one is replaced: see
    test_a_live_output_is_owned_by_one_render_from_the_start)."""
    (tmp_path / "x.wav.part").write_bytes(b"")
    (tmp_path / "x.wav.live").write_bytes(b"")
    assert main(["live", "rain", "--model", "random:tiny", "--steps", "1", "--quiet", "--seconds", "5", "-o",
                 str(tmp_path / "x.wav")]) == 2
    assert "holds an unfinished live render" in capsys.readouterr().err


def test_play_without_sounddevice_says_how_to_get_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "sounddevice", None)  # import fails as if it were not installed
    assert main(["live", "rain", "--model", "random:tiny", "--steps", "1", "--seconds", "5", "--play"]) == 2
    assert "pip install 'audioldm-tiled[play]'" in capsys.readouterr().err


def test_interrupting_an_endless_file_render_keeps_what_was_rendered(tmp_path):
    out = tmp_path / "bed.wav"
    part = tmp_path / "bed.wav.part"
    with child_process(LIVE + ["--forever", "-o", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                       text=True) as process:
        deadline = time.monotonic() + 240
        while not (part.exists() and part.stat().st_size > 44):
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        process.send_signal(signal.SIGINT)  # at once: while the first piece and its header are being written
        assert process.wait(timeout=120) == 0, process.stderr.read()
    audio, _ = sf.read(out, dtype="float32")
    assert audio.shape[0] > 9 * 16000 and not part.exists() and os.path.exists(str(out) + ".live")


def test_model_offload_gives_the_same_live_audio(tiny_pipe, monkeypatch):
    pytest.importorskip("accelerate")
    from accelerate.hooks import CpuOffload

    expected = _live(tiny_pipe, 20)
    pipe = random_pipeline("tiny")
    pipe.set_progress_bar_config(disable=True)
    pipe.enable_model_cpu_offload(device="cpu")
    fired = []
    real_pre_forward = CpuOffload.pre_forward
    monkeypatch.setattr(CpuOffload, "pre_forward", lambda self, module, *args, **kwargs: (
        fired.append(type(module).__name__), real_pre_forward(self, module, *args, **kwargs))[1])
    assert np.array_equal(_live(pipe, 20), expected)
    # the running decode and the vocoder chunk call no module's forward: each window fires their hooks itself
    windows = 3  # 9.59 s, then 6.4 s per window: 22.4 s cover the 20 s asked for
    assert fired.count("AutoencoderKL") == windows and fired.count("SpeechT5HifiGan") == windows


def test_a_refused_file_render_leaves_no_file_behind(tiny_pipe, tmp_path):
    from audioldm_tiled.live_sinks import live_files
    from audioldm_tiled.render import render_live

    out = tmp_path / "x.wav"
    with pytest.raises(ValueError, match="`loop` is not taken"):
        render_live(tiny_pipe, out, "rain", loop=True, audio_length_in_s=5)
    assert not any(path.exists() for path in (out, *live_files(out)))
    render_live(tiny_pipe, out, "rain", audio_length_in_s=5, num_inference_steps=1)  # and the next one starts
    assert sf.info(out).frames == 5 * 16000


def test_signals_wait_for_the_end_of_a_whole_write():
    from audioldm_tiled.files import signals_deferred

    # Python's own Ctrl-C handler, whatever this test run inherited (started in the background, SIGINT is ignored)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    steps = []
    try:
        with pytest.raises(KeyboardInterrupt):
            with signals_deferred():
                os.kill(os.getpid(), signal.SIGINT)  # delivered to any thread; held until the block ends
                time.sleep(0.05)
                steps.append("the write went on")
    finally:
        signal.signal(signal.SIGINT, previous)
    assert steps == ["the write went on"]


def test_a_damaged_state_is_refused_by_name(tiny_pipe, tmp_path, capsys):
    """A state file edited or damaged after it was written: fields of the wrong kind are named when it is loaded,
    fields of the right kind that do not fit the render's layout when it is resumed; never a traceback from inside
    a window. A state that is a folder is named as such."""
    import dataclasses

    render = tiny_pipe.live("rain", audio_length_in_s=20, num_inference_steps=1, generator=_seed())
    next(render), next(render)
    state = render.state
    render.close()
    path = tmp_path / "rain.wav.live"
    for change, message in ((dict(window=-1), "window must be a whole number >= 0"),
                            (dict(latents=torch.zeros(3)), "latents must be a 4-d float tensor"),
                            (dict(generators=[torch.zeros(3)]), "its generators must be generator states")):
        dataclasses.replace(state, **change).save(path)
        with pytest.raises(ValueError, match=f"damaged live render state: {message}"):
            LiveState.load(path)
    for change, message in ((dict(window=state.window + 3), "do not fit window 5"),
                            (dict(latents=state.latents[:, :, 1:]), "its latents"),
                            (dict(mel=state.mel[:, :, :8]), "its mel"),
                            (dict(samples=state.samples + 1), "samples handed out do not fit"),
                            (dict(statistics=[[torch.zeros(1)]]), "its GroupNorm statistics")):
        with pytest.raises(ValueError, match=f"`resume`: the saved state is damaged: .*{message}"):
            tiny_pipe.live("rain", audio_length_in_s=20, num_inference_steps=1, generator=_seed(),
                           resume=dataclasses.replace(state, **change))
    resumed = tiny_pipe.live("rain", audio_length_in_s=20, num_inference_steps=1, generator=_seed(), resume=state)
    assert next(resumed).shape[1] > 0  # the undamaged state goes on
    resumed.close()
    path.unlink()
    path.mkdir()
    out = tmp_path / "rain.wav"
    out.write_bytes(b"")
    assert main(["live", "rain", "--seconds", "20", "-o", str(out), "--resume", "--model", "random:tiny"]) == 2
    assert "rain.wav.live' is not a file (a live render's saved state is one file)" in capsys.readouterr().err


def test_two_live_renders_on_one_pipeline_keep_their_own_arguments(tiny_pipe):
    """A render's guidance belongs to the render: a second live render with another guidance, and a call with a
    third, made between the first one's pieces, change none of its samples."""
    def render(guidance):
        return tiny_pipe.live("rain", audio_length_in_s=20, num_inference_steps=2, guidance_scale=guidance,
                              generator=_seed())

    solo = render(2.5)
    expected = [next(solo), next(solo)]
    solo.close()
    a, b = render(2.5), render(50.0)
    first, other = next(a), next(b)
    tiny_pipe("rain", audio_length_in_s=1.0, num_inference_steps=1, guidance_scale=9.0)
    second = next(a)
    assert np.array_equal(first, expected[0]) and np.array_equal(second, expected[1])
    assert not np.array_equal(other, first)  # the other guidance does make other audio
    a.close(), b.close()


def test_a_reader_gone_before_the_header_and_a_closed_output_end_in_one_line(capsys, monkeypatch):
    """`-o - | true`: the reader is gone before the header is written; the render ends quietly (exit 0, no
    'Broken pipe'). Standard output closed altogether (Python then has none): one line, before any model loads."""
    import types

    class GonePipe(io.RawIOBase):
        def writable(self):
            return True

        def write(self, data):
            raise BrokenPipeError(32, "Broken pipe")

    options = ["--model", "random:tiny", "--steps", "1", "--quiet", "--seconds", "20", "-o", "-"]
    monkeypatch.setattr(sys, "stdout", types.SimpleNamespace(buffer=GonePipe(), closed=False))
    assert main(["live", "rain", *options]) == 0
    err = capsys.readouterr().err
    assert "Broken pipe" not in err and "Traceback" not in err, err
    monkeypatch.setattr(sys, "stdout", None)
    assert main(["live", "rain", *options]) == 2
    assert "-o -: standard output is closed" in capsys.readouterr().err


def test_ctrl_c_names_what_was_kept_for_the_output_given():
    from audioldm_tiled.cli import _what_was_kept

    assert _what_was_kept(["live", "rain", "--forever", "-o", "-"]) == "nothing was kept"
    assert _what_was_kept(["live", "rain", "--forever", "--output=bed.wav"]).startswith("bed.wav.part keeps")


def test_resume_dead_ends_are_closed(tmp_path, caplog):
    """A render shorter than one window says it cannot be extended (it has no state); a refused extension of a
    finished render leaves no copy of it behind, and the next render of the name starts."""
    import logging

    caplog.set_level(logging.INFO, logger="audioldm_tiled.cli")
    short = tmp_path / "short.wav"
    options = ["--model", "random:tiny", "--steps", "1", "--quiet"]
    assert main(["live", "rain", "--seconds", "2", "-o", str(short), *options]) == 0
    assert "cannot be extended with --resume" in caplog.text and not (tmp_path / "short.wav.live").exists()
    out = tmp_path / "bed.wav"
    assert main(["live", "rain", "--seconds", "12", "-o", str(out), *options]) == 0
    assert main(["live", "rain", "--seconds", "5", "-o", str(out), "--resume", *options]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bed.wav", "bed.wav.live", "short.wav"]
    assert main(["live", "rain", "--seconds", "3", "-o", str(out), *options]) == 0


def test_a_live_output_is_owned_by_one_render_from_the_start(tmp_path, capsys):
    """A part another render holds (its lock) is refused at once, before any model loads; once nothing holds it,
    a part without a state (a render stopped in its first window) is no dead end: a new render replaces it, and
    --resume says why there is nothing to resume."""
    import fcntl

    out = tmp_path / "same.wav"
    part = tmp_path / "same.wav.part"
    part.write_bytes(b"RIFF")
    options = ["--model", "random:tiny", "--steps", "1", "--quiet"]
    with open(part, "rb") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        started = time.monotonic()
        assert main(["live", "snow", "--seconds", "3", "-o", str(out), *options]) != 0
        assert time.monotonic() - started < 10 and "another render is writing" in capsys.readouterr().err
    assert main(["live", "rain", "--seconds", "3", "-o", str(out), "--resume", *options]) == 2
    assert "holds no whole window (the render stopped in its first)" in capsys.readouterr().err
    assert main(["live", "rain", "--seconds", "3", "-o", str(out), *options]) == 0
    assert sf.info(out).frames == 3 * 16000 and not part.exists()


def test_odd_live_outputs_fail_first_or_say_where_the_audio_is(tmp_path, capsys):
    """Names whose part or state would be too long fail before any model loads; through a symbolic link onto
    another folder the part grows beside the file the link leads to; a file that appears under --no-overwrite
    while rendering leaves the render in its part, and the message says so."""
    from audioldm_tiled.files import OutputError
    from audioldm_tiled.render import render_live

    long = tmp_path / ("r" * 247 + ".wav")  # 251 bytes: its .part would be 256
    assert main(["live", "rain", "--seconds", "3", "-o", str(long), "--model", "no/such-model"]) == 2
    assert "more than the 255 its filesystem takes" in capsys.readouterr().err
    import tempfile

    # Another filesystem where there is one (a move across filesystems fails): /dev/shm is a tmpfs on Linux.
    other = "/dev/shm" if os.path.isdir("/dev/shm") and os.stat("/dev/shm").st_dev != os.stat(tmp_path).st_dev \
        else str(tmp_path)
    elsewhere = Path(tempfile.mkdtemp(dir=other))
    link = tmp_path / "link.wav"
    link.symlink_to(elsewhere / "target.wav")
    pipe = random_pipeline("tiny")
    pipe.set_progress_bar_config(disable=True)
    render_live(pipe, link, "rain", audio_length_in_s=3, num_inference_steps=1, generator=_seed())
    assert link.is_symlink() and sf.info(elsewhere / "target.wav").frames == 3 * 16000
    assert not (tmp_path / "link.wav.part").exists()
    shutil.rmtree(elsewhere)
    late = tmp_path / "late.wav"
    with pytest.raises(OutputError, match="late.wav.part"):
        render_live(pipe, late, "rain", audio_length_in_s=3, num_inference_steps=1, generator=_seed(),
                    overwrite=False, also=lambda piece: late.write_bytes(b"appeared"))
    assert late.read_bytes() == b"appeared" and sf.info(tmp_path / "late.wav.part").frames == 3 * 16000


def test_play_without_an_output_device_is_one_line(capsys, monkeypatch):
    """sounddevice and PortAudio present, no device to play on: the error PortAudio gives, in one line."""
    import types

    class NoDevice:
        def __init__(self, **kwargs):
            raise RuntimeError("Error querying device -1")  # what sounddevice.PortAudioError says

    monkeypatch.setitem(sys.modules, "sounddevice", types.SimpleNamespace(OutputStream=NoDevice))
    assert main(["live", "rain", "--model", "random:tiny", "--steps", "1", "--seconds", "3", "--play", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "cannot play on the sound card: Error querying device -1" in err and "Traceback" not in err


def test_a_full_disk_ends_a_live_render_as_a_stop_does(tiny_pipe, tmp_path, monkeypatch):
    """The disk fills while an endless render writes its second window: the windows whole so far become the file,
    their state beside it, and the error says so in one line; a resume once there is room goes on from there."""
    import errno

    from audioldm_tiled.files import OutputError
    from audioldm_tiled.render import render_live
    from audioldm_tiled.wav_stream import GrowingWav

    write, calls = GrowingWav.write, []

    def fill_up(self, samples):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        write(self, samples)

    monkeypatch.setattr(GrowingWav, "write", fill_up)
    out = tmp_path / "bed.wav"
    with pytest.raises(OutputError, match=r"no space left on device after [\d.]+ s: they are kept in .*bed.wav"):
        render_live(tiny_pipe, out, "rain", num_inference_steps=1, generator=_seed())
    first = sf.info(out).frames
    assert first > 0 and (tmp_path / "bed.wav.live").is_file() and not (tmp_path / "bed.wav.part").exists()
    monkeypatch.undo()
    render_live(tiny_pipe, out, "rain", audio_length_in_s=20, num_inference_steps=1, generator=_seed(), resume=True)
    assert sf.info(out).frames == 20 * 16000


def test_a_timeline_past_a_year_is_refused_at_once(tiny_pipe):
    """A segment's start beyond any render (1e308 s gave a traceback from deep inside the plan) is named."""
    started = time.monotonic()
    with pytest.raises(ValueError, match=r"segment 1's start must be a finite number of seconds, at most 3.1536e\+07"):
        tiny_pipe.live([(0, "rain"), (1e308, "snow")])
    assert time.monotonic() - started < 5
