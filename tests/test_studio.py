"""The studio, started as a user starts it (``audioldm-tiled studio --model random:tiny``) and driven from outside:
through its API with gradio_client (a timeline, a span regenerated, an extension, a loop, a cancel, bad input and
uploads), in a real headless Chromium, and behind --auth."""

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("gradio")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

from audioldm_tiled.studio import timeline_from_rows  # noqa: E402

HEADERS = ["start (s)", "end (s, optional)", "prompt"]
NO_ROWS = {"headers": HEADERS, "data": [[None, None, None]]}
# render(prompt, timeline, seconds, seed, steps, guidance, negative, mode, loop, live, mark)
SETTINGS = dict(seed=0, steps=1, guidance=None, negative="", mode="exact")
SCREENSHOT = os.environ.get("AUDIOLDM_TILED_STUDIO_SCREENSHOT")  # where the browser test also saves its picture


@pytest.fixture(scope="module", autouse=True)
def _local_and_quiet():
    """Requests to the studio go straight to 127.0.0.1 whatever proxy the environment names; no analytics."""
    with pytest.MonkeyPatch.context() as patch:
        for name in ("NO_PROXY", "no_proxy"):
            patch.setenv(name, "127.0.0.1,localhost")
        patch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
        yield


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_studio(folder: Path, *options: str):
    port = _free_port()
    folder.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "GRADIO_TEMP_DIR": str(folder / "gradio"),
           "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
    log = open(folder / "studio.log", "w+")  # noqa: SIM115 - read on failure, closed below
    process = subprocess.Popen([sys.executable, "-m", "audioldm_tiled", "studio", "--model", "random:tiny", "--port",
                                str(port), *options], stdout=log, stderr=subprocess.STDOUT, env=env,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # see child_process
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 180
        while True:  # poll, not sleep: up when the page answers (401 behind --auth)
            try:
                urllib.request.urlopen(url, timeout=5)
                break
            except urllib.error.HTTPError:
                break
            except OSError:
                log.seek(0)
                assert process.poll() is None, f"the studio exited: {log.read()[-3000:]}"
                assert time.monotonic() < deadline, f"the studio did not start: {log.read()[-3000:]}"
                time.sleep(0.3)
        yield url, log
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    with running_studio(tmp_path_factory.mktemp("studio"), "--max-upload-seconds", "30", "--upsample-model",
                        "random:audiosr-tiny") as (url, log):
        yield url


def _render(client: Client, prompt="rain", rows=NO_ROWS, seconds=12, loop=False, live=True, mark=False,
            **settings):
    values = {**SETTINGS, **settings}
    return client.predict(prompt, rows, seconds, values["seed"], values["steps"], values["guidance"],
                          values["negative"], values["mode"], loop, live, mark, api_name="/render")


def _samples(path) -> np.ndarray:
    return sf.read(path, dtype="int16")[0]


def test_timeline_rows_become_the_request_prompt():
    assert timeline_from_rows([[None, None, None]], " rain ") == "rain"
    assert timeline_from_rows([[0, None, "rain"]], "x") == "rain"
    assert timeline_from_rows([[0, None, "rain"], [6, 9, "thunder"], [None, None, ""]]) == \
        [(0.0, "rain"), (6.0, 9.0, "thunder")]
    with pytest.raises(ValueError, match="row 2: give its start"):
        timeline_from_rows([[0, None, "rain"], [None, None, "thunder"]])
    with pytest.raises(ValueError, match="write a prompt"):
        timeline_from_rows([[None, None, None]], "  ")


def test_the_studios_fields_are_checked_before_any_render(tiny_pipe, tmp_path):
    """What the page (or its API) can send that no render takes, refused up front in the page's words: an empty
    "Seconds to add", a row of more cells than a timeline row has, NaN or infinite steps and seeds, a guidance that
    would overflow into NaN audio, a length or extension longer than the studio holds (each result is held whole),
    and a recording too short to edit. A live render without a length is the command line's default length, not
    endless."""
    from audioldm_tiled.request import named_for
    from audioldm_tiled.studio import Studio
    from audioldm_tiled.studio_app import PAGE_FIELDS

    studio = Studio(tiny_pipe, "random:tiny", tmp_path)
    recording = tmp_path / "in.wav"
    sf.write(recording, np.zeros(16000, np.float32), 16000)
    cases = [
        (lambda: studio.request("rain", None, 0, 1, None, "", audio=str(recording), extend_s=None),
         "Seconds to add is empty: give the seconds to add"),
        (lambda: timeline_from_rows([[0, None, "rain", 4, 5]]), "timeline row 1 has 5 cells"),
        (lambda: studio.request("rain", 10, 0, float("nan"), None, ""), "Steps must be a whole number, got nan"),
        (lambda: studio.request("rain", 10, float("inf"), 1, None, ""), "the seed must be a whole number"),
        (lambda: studio.request("rain", 10, 0, 1, 1e308, ""), "Guidance must be a number from -1000 to 1000"),
        (lambda: studio.request("rain", 3e7, 0, 1, None, "", progressive=True),
         "Length (s) must be at most 3600 s in the studio"),
        (lambda: studio.request("rain", None, 0, 1, None, "", audio=str(recording), extend_s=4000),
         "Seconds to add must be at most 3600 s"),
    ]
    for make, message in cases:
        with pytest.raises(ValueError) as refused:
            make()
        assert message in named_for(refused.value, PAGE_FIELDS)
    one = tmp_path / "one.wav"
    sf.write(one, np.zeros(1, np.float32), 16000)
    with pytest.raises(ValueError, match="the studio takes at least 0.1 s"):
        studio.upload(one)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.wav", "one.wav"]  # nothing kept of any of them
    assert studio.request("rain", None, 0, 1, None, "", progressive=True).audio_length_in_s == 10


def test_timeline_render_span_extension_and_loop_through_the_api(studio):
    client = Client(studio, verbose=False)
    rows = {"headers": HEADERS, "data": [[0, None, "rain"], [6, None, "thunder"]]}
    _, wav, picture, files, table, status = _render(client, "", rows, seconds=12)
    first = _samples(wav)
    assert first.shape == (12 * 16000,) and Path(picture).stat().st_size > 0 and status.startswith("Render 1")
    sidecar = json.loads(Path(next(f for f in files if f.endswith(".json"))).read_text())
    assert sidecar["status"] == "done" and sidecar["job"]["timeline"] == [[0, "rain"], [6, "thunder"]]
    assert {"integrated_lufs", "range_lu", "true_peak_dbtp"} <= set(sidecar)  # measured, asked or not
    assert sidecar["settings"]["steps"] == 1 and sidecar["model"] == "random:tiny" and sidecar["versions"]

    _, wav, _, files, table, _ = client.predict(4, 8, "a dog barks", 0, 1, None, "", "exact", False,
                                                api_name="/regenerate")
    fixed = _samples(wav)
    assert fixed.shape == first.shape
    outside = np.r_[0 : 4 * 16000, 8 * 16000 : 12 * 16000]
    assert np.array_equal(fixed[outside], first[outside])  # the rest, sample for sample
    assert not np.array_equal(fixed[4 * 16000 : 8 * 16000], first[4 * 16000 : 8 * 16000])

    _, wav, _, files, table, _ = client.predict(5, "rain", 0, 1, None, "", "exact", False, api_name="/extend")
    longer = _samples(wav)
    assert longer.shape == (17 * 16000,)
    assert np.array_equal(longer[: 12 * 16000 - 4000], fixed[: 12 * 16000 - 4000])  # up to the 0.25 s crossfade
    assert [row[1] for row in table["data"]] == ["extend +5 s", "regenerate 4-8 s", "render"]
    assert len(files) == 6  # three WAVs, each with its sidecar

    _, wav, *_ = _render(client, "rain on leaves", seconds=8, loop=True, mark=True)
    assert _samples(wav).shape == (8 * 16000,)
    _, wav, picture, *_ = _render(client, "rain on leaves", seconds=30, mark=True)  # live, windows marked
    assert _samples(wav).shape == (30 * 16000,) and Path(picture).stat().st_size > 0


def test_a_cancelled_render_leaves_the_studio_ready(studio):
    client = Client(studio, verbose=False)
    # 200 denoising steps over 120 s: cancelled at a step, long before the render would end
    job = client.submit("rain", NO_ROWS, 120, 0, 200, None, "", "exact", False, False, False, api_name="/render")
    deadline = time.monotonic() + 60
    while job.status().code.name not in ("PROCESSING", "ITERATING"):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    waiting = Client(studio, verbose=False).submit("wind", NO_ROWS, 3, 0, 1, None, "", "exact", False, False,
                                                   False, api_name="/render")  # another page: its turn comes next
    while waiting.status().code.name != "IN_QUEUE":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert waiting.status().rank == 0  # first in line, shown its place
    started = time.monotonic()
    client.predict(api_name="/cancel")
    with contextlib.suppress(Exception):  # cancelled: the client reports it as it may
        outputs = job.result(timeout=120)
        assert "Cancelled" in outputs[-1]
    assert time.monotonic() - started < 30  # stopped, not finished
    assert _samples(waiting.result(timeout=120)[1]).shape == (3 * 16000,)
    _, wav, *_ = _render(client, seconds=4)
    assert _samples(wav).shape == (4 * 16000,)


@pytest.mark.parametrize("prompt, seconds, settings, message", [
    ("rain", 12, {"seed": -1}, "seed must be a whole number"),
    ("", 12, {}, "write a prompt"),
    ("rain", -5, {}, "Length"),
    ("rain", 12, {"steps": -1}, "Steps must be a positive integer"),
])
def test_bad_input_is_answered_in_the_page_and_the_studio_goes_on(studio, prompt, seconds, settings, message):
    client = Client(studio, verbose=False)
    with pytest.raises(AppError, match=message):
        _render(client, prompt, seconds=seconds, **settings)
    with pytest.raises(AppError, match="nothing to regenerate"):
        client.predict(4, 8, "a dog", 0, 1, None, "", "exact", False, api_name="/regenerate")
    _, wav, *_ = _render(client, seconds=3)
    assert _samples(wav).shape == (3 * 16000,)


def test_uploads_are_checked_by_reading_them(studio, tmp_path):
    client = Client(studio, verbose=False)
    recording = tmp_path / "field.wav"
    sf.write(recording, 0.1 * np.sin(np.arange(5 * 16000) / 9), 16000)
    _, wav, *_ = client.predict(handle_file(str(recording)), api_name="/use_recording")
    assert _samples(wav).shape == (5 * 16000,)
    _, wav, *_ = client.predict(2, 3, "a bird", 0, 1, None, "", "exact", False, api_name="/regenerate")
    assert _samples(wav).shape == (5 * 16000,)
    text = tmp_path / "notes.wav"
    text.write_text("not audio at all")
    with pytest.raises(AppError, match="not audio"):
        client.predict(handle_file(str(text)), api_name="/use_recording")
    long = tmp_path / "long.wav"
    sf.write(long, np.zeros(31 * 16000), 16000)
    with pytest.raises(AppError, match="up to 30 s"):
        client.predict(handle_file(str(long)), api_name="/use_recording")


def test_a_result_is_delivered_in_another_format_rate_and_loudness(studio, tmp_path):
    """The download goes through the same file sink as a render: FLAC at 48 kHz at -20 LUFS, kept beside the WAV."""
    import pyloudnorm

    client = Client(studio, verbose=False)
    recording = tmp_path / "field.wav"
    sf.write(recording, 0.1 * np.sin(np.arange(5 * 16000) / 9), 16000)
    _, wav, *_ = client.predict(handle_file(str(recording)), api_name="/use_recording")
    files, status = client.predict("flac", 48000, "-20", False, api_name="/deliver")
    flac = next(f for f in files if f.endswith(".flac"))
    audio, rate = sf.read(flac)
    assert rate == 48000 and audio.shape == (5 * 48000,) and status.startswith(f"Download {Path(flac).name}")
    assert abs(pyloudnorm.Meter(rate).integrated_loudness(audio) + 20) < 0.1
    assert any(f.endswith(".wav") for f in files)  # the WAV stays, for further edits
    with pytest.raises(AppError, match="opus files take a Sample rate of"):
        client.predict("opus", 44100, "as rendered", False, api_name="/deliver")
    with pytest.raises(AppError, match="the loudness must be a number of LUFS, e.g. -16, got 'loud'"):
        client.predict("mp3", 0, "loud", False, api_name="/deliver")
    # super-resolved by AudioSR on the way, named so, the model in its recipe; the page follows its stages
    job = client.submit("wav", 0, "as rendered", True, api_name="/deliver")
    stages = set()
    while not job.done():
        stages |= {unit.desc for unit in job.status().progress_data or () if unit.desc}
        time.sleep(0.01)
    files, status = job.result()
    assert any(stage.startswith("AudioSR") for stage in stages), stages
    upsampled = next(f for f in files if f.endswith("-audiosr.wav"))
    audio, rate = sf.read(upsampled)
    assert rate == 48000 and audio.shape == (5 * 48000,) and np.isfinite(audio).all()
    assert json.loads(sf.SoundFile(upsampled).copy_metadata()["comment"])["upsampled"]["model"] == \
        "random:audiosr-tiny"


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on this machine (Debian: apt-get install chromium)")
def test_a_real_browser_renders_and_plays(studio, tmp_path):
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1500})
            page.goto(studio)
            page.locator("#prompt textarea").fill("rain on a tin roof")
            page.locator("#seconds input").fill("10")
            page.locator("#steps input").fill("1")
            page.locator("#render").click()
            page.locator("#status").get_by_text("Render").wait_for(timeout=120_000)
            page.locator("#result-audio [data-testid=download-link][href$='.wav']").wait_for(timeout=30_000)
            assert page.locator("#spectrogram img").count() == 1
            errors = page.locator("[data-testid=toast-body]")
            assert errors.count() == 0, errors.first.inner_text()
            page.screenshot(path=str(tmp_path / "studio.png"), full_page=True)
            if SCREENSHOT:
                shutil.copy(tmp_path / "studio.png", SCREENSHOT)
        finally:
            browser.close()
    assert (tmp_path / "studio.png").stat().st_size > 10_000


def _status(url: str, method: str, cookie: str | None = None) -> int:
    request = urllib.request.Request(url, method=method, headers={"Cookie": cookie} if cookie else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status
    except urllib.error.HTTPError as error:
        return error.code


def _routes(routes, prefix=""):
    """Each route's path and methods, through the routers FastAPI includes (from 0.165 kept as included routers)."""
    for route in routes:
        included = getattr(route, "original_router", None)
        if included is not None:
            yield from _routes(included.routes, prefix + route.include_context.prefix)
        else:
            yield prefix + route.path, getattr(route, "methods", None) or {"GET"}


def test_auth_asks_for_the_login_on_every_route_but_the_login_page(tmp_path, tiny_pipe):
    """Every route of the app, each method, without the login: 401, but for the login page and what draws it
    (Gradio's own check leaves /gradio_api/cancel, /gradio_api/reset and /openapi.json open). With the login the
    page's API answers, also to gradio_client."""
    import re

    from audioldm_tiled.studio import Studio
    from audioldm_tiled.studio_app import build_app, launch
    from audioldm_tiled.studio_login import open_without_login

    studio = Studio(tiny_pipe, "random:tiny", tmp_path)
    app, port = build_app(studio), _free_port()
    launch(app, studio, "127.0.0.1", port, ("ada", "secret"), block=False)
    url = f"http://127.0.0.1:{port}"
    try:
        routes = {(re.sub(r"\{[^}]*\}", "x", path), method) for path, methods in _routes(app.app.routes)
                  for method in methods}
        assert {("/gradio_api/cancel", "POST"), ("/gradio_api/reset", "POST"), ("/openapi.json", "GET")} <= routes
        answered = {(path, method): _status(url + path, method) for path, method in sorted(routes)
                    if not open_without_login(path)}
        assert len(answered) > 50 and {k: v for k, v in answered.items() if v != 401} == {}
        assert _status(url + "/", "GET") == 200  # the login page
        login = urllib.request.urlopen(urllib.request.Request(
            url + "/login", data=b"username=ada&password=secret", method="POST"), timeout=10)
        cookie = "; ".join(c.split(";")[0] for c in login.headers.get_all("Set-Cookie"))
        assert _status(url + "/config", "GET", cookie) == 200
        assert _status(url + "/gradio_api/cancel", "POST", "access-token-unsecure-x=forged") == 401
        with pytest.raises(Exception):  # noqa: B017 - the client's own error for a refused login
            Client(url, verbose=False)
        assert "/render" in Client(url, auth=("ada", "secret"), verbose=False).view_api(
            print_info=False, return_format="dict")["named_endpoints"]
    finally:
        app.close()


def _other_addresses() -> set[str]:
    """This machine's IPv4 addresses other than loopback."""
    found = set()
    with contextlib.suppress(OSError):
        found |= {a[4][0] for a in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)}
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("10.255.255.255", 1))  # no packet is sent: the kernel picks the outgoing interface
        found.add(probe.getsockname()[0])
    return {a for a in found if not a.startswith("127.") and a != "0.0.0.0"}


@pytest.mark.skipif(not _other_addresses(), reason="this machine has no address but loopback")
def test_the_studio_listens_on_this_machine_only(studio):
    port = int(studio.rsplit(":", 1)[1].strip("/"))
    for address in _other_addresses():
        with pytest.raises(OSError):
            socket.create_connection((address, port), timeout=3).close()


def test_listening_beyond_the_machine_is_said_loudly_and_bad_options_are_named(caplog, capsys):
    from audioldm_tiled.cli import main

    assert main(["studio", "--host", "0.0.0.0", "--model", "random:none"]) == 2  # warned, then the model fails
    assert "anyone who can reach this machine" in caplog.text and "no --auth" in caplog.text
    assert "random:ARCH" in capsys.readouterr().err
    assert main(["studio", "--auth", "ada"]) == 2
    assert "--auth takes USER:PASSWORD" in capsys.readouterr().err


def test_the_folders_of_studios_that_no_longer_run_are_removed_at_start(tmp_path):
    """A studio killed with SIGKILL cannot remove its results folder; the next studio to start does, and leaves
    those of studios still running (this process stands for one) and everything else alone."""
    from audioldm_tiled.studio_app import FOLDER_PREFIX, remove_stale_folders

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = tmp_path / f"{FOLDER_PREFIX}{int(gone.stdout)}-x1"
    alive = tmp_path / f"{FOLDER_PREFIX}{os.getpid()}-x2"
    other = tmp_path / "audioldm-tiled-studio-notes"
    for folder in (dead, alive, other):
        (folder / "gradio").mkdir(parents=True)
    assert remove_stale_folders(tmp_path) == [dead.name]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([alive.name, other.name])
