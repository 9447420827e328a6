"""The host memory budget: cgroup and rlimit headroom, and a real allocation failure caught by the fallback."""

import json
import subprocess
import sys
import textwrap

import torch

from audioldm_tiled.memory import host_limits_headroom
from audioldm_tiled.testing.architectures import build_components
from conftest import EXACT_TOLERANCE, relative_error

GB = 10**9


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v2_headroom_takes_every_enclosing_limit(tmp_path):
    proc, root = tmp_path / "proc", tmp_path / "cgroup"
    _write(proc / "cgroup", "0::/job/step\n")  # no status file: no rlimit headroom in this test
    _write(root / "job" / "memory.max", f"{8 * GB}\n")  # a batch job's limit, on the parent of the process's cgroup
    _write(root / "job" / "memory.current", f"{5 * GB}\n")
    _write(root / "job" / "memory.stat", f"anon {4 * GB}\ninactive_file {GB}\n")
    _write(root / "job" / "step" / "memory.max", "max\n")
    _write(root / "job" / "step" / "memory.current", f"{3 * GB}\n")
    assert host_limits_headroom(str(root), str(proc)) == [8 * GB - 5 * GB + GB]


def test_cgroup_v1_headroom_falls_back_to_the_mount_root(tmp_path):
    proc, root = tmp_path / "proc", tmp_path / "cgroup"
    # Without a cgroup namespace the listed path is the host's; the container's cgroup is the mount's root.
    _write(proc / "cgroup", "5:cpu,cpuacct:/docker/abc\n4:memory:/docker/abc\n")
    _write(root / "memory" / "memory.limit_in_bytes", f"{2 * GB}\n")
    _write(root / "memory" / "memory.usage_in_bytes", f"{GB + GB // 2}\n")
    _write(root / "memory" / "memory.stat", f"cache 7\ntotal_inactive_file {GB // 10}\n")
    assert host_limits_headroom(str(root), str(proc)) == [GB // 2 + GB // 10]
    # v1 writes "no limit" as a page-rounded 2**63 - 1
    _write(root / "memory" / "memory.limit_in_bytes", "9223372036854771712\n")
    assert host_limits_headroom(str(root), str(proc)) == []


# Run in a child: the data-segment limit would bind the test process for good. Two threads whatever the machine, so
# that the allocator's per-thread arenas are the same everywhere.
_REAL_OUT_OF_MEMORY = textwrap.dedent("""
    import json, logging, resource, sys, torch
    from audioldm_tiled.testing.architectures import build_components
    from audioldm_tiled.config import TilingConfig
    from audioldm_tiled.memory import available_memory, process_sizes
    from audioldm_tiled.vae import decode_job, tiled_decode
    from audioldm_tiled.vae.budget import UNTILED_DECODE_PEAK_FACTOR, untiled_bytes, untiled_fits

    torch.set_num_threads(2)
    messages = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    logging.getLogger("audioldm_tiled").addHandler(handler)
    vae = build_components("tiny", seed=0)["vae"]
    z = torch.randn(1, 8, 3000, 16, generator=torch.Generator().manual_seed(0))
    tasks = decode_job(vae).tasks
    # The data segment may grow by 0.85 x the untiled decode's estimate (0.35 GB). Measured on 2 cores: the untiled
    # decode failed under 0.35 GB and ran under 0.38; exact tiles of 16 frames failed under 0.24 GB and ran under
    # 0.26, tiles of 48 frames (a quarter less time) run under the cap.
    cap = int(0.85 * untiled_bytes(tasks, z, UNTILED_DECODE_PEAK_FACTOR))
    resource.setrlimit(resource.RLIMIT_DATA, (process_sizes()["VmData"] + cap, resource.RLIM_INFINITY))
    # what the automatic plan decides with the budget taken from the machine (and now the rlimit)
    fits_default_budget = untiled_fits(tasks, z, TilingConfig(), UNTILED_DECODE_PEAK_FACTOR)[0]
    available = available_memory()
    with torch.inference_mode():  # a budget that wrongly says the untiled decode fits
        out = tiled_decode(vae, z, TilingConfig(tile_frames=48, memory_budget=10**12, show_progress=False))
    torch.save(out, sys.argv[1])
    print(json.dumps({"cap": cap, "available": available, "fits_default_budget": fits_default_budget,
                      "messages": messages}))
""")


def test_the_rlimit_is_planned_for_and_a_real_allocation_failure_is_caught(tmp_path):
    out_path = tmp_path / "out.pt"
    child = subprocess.run([sys.executable, "-c", _REAL_OUT_OF_MEMORY, str(out_path)], capture_output=True, text=True)
    assert child.returncode == 0, child.stderr[-3000:]
    report = json.loads(child.stdout.splitlines()[-1])
    # the budget sees the rlimit (the data segment grows a little between setting it and asking) ...
    assert 0.9 * report["cap"] < report["available"] <= report["cap"]
    assert not report["fits_default_budget"]
    # ... and a budget that does not is caught out by the allocator's real failure, then retried in tiles
    assert any("can't allocate memory" in m and "retrying once with tiles" in m for m in report["messages"])
    vae = build_components("tiny", seed=0)["vae"]
    z = torch.randn(1, 8, 3000, 16, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = vae.decode(z).sample
    assert relative_error(torch.load(out_path), expected) < EXACT_TOLERANCE
