"""Batch rendering: jobs files are checked line by line, shared out by cost the same way on every rank, rendered
to the same files whatever the rank count, resumed after a stop, and a failing job does not stop the others."""

import json

import pytest
import soundfile as sf

from audioldm_tiled.batch import Shard, assign, parse_shard, run_batch, shard_from_environment, sidecar_path
from audioldm_tiled.batch_jobs import BatchJob, JobError, read_jobs
from audioldm_tiled.cli import main


def write_jobs(path, jobs):
    path.write_text("".join(json.dumps(job) + "\n" for job in jobs))
    return path


# Float samples where renders are compared: the tiny random models' audio is quiet enough for 16-bit samples to
# round two different renders to the same values.
JOBS = [
    {"output": "rain.wav", "prompt": "rain", "seconds": 1.0, "steps": 2, "seed": 3, "sample_format": "float"},
    {"output": "sub/wind.wav", "prompt": "wind", "seconds": 2.0, "steps": 1},
    {"output": "scape.wav", "timeline": [[0, "rain"], [1, "thunder"]], "seconds": 2.0, "steps": 2, "mode": "fast",
     "sample_format": "float"},
]


@pytest.mark.parametrize("line,message", [
    ("{", "line 2: Expecting property name"),
    ('{"output": "a.wav", "prompt": "x", "colour": 1}', "line 2: unknown field(s) ['colour']"),
    ('{"prompt": "x"}', "line 2: 'output' must be a relative file name"),
    ('{"output": "../a.wav", "prompt": "x"}', "'output' must be a relative file name"),
    ('{"output": "a.aiff", "prompt": "x"}', "ending in .wav, .flac, .ogg, .opus, .mp3 (in any case), got 'a.aiff'"),
    ('{"output": "b.opus", "prompt": "x", "sample_rate": 44100}', "opus files take a 'sample_rate' of 8000"),
    ('{"output": "b.flac", "prompt": "x", "sample_format": "float"}', "'sample_format' 'FLOAT' is not one of"),
    ('{"output": "b.wav", "prompt": "x", "loudness": 3}', "'loudness' must be a number from -70 to 0"),
    ('{"output": "b.wav", "prompt": "x", "seed": -1}', "'seed' must be a whole number from 0 to"),
    ('{"output": "b.wav", "prompt": " "}', "'prompt' must be a text describing the sound"),
    ('{"output": "caf\\u0065\\u0301.wav", "prompt": "x"}', "is already written by line 1"),
    ('{"output": "b.wav", "prompt": "x", "timeline": [[0, "y"]]}', "exactly one of 'prompt' and 'timeline'"),
    ('{"output": "b.wav", "prompt": "x", "seconds": -1}', "'seconds' must be a finite number of seconds > 0"),
    ('{"output": "b.wav", "prompt": "x", "steps": 1.5}', "'steps' must be a positive integer, got 1.5"),
    ('{"output": "b.wav", "prompt": "x", "mode": "quick"}', "'mode' must be one of"),
    ('{"output": "b.wav", "prompt": "x", "input": "in.wav", "seconds": 3}', "pass either 'input' or 'seconds'"),
    ('{"output": "b.wav", "prompt": "x", "strength": 0.5}', "'strength' goes with 'input'"),
    ('{"output": "a.wav", "prompt": "y"}', "line 2: output 'a.wav' is already written by line 1"),
    ('{"output": "b.wav", "timeline": [[5, "late"]], "seconds": 4}', "line 2:"),
    ("[" * 100000, "line 2: JSON nested too deeply"),
    ('{"output": "sub/.wav", "prompt": "x"}', "not hidden"),
    ('{"output": "a\\u0000b.wav", "prompt": "x"}', "'output' must be a relative file name"),
    ('{"output": "b.wav", "prompt": "x", "seconds": 1e306}', "'seconds' must be a finite number of seconds > 0 and "
                                                             "at most"),
])
def test_a_bad_line_is_named(tmp_path, line, message):
    path = tmp_path / "jobs.jsonl"
    path.write_text('{"output": "a.wav", "prompt": "x"}\n' if "caf" not in line else
                    '{"output": "caf\\u00e9.wav", "prompt": "x"}\n')
    path.write_text(path.read_text() + line + "\n")
    with pytest.raises(JobError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
                       .replace("]", r"\]").replace(".", r"\.")):
        read_jobs(path)


def test_jobs_files_with_a_byte_order_mark_or_broken_text(tmp_path):
    path = tmp_path / "jobs.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(JOBS[0]).encode() + b"\n")
    assert [job.output for job in read_jobs(path)] == ["rain.wav"]
    path.write_bytes(json.dumps(JOBS[0]).encode() + b'\n{"output": "caf\xe9.wav", "prompt": "x"}\n')
    with pytest.raises(JobError, match="line 2: not UTF-8 text"):
        read_jobs(path)
    with pytest.raises(JobError, match="line 1: longer than 1048576 bytes"):
        read_jobs("/dev/zero")


def test_a_timeline_job_without_seconds_lasts_the_default_10_s(tmp_path):
    job = read_jobs(write_jobs(tmp_path / "jobs.jsonl", [{"output": "t.wav", "timeline": [[0, "a"], [4, "b"]]}]))[0]
    assert job.request().audio_length_in_s == 10.0


def test_assignment_is_longest_first_to_the_least_loaded_rank():
    jobs = [BatchJob(output=f"{i}.wav", prompt="x", seconds=s, steps=10) for i, s in enumerate([10, 60, 30, 30, 20])]
    assert assign(jobs, 2) == [[1, 4], [2, 3, 0]]  # loads of 800 and 700 seconds x steps
    assert assign(jobs, 1) == [[1, 2, 3, 4, 0]]
    assert assign(jobs, 7)[5:] == [[], []]  # more ranks than jobs: the rest have nothing to do
    assert sorted(i for share in assign(jobs, 3) for i in share) == list(range(5))


def test_the_rank_comes_from_torchrun_slurm_or_the_command_line():
    assert shard_from_environment({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1"}) == Shard(3, 8, 1)
    assert shard_from_environment({"SLURM_PROCID": "5", "SLURM_NTASKS": "6", "SLURM_LOCALID": "2"}) == Shard(5, 6, 2)
    assert shard_from_environment({}) == Shard(0, 1, 0)
    with pytest.raises(ValueError, match="RANK=4 is not a rank of WORLD_SIZE=4"):
        shard_from_environment({"RANK": "4", "WORLD_SIZE": "4"})
    assert parse_shard("1/3") == Shard(1, 3, 0)
    for bad in ("3/3", "1", "a/b", "-1/2"):
        with pytest.raises(ValueError, match="--shard takes i/N"):
            parse_shard(bad)


def test_outputs_do_not_depend_on_the_rank_count(tiny_pipe, tmp_path):
    jobs = read_jobs(write_jobs(tmp_path / "jobs.jsonl", JOBS))
    run_batch(tiny_pipe, jobs, tmp_path / "one")
    for rank in range(2):
        run_batch(tiny_pipe, jobs, tmp_path / "two", Shard(rank, 2))
    for job in JOBS:
        one, two = sf.read(tmp_path / "one" / job["output"]), sf.read(tmp_path / "two" / job["output"])
        assert (one[0] == two[0]).all() and one[1] == two[1] == 16000
        assert len(one[0]) == job["seconds"] * 16000
        sidecar = json.loads(sidecar_path(tmp_path / "two" / job["output"]).read_text())
        assert sidecar["status"] == "done" and sidecar["settings"]["steps"] == job["steps"]
        assert sidecar["versions"]["torch"] and sidecar["render_s"] > 0
    manifests = sorted(p.name for p in (tmp_path / "two").glob("manifest.*.json"))
    assert manifests == ["manifest.rank-0-of-2.json", "manifest.rank-1-of-2.json"]
    # different seeds give different audio: the comparison above could fail
    assert not (sf.read(tmp_path / "one" / "rain.wav")[0][:16000] ==
                sf.read(tmp_path / "one" / "scape.wav")[0][:16000]).all()


def test_a_rerun_skips_finished_jobs_and_a_failed_job_does_not_stop_the_others(tiny_pipe, tmp_path, monkeypatch):
    jobs = JOBS[:2] + [{"output": "broken.wav", "prompt": "x", "input": str(tmp_path / "missing.wav")}]
    jobs = read_jobs(write_jobs(tmp_path / "jobs.jsonl", jobs))
    summary = run_batch(tiny_pipe, jobs, tmp_path / "out")
    # broken.wav first: its input cannot be read, so its cost is that of the default 10 s
    assert summary == {"done": ["rain.wav", "sub/wind.wav"], "skipped": [], "failed": ["broken.wav"]}
    failed = json.loads(sidecar_path(tmp_path / "out" / "broken.wav").read_text())
    assert failed["status"] == "failed" and "missing.wav" in failed["error"]
    assert not (tmp_path / "out" / "broken.wav").exists()
    manifest = json.loads((tmp_path / "out" / "manifest.rank-0-of-1.json").read_text())
    assert [(e["output"], e["status"]) for e in manifest["jobs"]] == \
        [("broken.wav", "failed"), ("rain.wav", "done"), ("sub/wind.wav", "done")]

    sidecar_path(tmp_path / "out" / "rain.wav").unlink()  # as if stopped between the WAV and its sidecar
    rendered = []
    render = tiny_pipe.render
    monkeypatch.setattr(tiny_pipe, "render", lambda *a, **k: rendered.append(1) or render(*a, **k))
    summary = run_batch(tiny_pipe, jobs, tmp_path / "out")
    assert summary == {"done": ["rain.wav"], "skipped": ["sub/wind.wav"], "failed": ["broken.wav"]}
    assert len(rendered) == 1  # rain.wav again; the failed job is tried again, and fails before any render


def test_the_batch_command(tmp_path, capsys):
    jobs = write_jobs(tmp_path / "jobs.jsonl", JOBS[:1])
    assert main(["batch", str(jobs), "--out-dir", str(tmp_path / "out"), "--model", "random:tiny", "--quiet"]) == 0
    assert sf.info(tmp_path / "out" / "rain.wav").frames == 16000
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"output": "a.wav"}\n')
    assert main(["batch", str(bad), "--out-dir", str(tmp_path / "out"), "--model", "no/such-model"]) == 2
    assert "bad.jsonl line 1: give exactly one of 'prompt' and 'timeline'" in capsys.readouterr().err
    assert main(["batch", str(jobs), "--out-dir", str(tmp_path / "out"), "--shard", "2/2"]) == 2
    assert "--shard takes i/N" in capsys.readouterr().err


def test_a_job_without_steps_or_guidance_runs_with_the_models_defaults(tiny_pipe, tmp_path, monkeypatch):
    # a family whose defaults are not AudioLDM's 10 and 2.5 (AudioLDM 2's own are checked in test_audioldm2.py)
    monkeypatch.setattr(tiny_pipe, "parent_defaults", lambda: {"num_inference_steps": 3, "guidance_scale": 1.5})
    calls = []
    step = tiny_pipe.scheduler.step
    monkeypatch.setattr(tiny_pipe.scheduler, "step", lambda *a, **k: calls.append(1) or step(*a, **k))
    guidance = []
    monkeypatch.setattr(tiny_pipe, "unet_conditioning",
                        lambda *a, f=tiny_pipe.unet_conditioning: guidance.append(tiny_pipe.guidance_scale) or f(*a))
    run_batch(tiny_pipe, [BatchJob(output="a.wav", prompt="rain", seconds=0.5)], tmp_path)
    settings = json.loads(sidecar_path(tmp_path / "a.wav").read_text())["settings"]
    assert len(calls) == settings["steps"] == 3 and set(guidance) == {settings["guidance"]} == {1.5}


def finished(tmp_path, jobs=JOBS[:2]):
    """A batch run to the end, its jobs and folder."""
    from audioldm_tiled.testing.architectures import random_pipeline

    jobs = read_jobs(write_jobs(tmp_path / "jobs.jsonl", jobs))
    pipe = random_pipeline("tiny")
    pipe.set_progress_bar_config(disable=True)
    assert run_batch(pipe, jobs, tmp_path / "out", model="m")["failed"] == []
    return jobs, pipe


def test_a_rerun_loads_no_model_and_writes_the_manifest_once(tmp_path, monkeypatch):
    import audioldm_tiled.batch as batch

    jobs, _ = finished(tmp_path)
    writes = []
    real_write_json = batch.write_json
    monkeypatch.setattr(batch, "write_json", lambda path, data: writes.append(path.name) or real_write_json(path, data))
    summary = run_batch(lambda: pytest.fail("a rerun of finished jobs loaded the model"), jobs, tmp_path / "out",
                        model="m")
    assert summary == {"done": [], "skipped": ["rain.wav", "sub/wind.wav"], "failed": []}
    assert writes == ["manifest.rank-0-of-1.json"]


def test_a_job_is_done_only_with_its_own_settings_model_and_a_whole_wav(tmp_path):
    jobs, pipe = finished(tmp_path)
    out = tmp_path / "out"
    changed = [{**JOBS[0], "prompt": "heavy rain", "seconds": 2.0, "seed": 4}, JOBS[1]]
    summary = run_batch(pipe, read_jobs(write_jobs(tmp_path / "changed.jsonl", changed)), out, model="m")
    assert summary["done"] == ["rain.wav"] and summary["skipped"] == ["sub/wind.wav"]
    assert sf.info(out / "rain.wav").frames == 32000
    assert run_batch(pipe, jobs, out, model="other")["skipped"] == []  # another model: rendered again
    (out / "sub" / "wind.wav").write_bytes(b"")  # a WAV emptied after its sidecar said done
    assert run_batch(pipe, jobs, out, model="other")["done"] == ["sub/wind.wav"]


def test_a_job_that_cannot_be_written_fails_alone(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "blocked").write_text("a file where a folder should be")
    jobs = [{"output": "blocked/x.wav", "prompt": "x", "seconds": 0.5, "steps": 1},
            {"output": "y" * 300 + ".wav", "prompt": "y", "seconds": 0.5, "steps": 1}, JOBS[0]]
    from audioldm_tiled.testing.architectures import random_pipeline

    pipe = random_pipeline("tiny")
    pipe.set_progress_bar_config(disable=True)
    summary = run_batch(pipe, read_jobs(write_jobs(tmp_path / "jobs.jsonl", jobs)), tmp_path / "out")
    assert summary["done"] == ["rain.wav"] and sorted(summary["failed"]) == sorted(j["output"] for j in jobs[:2])
    manifest = json.loads((tmp_path / "out" / "manifest.rank-0-of-1.json").read_text())
    assert {e["output"]: e["status"] for e in manifest["jobs"]}["rain.wav"] == "done"
    assert "255" in {e["output"]: e.get("error") for e in manifest["jobs"]}["y" * 300 + ".wav"]


def test_no_job_writes_outside_its_folder_through_a_link(tmp_path):
    out, outside = tmp_path / "out", tmp_path / "outside"
    out.mkdir()
    outside.mkdir()
    (outside / "victim.wav").write_bytes(b"precious")
    (out / "link").symlink_to("../outside")
    (out / "v.wav").symlink_to("../outside/victim.wav")
    jobs = [{"output": "link/x.wav", "prompt": "x", "seconds": 0.5, "steps": 1},
            {"output": "v.wav", "prompt": "v", "seconds": 0.5, "steps": 1}]
    summary = run_batch(lambda: pytest.fail("no job needed the model"), read_jobs(
        write_jobs(tmp_path / "jobs.jsonl", jobs)), out)
    assert sorted(summary["failed"]) == ["link/x.wav", "v.wav"]
    assert sorted(p.name for p in outside.iterdir()) == ["victim.wav"]
    assert (outside / "victim.wav").read_bytes() == b"precious"


def test_under_a_launcher_failed_jobs_are_counted_and_the_rank_exits_0(tmp_path, monkeypatch, caplog):
    jobs = write_jobs(tmp_path / "jobs.jsonl", [
        {"output": f"{i}.wav", "prompt": "x", "input": str(tmp_path / "missing.wav")} for i in range(2)])
    command = ["batch", str(jobs), "--out-dir", str(tmp_path / "out"), "--model", "random:tiny", "--quiet"]
    assert main(command) == 1  # alone: a failed job is the exit status
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(command) == 0
    assert "1 job(s) failed on rank 1" in caplog.text
    monkeypatch.delenv("WORLD_SIZE")
    assert main(command) == 2  # RANK without WORLD_SIZE would render every job on every rank


def test_a_shard_without_jobs_writes_its_manifest_and_loads_no_model(tmp_path):
    jobs = write_jobs(tmp_path / "jobs.jsonl", JOBS)
    assert main(["batch", str(jobs), "--out-dir", str(tmp_path / "out"), "--shard", "5/8", "--model",
                 "no/such-model"]) == 0
    manifest = json.loads((tmp_path / "out" / "manifest.rank-5-of-8.json").read_text())
    assert manifest["jobs"] == []


def test_the_rerun_benchmark_skips_every_finished_job():
    from audioldm_tiled.benchmarks.rerun import run_point

    row = run_point(20)
    assert row["skipped"] == 20 and row["written_bytes"] > 0


def test_each_job_delivers_its_own_format_rate_and_loudness(tiny_pipe, tmp_path):
    """Per-job delivery; the sidecar records the settings the render resolved and what the file measures."""
    jobs = read_jobs(write_jobs(tmp_path / "jobs.jsonl", [
        {"output": "rain.FLAC", "prompt": "rain", "seconds": 1.0, "steps": 1, "sample_rate": 48000,
         "sample_format": "24", "loudness": -20},
        {"output": "wind.WAV", "prompt": "wind", "seconds": 0.5, "steps": 1}]))
    assert run_batch(tiny_pipe, jobs, tmp_path / "out")["done"] == ["rain.FLAC", "wind.WAV"]
    info = sf.info(tmp_path / "out" / "rain.FLAC")
    assert (info.format, info.subtype, info.samplerate, info.frames) == ("FLAC", "PCM_24", 48000, 48000)
    sidecar = json.loads(sidecar_path(tmp_path / "out" / "rain.FLAC").read_text())
    assert sidecar["sample_rate"] == 48000 and sidecar["samples"] == 48000 and sidecar["seconds"] == 1.0
    assert {"integrated_lufs", "range_lu", "true_peak_dbtp", "gain_db"} <= set(sidecar)
    assert sidecar["settings"]["guidance"] == 2.5 and sidecar["settings"]["loudness"] == -20
    assert sf.info(tmp_path / "out" / "wind.WAV").samplerate == 16000
