"""Files people deliver: the loudness meter against pyloudnorm, the file sink's formats, rates, loudness targets and
tags, its atomicity, and the engine call that feeds it (``pipe.render``, ``render_to_file``, the command line)."""

import json
import logging
import math
import tracemalloc

import numpy as np
import pyloudnorm
import pytest
import soundfile as sf
import soxr
from scipy.signal import resample_poly

from audioldm_tiled.formats import FORMATS
from audioldm_tiled.loudness import TRUE_PEAK_RATE, LoudnessMeter
from audioldm_tiled.sinks import ArraySink, FileSink

RATE = 16000


def noise_pieces(seconds: float, rate: int = RATE, piece_s: float = 1.0, seed: int = 0):
    """Gaussian noise under a slowly varying level, in pieces (1, samples) as the engine hands them out."""
    rng = np.random.default_rng(seed)
    total, step = int(seconds * rate), int(piece_s * rate)
    for start in range(0, total, step):
        n = min(step, total - start)
        t = (start + np.arange(n)) / rate
        level = 0.05 * (1.5 + np.sin(2 * np.pi * t / 37.0))
        yield (level * rng.standard_normal(n)).astype(np.float32)[None]


def tone_pieces(seconds: float, rate: int = RATE, piece_s: float = 0.5):
    """Two steady tones: what lossy codecs keep sample by sample closely enough to compare (noise they do not)."""
    total, step = int(seconds * rate), int(piece_s * rate)
    for start in range(0, total, step):
        t = np.arange(start, min(start + step, total)) / rate
        yield (0.3 * np.sin(2 * np.pi * 440 * t) + 0.1 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)[None]


def whole(seconds: float, **kwargs) -> np.ndarray:
    return np.concatenate(list(noise_pieces(seconds, **kwargs)), axis=1)[0]


def deliver(sink, pieces, rate: int = RATE):
    sink.open(rate, 1, {})
    for piece in pieces:
        sink.write(piece)
    return sink.commit()


# ------------------------------------------------------------------------------------------------------------- meter
@pytest.mark.parametrize("rate, seconds", [(16000, 37.3), (48000, 12.0), (44100, 2.0)])
def test_the_streaming_meter_equals_pyloudnorm_on_the_whole_signal(rate, seconds):
    """Same blocks, same filters with their state carried across pieces of random sizes, same gating: the
    integrated loudness and the loudness range agree with pyloudnorm's whole-signal figures to float rounding (the
    pieces are float32, as the engine's; pyloudnorm is handed the same float32 samples)."""
    signal = whole(seconds, rate=rate)
    meter, rng, start = LoudnessMeter(rate), np.random.default_rng(1), 0
    while start < signal.size:
        size = int(rng.integers(1, rate))
        meter.add(signal[start : start + size])
        start += size
    measured = meter.result()
    reference = pyloudnorm.Meter(rate)
    assert abs(measured.integrated_lufs - reference.integrated_loudness(signal.astype(np.float64))) < 1e-6
    assert abs(measured.range_lu - reference.loudness_range(signal.astype(np.float64))) < 1e-6
    # True peak: at least the sample peak, and the peak of scipy's polyphase oversampling to the same 192 kHz or
    # more within 0.1 dB (another interpolation filter: they differ by hundredths of a dB).
    sample_peak = 20 * np.log10(np.abs(signal).max())
    oversampled = 20 * np.log10(np.abs(resample_poly(signal, math.ceil(TRUE_PEAK_RATE / rate), 1)).max())
    assert measured.true_peak_dbtp >= sample_peak
    assert abs(measured.true_peak_dbtp - max(oversampled, sample_peak)) < 0.1


def test_short_or_silent_audio_has_no_loudness_and_keeps_its_level(tmp_path, caplog):
    meter = LoudnessMeter(RATE)
    meter.add(np.zeros(RATE, np.float32))
    assert meter.result().integrated_lufs is None
    short = LoudnessMeter(RATE)
    short.add(np.full(RATE // 10, 0.1, np.float32))  # 0.1 s: less than one 400 ms block
    assert short.result().integrated_lufs is None and short.result is not None
    out = tmp_path / "quiet.wav"
    delivered = deliver(FileSink(out, loudness=-16, subtype="FLOAT"), [np.full((1, 800), 1e-4, np.float32)])
    assert delivered.gain_db == 0.0 and "too short or too quiet" in caplog.text
    assert np.array_equal(sf.read(out, dtype="float32")[0], np.full(800, 1e-4, np.float32))


# ------------------------------------------------------------------------------------------------- the file sink
def test_a_600_s_render_as_48_khz_flac_at_minus_16_lufs(tmp_path):
    """The acceptance case: 600 s handed out at 16 kHz in 1 s pieces become a 48 kHz 24-bit FLAC at -16 LUFS.
    Decoded, it is soxr's one-shot resampling of the whole, times the gain, to within two 24-bit steps (2^-22:
    libsndfile writes x * (2^23 - 1) and reads back / 2^23, off by up to one step at full scale, plus half a step
    of rounding and float32's rounding of the product, 6e-8 of values under 1); pyloudnorm measures it at
    -16 +- 0.1 LU and its true peak under the -1 dBTP limit; the prompt is in its tags; and the sink's
    memory does not grow with the length (Python-visible allocations, numpy's included, 60 s against 600 s)."""
    out = tmp_path / "bed.flac"
    tags = {"title": "rain on a tin roof", "comment": json.dumps({"seed": 7})}

    def peak_memory(seconds, path):
        tracemalloc.start()
        try:
            delivered = deliver(FileSink(path, subtype="PCM_24", sample_rate=48000, loudness=-16, true_peak=-1,
                                         tags=tags), noise_pieces(seconds))
            return delivered, tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    _, short_peak = peak_memory(60, tmp_path / "short.flac")
    delivered, long_peak = peak_memory(600, out)
    assert long_peak < 1.25 * short_peak, (short_peak, long_peak)

    decoded, rate = sf.read(out, dtype="float64")
    assert rate == 48000 and decoded.size == 600 * 48000 == delivered.frames
    expected = soxr.resample(whole(600), RATE, 48000).astype(np.float64) * np.float32(10 ** (delivered.gain_db / 20))
    assert np.abs(decoded - expected).max() <= 2.0**-22
    assert abs(pyloudnorm.Meter(48000).integrated_loudness(decoded) + 16) < 0.1
    assert abs(delivered.loudness.integrated_lufs + 16) < 0.1
    # The true peak as the meter measures it (checked against scipy's polyphase oversampling above), and the
    # samples themselves, under the limit.
    assert delivered.loudness.true_peak_dbtp < -1 and 20 * np.log10(np.abs(decoded).max()) < -1
    assert sf.SoundFile(out).copy_metadata()["title"] == "rain on a tin roof"


def test_a_loudness_target_stops_at_the_true_peak_limit(tmp_path, caplog):
    """Normalised, never limited: where -6 LUFS would push noise's peaks past -1 dBTP, the gain stops there."""
    out = tmp_path / "loud.wav"
    delivered = deliver(FileSink(out, loudness=-6, true_peak=-1, subtype="FLOAT"), noise_pieces(20))
    assert "over the -1.0 dBTP limit" in caplog.text
    assert abs(delivered.loudness.true_peak_dbtp + 1) < 0.01 and delivered.loudness.integrated_lufs < -7


@pytest.mark.parametrize("extension", list(FORMATS))
def test_every_format_carries_its_samples_rate_and_tags(tmp_path, extension):
    """Lossless formats give the samples back to within one 16-bit step (libsndfile writes x * 32767, reads / 32768:
    up to a step at full scale, with half a step of rounding under it); lossy ones keep the length,
    the rate and the sound (signal to error above 10 dB); every one carries its tags."""
    out = tmp_path / f"rain.{extension}"
    rate = 48000 if extension == "opus" else RATE
    signal = np.concatenate(list(tone_pieces(3)), axis=1)[0]
    delivered = deliver(FileSink(out, sample_rate=rate, tags={"title": "rain", "comment": "seed 1"}), tone_pieces(3))
    decoded, read_rate = sf.read(out, dtype="float32")
    assert read_rate == rate and decoded.shape == (delivered.frames,) == (3 * rate,)
    metadata = sf.SoundFile(out).copy_metadata()
    assert metadata["title"] == "rain" and metadata["comment"] == "seed 1"
    reference = signal if rate == RATE else soxr.resample(signal, RATE, rate)
    if extension in ("wav", "flac"):
        assert np.abs(decoded - reference).max() <= 2.0**-15
    else:
        error = np.mean((decoded - reference) ** 2)
        assert 10 * np.log10(np.mean(reference**2) / error) > 10


def test_the_array_sink_resamples_as_soxr_does_in_one_shot():
    sink = ArraySink(sample_rate=44100)
    sink.open(RATE, 2, {})
    pieces = [np.stack([p[0], -p[0]]) for p in noise_pieces(5, piece_s=0.37)]
    for piece in pieces:
        sink.write(piece)
    audio = sink.commit()
    whole_ = np.concatenate(pieces, axis=1)
    assert audio.shape == (2, 5 * 44100)
    assert np.array_equal(audio, soxr.resample(whole_.T, RATE, 44100).T)


@pytest.mark.parametrize("arguments, message", [
    (dict(path="a.aiff"), "names no format this library writes; use one of wav, flac, ogg, opus, mp3"),
    (dict(path="a.flac", subtype="FLOAT"), "`subtype` 'FLOAT' is not one of flac's: PCM_16, PCM_24"),
    (dict(path="a.opus", sample_rate=44100), "opus files take a `sample_rate` of 8000, 12000, 16000, 24000, 48000"),
    (dict(path="a.wav", sample_rate=0), "`sample_rate` must be a whole number of Hz"),
    (dict(path="a.wav", loudness=5), "`loudness` must be a number from -70 to 0"),
    (dict(path="a.wav", loudness=float("nan")), "`loudness` must be a number from -70 to 0"),
    (dict(path="a.wav", true_peak=3), "`true_peak` must be a number from -70 to 0"),
    (dict(path="a.wav", tags={"prompt": "x"}), "`tags` may name title, comment"),
    (dict(path="a.mp3", format="wave"), "`format` 'wave' names no format"),
])
def test_bad_delivery_arguments_are_named_before_anything_is_written(tmp_path, arguments, message):
    path = tmp_path / arguments.pop("path")
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        FileSink(path, **arguments)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("loudness", [None, -20.0])
def test_a_failed_render_leaves_no_file_and_keeps_the_old_one(tmp_path, loudness):
    """Aborted after some pieces (the engine aborts its sink on any failure): neither the output's temporary file
    nor the loudness pass's copy stays, and a file that was there is untouched."""
    out = tmp_path / "bed.ogg"
    out.write_bytes(b"an earlier render")
    sink = FileSink(out, loudness=loudness)
    sink.open(RATE, 1, {})
    for piece in noise_pieces(3):
        sink.write(piece)
    sink.abort()
    assert out.read_bytes() == b"an earlier render" and sorted(p.name for p in tmp_path.iterdir()) == ["bed.ogg"]
    with pytest.raises(ValueError, match="exists, and overwriting was refused"):
        FileSink(out, overwrite=False)


def test_a_sink_refuses_a_batch_of_waveforms(tmp_path):
    with pytest.raises(ValueError, match="a file holds one waveform; this render makes 2"):
        FileSink(tmp_path / "a.wav").open(RATE, 2, {})
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------------------- the engine
def test_render_into_a_file_is_the_call_resampled(tiny_pipe, tmp_path):
    """The engine call feeds the sink the call's waveform: a float WAV at 16 kHz is ``__call__``'s audio sample for
    sample, and a 48 kHz one is its soxr resampling; the tags say what the plan resolved."""
    import torch

    from audioldm_tiled import render_to_file
    from audioldm_tiled.request import Request

    called = tiny_pipe("rain", audio_length_in_s=3.0, num_inference_steps=2,
                       generator=torch.Generator().manual_seed(5)).audios[0]
    request = Request(prompt="rain", audio_length_in_s=3.0, num_inference_steps=2, seed=5)
    plain = render_to_file(tiny_pipe, tmp_path / "a.wav", request, subtype="FLOAT")
    assert np.array_equal(sf.read(plain.path, dtype="float32")[0], called)
    wide = render_to_file(tiny_pipe, tmp_path / "b.wav", request, subtype="FLOAT", sample_rate=48000)
    assert np.array_equal(sf.read(wide.path, dtype="float32")[0], soxr.resample(called, RATE, 48000))
    recipe = json.loads(sf.SoundFile(wide.path).copy_metadata()["comment"])
    assert recipe == wide.recipe == {"prompt": "rain", "negative_prompt": None, "kind": "generate", "seconds": 3.0,
                                     "steps": 2, "guidance": 2.5, "seed": 5, "model": "AudioLDMTiledPipeline"}
    with pytest.raises(ValueError, match="a Request carries the call's arguments; got seed beside it"):
        render_to_file(tiny_pipe, tmp_path / "c.wav", request, seed=3)


def test_the_command_line_builds_its_request_once_and_delivers_flac_at_48_khz(tmp_path, monkeypatch, caplog):
    from audioldm_tiled import request as request_module
    from audioldm_tiled.cli import main

    caplog.set_level(logging.INFO, logger="audioldm_tiled.cli")
    built = []
    original = request_module.Request.__post_init__
    monkeypatch.setattr(request_module.Request, "__post_init__", lambda self: (built.append(self), original(self)))
    out = tmp_path / "rain.flac"
    assert main(["rain on a tin roof", "--seconds", "2", "-o", str(out), "--sample-rate", "48000", "--sample-format",
                 "24", "--model", "random:tiny", "--steps", "1", "--seed", "3", "--quiet"]) == 0
    assert len(built) == 1
    info = sf.info(out)
    assert (info.format, info.subtype, info.samplerate, info.frames) == ("FLAC", "PCM_24", 48000, 96000)
    metadata = sf.SoundFile(out).copy_metadata()
    assert metadata["title"] == "rain on a tin roof" and json.loads(metadata["comment"])["seed"] == 3
    assert f"wrote {out} (2 s at 48000 Hz" in caplog.text


@pytest.mark.parametrize("options, message", [
    (["-o", "OUT.opus", "--sample-rate", "44100"], "opus files take a --sample-rate of 8000"),
    (["-o", "OUT.aiff"], "names no format this library writes"),
    (["-o", "OUT.flac", "--float"], "--sample-format 'FLOAT' is not one of flac's"),
    (["-o", "OUT.wav", "--loudness", "3"], "--loudness must be a number from -70 to 0"),
])
def test_delivery_options_are_checked_before_the_model(tmp_path, capsys, monkeypatch, options, message):
    import audioldm_tiled.loading as loading
    from audioldm_tiled.cli import main

    monkeypatch.setattr(loading, "load_pipeline", lambda *a, **k: pytest.fail("a model was loaded"))
    options = [str(tmp_path / ("out" + o[3:])) if o.startswith("OUT.") else o for o in options]
    assert main(["rain", *options]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_a_live_render_follows_a_loudness_target_as_it_is_heard():
    """Noise at about -30 LUFS in 6.4 s pieces (a live render's): the gain climbs at most 1 dB a piece, ramped
    across each piece (no step between pieces), no sample passes the -1 dB limit, and once the gain has caught up
    the audio is within 0.5 LU of -16."""
    from audioldm_tiled.live_sinks import LoudnessFollower

    pieces = [0.2 * piece for piece in noise_pieces(200, piece_s=6.4)]
    sink = LoudnessFollower(ArraySink(), -16.0, peak_db=-1.0)
    sink.open(RATE, 1, {})
    gains = []
    for piece in pieces:
        sink.write(piece)
        gains.append(sink.gain_db)
    out = sink.commit()[0]
    source = np.concatenate(pieces, axis=1)[0]
    applied = out / np.where(source == 0, 1, source)
    assert np.abs(np.diff(gains, prepend=0.0)).max() <= 1.0 + 1e-9
    assert np.abs(np.diff(20 * np.log10(applied))).max() < 0.01  # a ramp, not a step
    assert np.abs(out).max() <= 10 ** (-1 / 20) + 1e-6
    assert abs(pyloudnorm.Meter(RATE).integrated_loudness(out[-60 * RATE :].astype(np.float64)) + 16) < 0.5


def test_a_live_file_keeps_its_level_and_says_how_to_normalise_it(tmp_path, capsys):
    from audioldm_tiled.cli import main

    assert main(["live", "rain", "--seconds", "5", "-o", str(tmp_path / "a.wav"), "--loudness", "-16"]) == 2
    assert "a live file keeps its level so that it can resume" in capsys.readouterr().err
    assert main(["live", "rain", "--seconds", "5", "-o", "-", "--loudness", "-99"]) == 2
    assert "--loudness must be a number from -70 to 0" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
