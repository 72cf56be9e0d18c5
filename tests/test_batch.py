"""`nmsr batch` / register_many on real Dask clusters bound to 127.0.0.1.

A LocalCluster started by the command, a `dask scheduler` + `dask worker`
started here as processes, --resume, and a worker killed under its task.
Sequences are tiny and optimised for a few steps: these tests check the
bookkeeping, not the registration.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

distributed = pytest.importorskip("distributed")

import napari_nmsr  # noqa: E402
from napari_nmsr.batch import local_cluster_size, register_many  # noqa: E402
from napari_nmsr.cli import main  # noqa: E402
from napari_nmsr.core.batch import find_inputs, read_summary  # noqa: E402
from napari_nmsr.core.register import RegistrationConfig  # noqa: E402
from napari_nmsr.core.result import RegistrationResult  # noqa: E402

# One torch thread per task: the test machine has 2 cores for 2 workers.
FAST = ["--steps", "3", "--scales", "0.5,1", "--quiet", "--dashboard-address", "none", "--threads-per-worker", "1"]
FAST_CONFIG = RegistrationConfig(steps=3, scales=(0.5, 1.0))
REPO = str(Path(napari_nmsr.__file__).resolve().parents[1])


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Three tiny simulated cines (.npy), their masks in a folder, and a corrupt .npz."""
    from napari_nmsr.core.simulate import vortex

    root = tmp_path_factory.mktemp("batch")
    seqs, masks = root / "seqs", root / "masks"
    seqs.mkdir()
    masks.mkdir()
    for i in range(3):
        sim = vortex(size=48, n_frames=4, seed=i + 1)
        np.save(seqs / f"cine{i}.npy", sim.frames)
        np.save(masks / f"cine{i}_masks.npy", sim.masks)
    (seqs / "broken.npz").write_bytes(b"PK\x03\x04 this is not a zip archive")
    np.save(masks / "broken.npy", sim.masks)  # a mask, so the file itself is what fails
    return root


def _rows_by_name(rows):
    return {Path(r["input"]).name: r for r in rows}


def _worker_env():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH", "")) if p)
    return env


def test_local_cluster_size_fills_the_cores():
    assert local_cluster_size(8) == (8, 1)
    assert local_cluster_size(8, n_workers=2) == (2, 4)
    assert local_cluster_size(8, threads=3) == (2, 3)
    assert local_cluster_size(16, gpus=2) == (2, 8)


def test_gpu_local_cluster_gives_each_worker_one_device():
    """The one-worker-per-GPU cluster (built here without GPUs: only its wiring is checked)."""
    from napari_nmsr.batch import _start_local_cluster

    with _start_local_cluster(2, 1, ["0", "1"], None) as cluster, distributed.Client(cluster) as c:
        c.wait_for_workers(2, timeout=60)
        seen = c.run(lambda: os.environ.get("CUDA_VISIBLE_DEVICES"))
        info = c.scheduler_info(n_workers=-1)["workers"]
    assert sorted(seen.values()) == ["0", "1"]
    assert all(addr.startswith("tcp://127.0.0.1:") for addr in seen)
    assert all(w["resources"] == {"GPU": 1} and w["nthreads"] == 1 for w in info.values())


def test_inputs_from_folders_and_globs_skip_outputs(data, tmp_path):
    seqs = data / "seqs"
    out = seqs / "out"
    out.mkdir(exist_ok=True)
    (out / "cine0.nmsr.npz").write_bytes(b"x")
    found = find_inputs([seqs, str(seqs / "cine*.npy")], exclude=[out])
    assert [p.name for p in found] == ["broken.npz", "cine0.npy", "cine1.npy", "cine2.npy"]
    with pytest.raises(FileNotFoundError):
        find_inputs([str(seqs / "nothing*.dcm")])


def test_local_cluster_two_workers_isolates_corrupt_file(data, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["batch", str(data / "seqs"), "--out-dir", str(out), "--masks", str(data / "masks"),
                 "--workers", "2", "--analyze", *FAST])
    assert code == 1  # one input failed, the others finished
    assert "3 ok, 0 skipped, 1 failed" in capsys.readouterr().out
    rows = _rows_by_name(read_summary(out / "summary.csv"))
    assert set(rows) == {"broken.npz", "cine0.npy", "cine1.npy", "cine2.npy"}
    broken = rows["broken.npz"]
    assert broken["status"] == "failed" and "broken.npz" in broken["error"]
    assert broken["attempts"] == "2" and broken["retried_from"] not in ("", broken["worker"])  # retried elsewhere
    for i in range(3):
        row = rows[f"cine{i}.npy"]
        assert row["status"] == "ok" and row["error"] == "" and row["attempts"] == "1"
        assert row["worker"].startswith("tcp://127.0.0.1:")
        assert (row["frames"], row["height"], row["width"]) == ("4", "48", "48")
        res = RegistrationResult.load(out / f"cine{i}.nmsr.npz")
        assert res.fields.shape == (2, 3, 2, 48, 48)
        assert float(row["final_mean_cc"]) == pytest.approx(float(np.mean(res.metrics["mean_cc"][-1])))
        assert row["notes"] == " | ".join(res.notes)  # what the engine decided beyond its plan, per input
        report = json.loads((out / f"cine{i}.analysis.json").read_text())
        assert [p["t"] for p in report["pairs"]] == [0, 1, 2]
    assert not any(p.name.startswith(".") for p in out.iterdir())  # no temporary files left behind


@pytest.fixture(scope="module")
def client():
    """A LocalCluster of 2 worker processes, shared by the API tests."""
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  scheduler_port=0, dashboard_address=None) as cluster, distributed.Client(cluster) as c:
        yield c


def test_resume_skips_loadable_results_and_reruns_the_rest(data, tmp_path, client):
    seqs = data / "seqs"
    inputs = [seqs / f"cine{i}.npy" for i in range(3)]
    first = register_many(inputs[:2], client, out_dir=tmp_path, config=FAST_CONFIG, threads_per_worker=1)
    assert [r["status"] for r in first] == ["ok", "ok"]
    kept = tmp_path / "cine0.nmsr.npz"
    damaged = tmp_path / "cine1.nmsr.npz"
    damaged.write_bytes(damaged.read_bytes()[:100])  # a truncated result does not load
    before = (kept.stat().st_mtime_ns, kept.read_bytes())

    rows = _rows_by_name(register_many(inputs, client, out_dir=tmp_path, config=FAST_CONFIG, resume=True,
                                       threads_per_worker=1))
    assert rows["cine0.npy"]["status"] == "skipped" and rows["cine0.npy"]["frames"] == 4
    assert (kept.stat().st_mtime_ns, kept.read_bytes()) == before  # untouched
    assert rows["cine1.npy"]["status"] == "ok" and RegistrationResult.load(damaged).n_scales == 2
    assert rows["cine2.npy"]["status"] == "ok"
    assert [r["status"] for r in read_summary(tmp_path / "summary.csv")] == ["skipped", "ok", "ok"]


def test_summary_is_written_as_the_batch_goes(data, tmp_path, client):
    seen = []

    def progress(row, done, total):
        seen.append((done, total, len(read_summary(tmp_path / "summary.csv"))))

    register_many([data / "seqs" / "cine0.npy", data / "seqs" / "cine1.npy"], client, out_dir=tmp_path,
                  config=FAST_CONFIG, threads_per_worker=1, progress=progress)
    assert seen == [(1, 2, 1), (2, 2, 2)]  # each finished input is on disk before the next


def test_bad_arguments_exit_2(data, tmp_path, capsys):
    assert main(["batch", str(tmp_path / "missing.dcm"), "--out-dir", str(tmp_path / "o"), *FAST]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["batch", str(data / "seqs"), "--out-dir", str(tmp_path / "o"), "--scheduler",
                 "tcp://127.0.0.1:1", "--workers", "2", *FAST]) == 2
    assert "drop --workers" in capsys.readouterr().err
    assert main(["batch", str(data / "seqs"), "--out-dir", str(tmp_path / "o"), "--scheduler-file",
                 str(tmp_path / "nowhere.json"), *FAST]) == 2
    assert "scheduler file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["batch", str(data / "seqs"), "--out-dir", str(tmp_path / "o"), "--workers", "0"])
    assert exc.value.code == 2
    import torch

    if not torch.cuda.is_available():  # refused before a cluster whose tasks would wait forever
        assert main(["batch", str(data / "seqs"), "--out-dir", str(tmp_path / "o"), "--device", "cuda", *FAST]) == 2
        assert "no CUDA GPU" in capsys.readouterr().err


# ----------------------------------------------------------------------------- a cluster started by hand


def _wait_for(predicate, timeout=60.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise TimeoutError(f"timed out waiting for {what}")


def _start_worker(scheduler_file, name):
    return subprocess.Popen(
        [sys.executable, "-m", "dask", "worker", "--scheduler-file", str(scheduler_file), "--host", "127.0.0.1",
         "--nthreads", "1", "--no-nanny", "--no-dashboard", "--dashboard-address", "127.0.0.1:0", "--name", name],
        env=_worker_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


@pytest.fixture(scope="module")
def external(tmp_path_factory):
    """`dask scheduler` and one `dask worker`, as processes on 127.0.0.1.

    The scheduler fails a task at the first death of its worker (Dask's
    default re-runs it silently), so the kill test sees register_many's own
    retry.
    """
    folder = tmp_path_factory.mktemp("dask")
    scheduler_file = folder / "scheduler.json"
    env = dict(_worker_env(), DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES="0")
    procs = [subprocess.Popen(
        # --dashboard-address: the HTTP server (health checks) runs even with --no-dashboard
        [sys.executable, "-m", "dask", "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
         "--dashboard-address", "127.0.0.1:0", "--scheduler-file", str(scheduler_file)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )]
    try:
        _wait_for(lambda: scheduler_file.is_file() and scheduler_file.stat().st_size > 0, what="the scheduler")
        address = json.loads(scheduler_file.read_text())["address"]
        procs.append(_start_worker(scheduler_file, "stable"))
        with distributed.Client(address, timeout="30s") as c:
            c.wait_for_workers(1, timeout=60)
            yield {"address": address, "file": scheduler_file, "client": c, "procs": procs}
    finally:
        for p in reversed(procs):  # workers first, then the scheduler
            if p.poll() is None:
                p.terminate()
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def test_cli_runs_on_an_existing_scheduler(data, tmp_path, external, capsys):
    assert external["address"].startswith("tcp://127.0.0.1:")
    seqs = data / "seqs"
    code = main(["batch", str(seqs / "cine0.npy"), str(seqs / "cine1.npy"), "--out-dir", str(tmp_path),
                 "--scheduler", external["address"], *FAST])
    assert code == 0, capsys.readouterr().err
    workers = external["client"].scheduler_info(n_workers=-1)["workers"]
    rows = read_summary(tmp_path / "summary.csv")
    assert [r["status"] for r in rows] == ["ok", "ok"]
    assert {r["worker"] for r in rows} <= set(workers)  # ran on the hand-started worker
    assert all(RegistrationResult.load(r["result"]).n_scales == 2 for r in rows)
    # the same cluster through its scheduler file; --resume skips the two results and runs the new input
    capsys.readouterr()
    code = main(["batch", *(str(seqs / f"cine{i}.npy") for i in range(3)), "--out-dir", str(tmp_path),
                 "--scheduler-file", str(external["file"]), "--resume", *FAST])
    assert code == 0 and "1 ok, 2 skipped, 0 failed" in capsys.readouterr().out
    rows = read_summary(tmp_path / "summary.csv")
    assert [r["status"] for r in rows] == ["skipped", "skipped", "ok"] and rows[2]["worker"] in workers


def test_killed_worker_input_is_retried_and_finishes(data, tmp_path, external):
    c = external["client"]
    victim = _start_worker(external["file"], "victim")
    external["procs"].append(victim)
    c.wait_for_workers(2, timeout=60)
    by_name = {w["name"]: addr for addr, w in c.scheduler_info(n_workers=-1)["workers"].items()}
    victim_addr, stable_addr = by_name["victim"], by_name["stable"]
    seqs = data / "seqs"
    # A fresh worker's first task imports torch and the engine (seconds), then
    # optimises: long enough to be killed under.
    slow = RegistrationConfig(steps=40, scales=(0.5, 1.0), patience=0)
    result = {}
    runner = threading.Thread(target=lambda: result.update(rows=register_many(
        [seqs / "cine0.npy", seqs / "cine1.npy"], c, out_dir=tmp_path, config=slow, threads_per_worker=1)))
    runner.start()
    _wait_for(lambda: c.processing(workers=[victim_addr]).get(victim_addr), what="a task on the victim")
    os.kill(victim.pid, signal.SIGKILL)
    runner.join(timeout=300)
    assert not runner.is_alive()
    rows = result["rows"]
    assert [r["status"] for r in rows] == ["ok", "ok"]
    retried = [r for r in rows if r["attempts"] == 2]
    assert len(retried) == 1 and retried[0]["retried_from"] == victim_addr and retried[0]["worker"] == stable_addr
    assert all(RegistrationResult.load(r["result"]).n_scales == 2 for r in rows)
