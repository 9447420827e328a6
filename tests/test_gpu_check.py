"""The one-shot accelerator check runs on the CPU with tiny models and a short budget, and writes its JSON."""

import json
import subprocess
import sys


def test_gpu_check_runs_on_the_cpu_and_writes_every_row(tmp_path):
    out = tmp_path / "gpu.json"
    command = [sys.executable, "-m", "audioldm_tiled", "bench", "gpu", "--device", "cpu", "--arch", "tiny",
               "--seconds", "3", "--hour-seconds", "6", "--steps", "1", "--budget-s", "300", "--json", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    rows = {row["check"]: row for row in report["rows"]}
    assert list(rows) == ["main-job-fp16", "live-fp16", "parent-single-pass", "decode", "decode-bf16-precision",
                          "vocoder", "fallback", "hour-stream-fast", "hour-exact-host", "audiosr", "main-job-fp32"]
    precision = rows["decode-bf16-precision"]
    assert precision["float32"]["snr_db_vs_float32_decode"] > 90  # the reference itself, tile for tile
    assert precision["model"]["snr_db_vs_float32_decode"] < precision["output"]["snr_db_vs_float32_decode"] < 90
    assert rows["main-job-fp16"]["samples"] == 3 * 16000 and rows["main-job-fp16"]["denoise_s"] > 0
    live = rows["live-fp16"]
    assert live["seconds"] == 3 and 0 < live["first_audio_s"] <= live["time_s"] and live["real_time_factor"] > 0
    assert rows["decode"]["exact"]["snr_db_vs_fp32_untiled"] > 90  # fp32 on the CPU: exact equals untiled
    assert rows["vocoder"]["chunked-bfloat16"]["snr_db_vs_fp32"] > 20
    assert rows["fallback"]["skipped"].startswith("needs CUDA")
    assert rows["hour-stream-fast"]["samples"] == 6 * 16000
    assert rows["decode"]["exact-host"]["snr_db_vs_fp32_untiled"] > 90
    assert rows["hour-exact-host"]["mel_frames"] == 6 * 100
    assert rows["audiosr"]["tiled-3s"]["samples_written"] == 3 * 48000 and rows["audiosr"]["tiled-3s"]["time_s"] > 0
    assert "original-3s" in rows["audiosr"]
    assert report["machine"] and report["torch"]


def test_gpu_check_stops_within_its_budget(tmp_path):
    out = tmp_path / "gpu.json"
    command = [sys.executable, "-m", "audioldm_tiled", "bench", "gpu", "--device", "cpu", "--arch", "tiny",
               "--seconds", "3", "--steps", "1", "--budget-s", "0.5", "--json", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    rows = json.loads(out.read_text())["rows"]
    assert done.returncode == 1 and "ran out of time" in done.stderr
    assert "budget was spent" in rows[0]["error"] and all(row["skipped"] for row in rows[1:])
