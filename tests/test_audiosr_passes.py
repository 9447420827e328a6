"""AudioSR's front end and post-processing in passes over spools (``audiosr.passes``, ``audiosr.recording``)
against the whole-signal calls the original makes, with blocks small and odd enough that every pass crosses many
block boundaries."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import signal as scipy_signal

from audioldm_tiled import spool
from audioldm_tiled.audiosr import front_end, passes, recording
from audioldm_tiled.audiosr.components import SAMPLE_RATE
from audioldm_tiled.spool import ArraySignal, Spool


@pytest.fixture
def small_blocks(monkeypatch):
    monkeypatch.setattr(spool, "BLOCK_ROWS", 10007)
    monkeypatch.setattr(recording, "FRAME_BLOCK", 97)


def _noise(samples: int, channels: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((samples, channels)).astype(np.float32)


@pytest.mark.parametrize("kind", front_end.FILTER_TYPES)
def test_the_forward_backward_filter_equals_scipys(kind):
    """The same recursion sample for sample, its extension in the input's dtype: float64 rounding at most
    (measured: identical)."""
    x = _noise(30001, 2)
    sos, _ = front_end.low_pass_design(7031.7, kind)
    mine = passes.filtfilt(sos, ArraySignal(x), rows=1000)
    np.testing.assert_allclose(mine.read(0, mine.length), scipy_signal.sosfiltfilt(sos, x, axis=0), rtol=0,
                               atol=1e-12)
    np.testing.assert_allclose(mine.read(2999, 4001), scipy_signal.sosfiltfilt(sos, x, axis=0)[2999:4001], atol=1e-12)


@pytest.mark.parametrize("up, down", [(14062, 48000), (48000, 14062), (14000, 48000), (3, 3)])
def test_resampling_in_blocks_equals_scipys(up, down):
    """Blocks that start on the factor's period, with the FIR filter's reach on each side: the whole call's terms
    (measured: identical; float64 rounding allowed)."""
    x = _noise(30001, 2).astype(np.float64)
    mine = passes.resample(ArraySignal(x), up, down, rows=777)
    expected = scipy_signal.resample_poly(x, up, down, axis=0)
    assert mine.length == expected.shape[0]
    np.testing.assert_allclose(mine.read(0, mine.length), expected, rtol=0, atol=1e-12)


def test_padding_and_the_inverse_stft_in_ranges_equal_the_whole():
    import librosa

    x = _noise(30001, 2)
    whole = ArraySignal(x)
    np.testing.assert_array_equal(passes.padded(whole, 0, 30001 + 1568, 784, "reflect"),
                                  np.pad(x, ((784, 784), (0, 0)), mode="reflect"))
    np.testing.assert_array_equal(passes.padded(whole, 5, 32046, 1024, "zeros"),
                                  np.pad(x, ((1024, 1024), (0, 0)))[5:-3])
    spectrum = librosa.stft(x.T, n_fft=2048, hop_length=512)
    expected = librosa.istft(spectrum, hop_length=512, n_fft=2048, length=30001).T
    pieces = [passes.istft_range(lambda a, b: spectrum[..., a:b], lo, min(30001, lo + 2999), spectrum.shape[-1],
                                 2048, 512) for lo in range(0, 30001, 2999)]
    # float32 like librosa's; the same frames and window sums (measured: identical)
    np.testing.assert_allclose(np.concatenate(pieces), expected, rtol=0, atol=1e-6)


def _two_channels(seconds: float, rate: int) -> np.ndarray:
    """Band-limited noise at two different cutoffs (6 and 11 kHz at 48 kHz), as (samples, 2)."""
    x = _noise(round(seconds * rate), 2, seed=1)
    for column, hz in enumerate((6000, 11000)):
        sos = scipy_signal.butter(10, min(hz, 0.45 * rate) / (rate / 2), output="sos")
        x[:, column] = scipy_signal.sosfilt(sos, x[:, column]) * (0.3 + column)
    return x + 0.01


def test_a_recording_prepared_in_passes_equals_the_whole_front_end(small_blocks):
    """44.1 kHz stereo, each channel with its own cutoff: the low-passed recording, its log-mel, the mel band and
    the post-processing's bin equal the in-memory front end's of each channel. Tolerance: the mean and peak are
    summed in float64 here and in float32 by the original (1e-6 of the peak), the rest follows."""
    import librosa
    import soxr

    x = _two_channels(3.0, 44100)
    prepared = recording.prepare(iter(np.array_split(x, 7)), 44100, 2, 3.0, seed=5, show_progress=False)
    at_48 = soxr.resample(x, 44100, SAMPLE_RATE, quality="VHQ")
    assert prepared.length == at_48.shape[0] and prepared.padded_length == round(5.12 * SAMPLE_RATE)
    low_mel = prepared.low_mel.read(0, prepared.low_mel.length)
    for column in range(2):
        ready = front_end.prepared(at_48[:, column])
        magnitude, _ = front_end.magnitude_and_log_mel(torch.from_numpy(ready)[None])
        low = front_end.low_passed(ready, front_end.cutoff_hz(magnitude[0]), front_end.filter_type(5))
        low = low.astype(np.float32)
        mine = prepared.low.read(0, prepared.low.length)[:, column]
        assert np.abs(mine - low).max() < 1e-6 * np.abs(low).max()  # measured 1e-7
        _, expected_mel = front_end.magnitude_and_log_mel(torch.from_numpy(low)[None])
        # measured 6e-4: the stop band's mel is near the log's floor (1e-5), where float32 rounding of the signal
        # is a large share of it
        assert np.abs(low_mel[:, column, 0] - expected_mel[0].numpy()).max() < 1e-3
        assert prepared.mel_bands[column] == front_end.cutoff_bin(torch.exp(expected_mel[0]))
        spectrum = np.abs(librosa.stft(low))
        assert prepared.post_bins[column] == front_end.cutoff_bin(torch.from_numpy(spectrum.T))
        np.testing.assert_allclose(prepared.post_low_energy[column], spectrum[prepared.post_bins[column]].sum(),
                                   rtol=1e-5)
    assert prepared.mel_bands[0] < prepared.mel_bands[1] and prepared.post_bins[0] < prepared.post_bins[1]
    prepared.close()


def _post_processed_whole(out: np.ndarray, low: np.ndarray, length: int) -> np.ndarray:
    """The original's ``postprocessing`` then its peak and mean, on whole arrays (samples,) float32."""
    import librosa

    spectrum_low, spectrum_out = librosa.stft(low), librosa.stft(out)
    cutoff = front_end.cutoff_bin(torch.from_numpy(np.abs(spectrum_low).T))
    ratio = np.sum(np.abs(spectrum_low[cutoff])) / np.sum(np.abs(spectrum_out[cutoff]))
    spectrum_out[:cutoff] = spectrum_low[:cutoff] / min(max(ratio, 0.8), 1.2)
    audio = librosa.istft(spectrum_out, length=out.shape[0])
    audio = 0.5 * audio / np.max(np.abs(audio))
    return (audio - np.mean(audio))[:length]


def test_post_processing_in_passes_equals_the_whole(small_blocks):
    """The vocoder's output, its low bins replaced by the input's and scaled by the whole recording's ratio, then
    its whole peak and mean: equal to the whole-array computation to float32 rounding (1e-6 of the peak)."""
    x = _two_channels(3.0, SAMPLE_RATE)
    prepared = recording.prepare(iter([x]), SAMPLE_RATE, 2, 3.0, seed=2, show_progress=False)
    low = prepared.low.read(0, prepared.low.length)
    out = _noise(prepared.padded_length + 16, 2, seed=3) * np.float32(0.2)
    with Spool((2,), np.float32) as spooled:
        spooled.append(out)
        mine = np.concatenate(list(recording.post_processed(spooled, prepared, show_progress=False)), axis=1)
    assert mine.shape == (2, x.shape[0])
    for column in range(2):
        expected = _post_processed_whole(out[:, column], low[:, column], x.shape[0])
        assert np.abs(mine[column] - expected).max() < 1e-6
    prepared.close()


def test_a_silent_channel_is_delivered_silent(small_blocks):
    x = _two_channels(1.0, SAMPLE_RATE)
    x[:, 1] = 0
    prepared = recording.prepare(iter([x]), SAMPLE_RATE, 2, 1.0, seed=0, show_progress=False)
    with Spool((2,), np.float32) as spooled:
        spooled.append(_noise(prepared.padded_length + 16, 2) * np.float32(0.2))
        mine = np.concatenate(list(recording.post_processed(spooled, prepared, show_progress=False)), axis=1)
    assert np.abs(mine[0]).max() == pytest.approx(0.5, abs=0.05) and not mine[1].any()
    prepared.close()


def test_where_the_blocks_fall_changes_nothing(monkeypatch):
    """A 5 s stereo recording at 16 kHz through the whole pipeline (tiny random weights, two steps) with the
    passes' blocks at their defaults and at 10007 samples and 97 frames (25 blocks, 11 of frames): the same 48 kHz
    output but for the order of float sums (the figures' sums are float64; 1e-5 of the peak allows float32
    rounding through the model's layers)."""
    from audioldm_tiled.loading import load_pipeline

    pipe = load_pipeline("random:audiosr-tiny")
    pipe.set_progress_bar_config(disable=True)
    recording_16k = np.ascontiguousarray(_two_channels(5.0, 16000).T)

    def run() -> np.ndarray:
        return pipe(recording_16k, sampling_rate=16000, num_inference_steps=2,
                    generator=torch.Generator().manual_seed(0)).audios

    whole = run()
    monkeypatch.setattr(spool, "BLOCK_ROWS", 10007)
    monkeypatch.setattr(recording, "FRAME_BLOCK", 97)
    in_blocks = run()
    assert whole.shape == (2, 5 * SAMPLE_RATE) and np.abs(whole).max() > 0.1
    assert np.abs(in_blocks - whole).max() < 1e-5 * np.abs(whole).max()


def test_the_condition_is_sampled_tile_by_tile_as_from_the_whole_posterior():
    """The conditioning latent, built as each exact encode tile comes into noise drawn once: untiled, the
    original's ``encode(mel).latent_dist.sample(generator) * scale`` bit for bit; in 8 tiles, the same within exact
    tiling's float-order tolerance (a tile's own noise draw would differ by the noise itself)."""
    from audioldm_tiled import TilingConfig, tiled_encode
    from audioldm_tiled.loading import load_pipeline
    from conftest import EXACT_TOLERANCE, relative_error

    pipe = load_pipeline("random:audiosr-tiny")
    prepared = recording.prepare([_noise(16000 * 5, 1)], 16000, 1, 5.0, seed=0, show_progress=False)
    try:
        mel = torch.from_numpy(prepared.low_mel.read(0, prepared.low_mel.length)).permute(1, 2, 0, 3)
        whole = tiled_encode(pipe.vae, mel, TilingConfig(enabled=False)).sample(torch.Generator().manual_seed(0))
        whole = whole * pipe.vae.config.scaling_factor
        untiled = pipe._condition(prepared, TilingConfig(enabled=False), torch.Generator().manual_seed(0))
        tiled = pipe._condition(prepared, TilingConfig(enabled=True, tile_frames=8, show_progress=False),
                                torch.Generator().manual_seed(0))
    finally:
        prepared.close()
    assert whole.shape == (1, 16, 64, 32) and torch.equal(untiled, whole)
    assert relative_error(tiled, whole) < EXACT_TOLERANCE
