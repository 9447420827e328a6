"""The notebooks and sample scripts run as shipped, on random:tiny (environment switches keep them short)."""

import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = sorted((ROOT / "samples").glob("*.py"))
RATE = 16_000


def run_sample(name: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, str(ROOT / "samples" / name), *args], cwd=cwd, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def execute_notebook(name: str, env: dict, cwd: Path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    notebook = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code"), "commit it stripped"
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the kernel inherits this process's environment
    try:
        nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                                resources={"metadata": {"path": str(cwd)}}).execute()  # raises on any cell error
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    return notebook


@pytest.mark.parametrize("script", SAMPLES, ids=[s.name for s in SAMPLES])
def test_sample_help(script, capsys, monkeypatch):
    """Run as a script in this process, whose imports are already loaded (a child would spend seconds on them)."""
    monkeypatch.setattr(sys, "argv", [str(script), "--help"])
    with pytest.raises(SystemExit) as exit:
        runpy.run_path(str(script), run_name="__main__")
    assert exit.value.code in (0, None) and "usage:" in capsys.readouterr().out


def test_generate_wav_writes_a_wav_and_a_sidecar_per_prompt(tmp_path):
    (tmp_path / "prompts.txt").write_text("# ambience\nrain on a tin roof\n\ndistant thunder\n")
    run_sample("generate_wav.py", "wind", "--prompts-file", "prompts.txt", "--out-dir", "out", "--seconds", "1.5",
               "--steps", "1", "--seed", "7", "--model", "random:tiny", cwd=tmp_path)
    wavs = sorted((tmp_path / "out").glob("*.wav"))
    assert [w.name for w in wavs] == ["000-wind.wav", "001-rain-on-a-tin-roof.wav", "002-distant-thunder.wav"]
    for i, wav in enumerate(wavs):
        assert sf.info(wav).frames == 24_000
        sidecar = json.loads(wav.with_suffix(".json").read_text())
        assert sidecar["seed"] == 7 + i and sidecar["steps"] == 1 and sidecar["model"] == "random:tiny"


def test_timeline_soundscape_streams_one_wav(tmp_path):
    (tmp_path / "scape.json").write_text('[[0, "light rain"], [2, "thunderstorm"], [3.5, "birds at dawn"]]')
    run_sample("timeline_soundscape.py", "scape.json", "--seconds", "5", "-o", "scape.wav", "--steps", "1",
               "--model", "random:tiny", cwd=tmp_path)
    assert sf.info(tmp_path / "scape.wav").frames == 5 * RATE


def test_decode_latents_matches_the_pipeline(tmp_path):
    from audioldm_tiled import random_pipeline

    pipe = random_pipeline("tiny")
    pipe.set_progress_bar_config(disable=True)
    kwargs = dict(audio_length_in_s=2.3, num_inference_steps=2, generator=torch.Generator().manual_seed(0))
    latents = pipe("rain", output_type="latent", **kwargs).audios
    torch.save({"latents": latents, "audio_length_in_s": 2.3}, tmp_path / "rain.pt")
    run_sample("decode_latents.py", "rain.pt", "-o", "rain.wav", "--float", "--model", "random:tiny", cwd=tmp_path)
    decoded, rate = sf.read(tmp_path / "rain.wav", dtype="float32")
    kwargs["generator"] = torch.Generator().manual_seed(0)
    direct = pipe("rain", **kwargs).audios[0]
    assert rate == RATE and decoded.shape == direct.shape
    # the script's decode is tiled (exact mode), the pipeline's untiled here: equal to float rounding (~1e-6)
    assert np.abs(decoded - direct).max() <= 1e-4 * np.abs(direct).max()


def test_batch_queue_overlapped_renders_every_prompt(tmp_path):
    result = run_sample("batch_queue.py", "rain", "wind", "surf", "--out-dir", "out", "--seconds", "1", "--steps",
                        "1", "--model", "random:tiny", "--compare", cwd=tmp_path)
    assert "overlapped / one at a time" in result.stdout
    assert [sf.info(p).frames for p in sorted((tmp_path / "out").glob("*.wav"))] == [RATE] * 3


def test_long_soundscape_notebook_runs(tmp_path):
    notebook = execute_notebook("long_soundscape.ipynb", {
        "AUDIOLDM_TILED_MODEL": "random:tiny", "AUDIOLDM_TILED_SECONDS": "6", "AUDIOLDM_TILED_STEPS": "1",
        "AUDIOLDM_TILED_OUT": str(tmp_path)}, tmp_path)
    assert sf.info(tmp_path / "rain.wav").frames == sf.info(tmp_path / "rain-storm-dawn.wav").frames == 6 * RATE
    outputs = [o for cell in notebook.cells for o in cell.get("outputs", [])]
    assert sum("audio/wav" in str(o.get("data", {})) or "<audio" in str(o.get("data", {})) for o in outputs) == 2
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 2  # the two spectrograms


def test_tiling_explained_notebook_runs(tmp_path):
    notebook = execute_notebook("tiling_explained.ipynb", {"AUDIOLDM_TILED_VAE": "tiny",
                                                           "AUDIOLDM_TILED_SECONDS": "24"}, tmp_path)
    text = "".join(o.get("text", "") for cell in notebook.cells for o in cell.get("outputs", []))
    assert "exact (shared statistics)" in text and "proxy 128 frames" in text
    assert sum("image/png" in o.get("data", {}) for cell in notebook.cells for o in cell.get("outputs", [])) == 3


def test_sound_design_sample_loops_continues_and_regenerates(tmp_path):
    pytest.importorskip("matplotlib")
    result = run_sample("sound_design.py", "--out-dir", "edits", "--loop-seconds", "3", "--extend", "1",
                        "--span", "1:2", "--steps", "1", "--model", "random:tiny", cwd=tmp_path)
    edits = tmp_path / "edits"
    assert sf.info(edits / "loop.wav").frames == 3 * RATE
    assert sf.info(edits / "loop-three-times.wav").frames == 9 * RATE
    assert sf.info(edits / "continued.wav").frames == 4 * RATE
    assert sf.info(edits / "regenerated.wav").frames == 3 * RATE
    assert all((edits / name).stat().st_size > 0 for name in ("loop-three-times.png", "continued.png",
                                                               "regenerated.png"))
    assert "kept elsewhere: True" in result.stdout
