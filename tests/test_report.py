import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from audioldm_tiled.benchmarks.seams import audio_seam_score

matplotlib = pytest.importorskip("matplotlib")  # the [plot] extra; installed by the test extra too

from audioldm_tiled.benchmarks.report import build_report  # noqa: E402
from audioldm_tiled.plots import save_spectrogram  # noqa: E402

FIXTURE = Path(__file__).parent / "data" / "bench_rows.json"  # written by `audioldm-tiled bench decode`
RATE = 16_000


def _png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big")


def _noise(seconds: float, seed: int) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal(int(seconds * RATE))).astype(np.float32)


BOUNDARIES = [2.5, 5.0, 7.5, 10.0, 12.5, 15.0, 17.5]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_seam_score_is_about_one_without_seams(seed):
    t = np.arange(20 * RATE) / RATE
    tone = (0.3 * np.sin(2 * np.pi * 300 * t)).astype(np.float32) + 0.1 * _noise(20, seed)
    # measured 0.99-1.04 on noise and on a tone in noise (seeds 0-2)
    for audio in (_noise(20, seed), tone):
        assert 0.85 < audio_seam_score(audio, BOUNDARIES) < 1.2


def test_seam_score_is_large_at_an_inserted_discontinuity():
    t = np.arange(20 * RATE) / RATE
    tone = (0.3 * np.sin(2 * np.pi * 300 * t)).astype(np.float32) + 0.1 * _noise(20, 0)
    flipped = tone.copy()
    for b in BOUNDARIES:  # the waveform's sign flips: what a misaligned chunk does to a steady tone
        flipped[int(b * RATE):] *= -1
    assert audio_seam_score(flipped, BOUNDARIES) > 3  # measured 4.3-4.6
    assert math.isnan(audio_seam_score(tone, [0.001]))  # no boundary away from the ends: no score


def test_spectrogram_of_long_audio_is_drawn_in_rows(tmp_path):
    path = tmp_path / "spec.png"
    save_spectrogram(path, _noise(150, 0), RATE, boundaries={"VAE tiles": [30, 90], "windows": [10.24]})
    width, height = _png_size(path)
    one_row = tmp_path / "short.png"
    save_spectrogram(one_row, _noise(20, 0), RATE)
    assert width == _png_size(one_row)[0] == 1200
    assert height > 2 * _png_size(one_row)[1]  # 150 s at 60 s per row: three rows
    assert 10_000 < path.stat().st_size < 2_000_000


def test_report_from_saved_bench_rows(tmp_path):
    rows = json.loads(FIXTURE.read_text())
    assert any("error" in r for r in rows) and any("peak_rss_bytes" in r for r in rows)
    report = build_report(rows, tmp_path).read_text()
    assert "| decode | exact |" in report and "out of memory" in report and "torch: " in report
    for name in ("memory.png", "time.png"):
        width, height = _png_size(tmp_path / name)
        assert (width, height) == (440, 336) and 5_000 < (tmp_path / name).stat().st_size < 500_000
    assert not (tmp_path / "end_to_end.png").exists()  # no generate rows in the fixture


def test_missing_matplotlib_names_the_extra(monkeypatch):
    import sys

    from audioldm_tiled.plots import require_matplotlib

    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # what an environment without it raises
    with pytest.raises(ImportError, match=r"audioldm-tiled\[plot\]"):
        require_matplotlib()


def test_bench_rows_from_child_processes_record_device_dtype_and_ratios():
    from audioldm_tiled.benchmarks.device import Target
    from audioldm_tiled.benchmarks.runner import Point, run_suite

    rows = run_suite("decode", [0.5], ["untiled", "exact"], dtype="fp32")  # bf16 convolutions take minutes on CPU
    assert [(r["variant"], r["device"], r["dtype"]) for r in rows] == [
        ("untiled", "cpu", "fp32"), ("exact", "cpu", "fp32")]
    assert rows[0]["output_shape"] == [1, 1, 48, 64] and rows[1]["time_ratio"] > 0 and rows[1]["snr_db"] > 40
    assert Target("cpu", "bf16").dtype == torch.bfloat16
    point = Point("decode", "exact", 0.5, 0, "/tmp/x.pt", "cpu", "bf16", 10**9)
    assert Point.parse(point.argv()) == point  # the child reads back every field, by name
