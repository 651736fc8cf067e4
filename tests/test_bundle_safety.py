"""Bundles that no careless or hostile input can damage (issue 12).

Real files and real processes throughout: the console script in a subprocess, a small driver
process that stages a bundle and is killed (``kill -9``) at a chosen step of the commit, real
SIGTERM/SIGHUP, real symlinks. A process stops at a step through the commit's own test hook
(``NAS2DEPLOY_PAUSE_AT``, see ``nas2deploy.outdir._pause``), so the kill lands exactly there.
"""

from __future__ import annotations

import json
import os
import signal
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from nas2deploy import load_bundle
from nas2deploy.bundle import MANIFEST, read_manifest, sha256
from nas2deploy.cli import main
from nas2deploy.errors import BundleError, UsageError
from nas2deploy.outdir import staged_bundle

EXE = Path(sys.executable).with_name("nas2deploy")
TINY = ('method = "example-random"\ninput-size = 16\nsearch-epochs = 1\nretrain-epochs = 0\n'
        'max-rounds = 1\ntarget = "onnxruntime:cpu"\nexport = "onnx,tensorrt"\n'
        '[method-options]\nsamples = 1\nlayers = 2\nwidth = 8\n')

# Stages a copy of SRC as a bundle at OUT (its manifest marked "new"), optionally making a
# scratch folder first as runtime.py and latency/collect.py do; the test kills it where it pauses.
DRIVER = r"""
import json, shutil, sys, tempfile
from pathlib import Path
from nas2deploy.outdir import staged_bundle
src, out = Path(sys.argv[1]), Path(sys.argv[2])
overwrite, scratch = sys.argv[3] == "1", sys.argv[4] == "1"
if scratch:
    from nas2deploy.outdir import scratch_prefix
    tempfile.mkdtemp(prefix=scratch_prefix("driver"))
with staged_bundle(out, overwrite) as tmp:
    for child in src.iterdir():
        (shutil.copytree if child.is_dir() else shutil.copy2)(child, tmp / child.name)
    m = json.loads((tmp / "manifest.json").read_text())
    m["note"] = "new"
    (tmp / "manifest.json").write_text(json.dumps(m))
print("committed")
"""


# --------------------------------------------------------------------------------------------
# helpers


def plugin_env(random_plugin, **extra) -> dict[str, str]:
    path = os.pathsep.join([str(random_plugin)] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    return {**os.environ, "PYTHONPATH": path, **extra}


def cli(*args, env=None, timeout=300) -> subprocess.CompletedProcess:
    """The real console script, in a subprocess."""
    return subprocess.run([str(EXE), *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=timeout)


def assert_one_line(res, code: int, *needles: str) -> str:
    assert res.returncode == code, (res.returncode, res.stdout[-2000:], res.stderr[-2000:])
    assert "Traceback" not in res.stderr
    lines = [ln for ln in res.stderr.splitlines()
             if ln.strip() and not ln.startswith("[nas2deploy]")]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def umask() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("Umask:"):
            return int(line.split()[1], 8)
    return 0o022


def leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


def tree(folder: Path) -> dict[str, bytes | str]:
    """Everything under ``folder``: file bytes, link targets, directories."""
    out: dict[str, bytes | str] = {}
    for p in sorted(folder.rglob("*")):
        rel = str(p.relative_to(folder))
        out[rel] = (f"-> {os.readlink(p)}" if p.is_symlink() else
                    "<dir>" if p.is_dir() else p.read_bytes())
    return out


def note(bundle: Path) -> str | None:
    return json.loads((bundle / MANIFEST).read_text()).get("note")


def copy_bundle(src: Path, dst: Path, mark: str | None = None) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    if mark is not None:
        m = json.loads((dst / MANIFEST).read_text())
        m["note"] = mark
        (dst / MANIFEST).write_text(json.dumps(m, indent=2))
    return dst


def start_paused(cmd: list[str], step: str, env: dict[str, str], logdir: Path,
                 timeout: float = 240) -> subprocess.Popen:
    """Start ``cmd`` and return once it has paused at ``step`` (the commit's test hook)."""
    marker = logdir / f"paused-at-{step}"
    env = {**env, "NAS2DEPLOY_PAUSE_AT": step, "NAS2DEPLOY_PAUSE_FILE": str(marker)}
    log = open(logdir / f"log-{step}.txt", "w+")
    # SIGHUP as the default action, whatever this test runner inherited (nohup ignores it)
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                            preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL))
    proc.log = log  # type: ignore[attr-defined]
    deadline = time.monotonic() + timeout
    while not marker.exists():
        if proc.poll() is not None:
            log.seek(0)
            pytest.fail(f"exited {proc.returncode} without pausing at {step}: {log.read()[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"did not pause at {step} in {timeout} s")
        time.sleep(0.05)
    return proc


def output(proc: subprocess.Popen) -> str:
    proc.log.seek(0)  # type: ignore[attr-defined]
    return proc.log.read()  # type: ignore[attr-defined]


def kill9(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def driver(built: Path, out: Path, logdir: Path, step: str, *, overwrite: bool = True,
           scratch: bool = False, env: dict[str, str] | None = None) -> subprocess.Popen:
    script = logdir / "driver.py"
    script.write_text(DRIVER)
    return start_paused([sys.executable, str(script), str(built), str(out),
                         "1" if overwrite else "0", "1" if scratch else "0"],
                        step, env or dict(os.environ), logdir)


# --------------------------------------------------------------------------------------------
# one real bundle, copied per test


@pytest.fixture(scope="module")
def built(random_plugin, tmp_path_factory) -> Path:
    """One real run of the console script (tiny config, onnx + tensorrt files)."""
    root = tmp_path_factory.mktemp("built")
    cfg = root / "tiny.toml"
    cfg.write_text(TINY)
    out = root / "bundle"
    res = cli("search-and-export", "--config", cfg, "--out", out, "--quiet",
              env=plugin_env(random_plugin))
    assert res.returncode in (0, 3), res.stderr[-3000:]
    read_manifest(out)
    return out


@pytest.fixture
def bundle(built, tmp_path) -> Path:
    return copy_bundle(built, tmp_path / "b")


# --------------------------------------------------------------------------------------------
# 1. --overwrite replaces only a bundle or an empty directory


def test_overwrite_refuses_a_directory_that_is_not_a_bundle(tmp_path):
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    (data / "thesis.tex").write_text("years of work")
    (data / "sub" / "results.csv").write_text("1,2,3")
    before = tree(data)
    res = cli("search-and-export", "--out", data, "--overwrite")
    line = assert_one_line(res, 2, "not a nas2deploy bundle")
    assert "loading dataset" not in res.stderr  # refused in plan(), before any work
    assert tree(data) == before and leftovers(data) == [], line
    with pytest.raises(UsageError, match="not a nas2deploy bundle"):
        with staged_bundle(data, True):
            pass
    assert tree(data) == before and leftovers(data) == []


def test_overwrite_replaces_a_bundle_or_an_empty_directory(built, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    old = copy_bundle(built, tmp_path / "old", mark="old")
    for out in (empty, old):
        with staged_bundle(out, True) as tmp:
            copy_bundle(built, tmp / "x", mark="new")
            for child in (tmp / "x").iterdir():
                child.rename(tmp / child.name)
            (tmp / "x").rmdir()
        assert note(out) == "new" and read_manifest(out)
        assert leftovers(out) == []
        assert out.stat().st_mode & 0o777 == 0o777 & ~umask()  # not mkdtemp's 0o700


# --------------------------------------------------------------------------------------------
# 2. one run per --out: a lock from plan to commit, and the commit checks again


def test_a_second_run_on_a_locked_out_is_refused_with_the_holders_pid(built, tmp_path):
    out = copy_bundle(built, tmp_path / "out", mark="old")
    holder = driver(built, out, tmp_path, "staged")
    try:
        lock = tmp_path / ".out.lock"
        assert lock.read_text().strip() == str(holder.pid)
        for extra in ([], ["--overwrite"]):
            res = cli("search-and-export", "--out", out, *extra)
            assert_one_line(res, 2, f"pid {holder.pid}")
            assert "loading dataset" not in res.stderr
        assert note(out) == "old"
    finally:
        kill9(holder)
    # a dead holder's lock holds nothing: the next run takes it over and clears up
    res = cli("search-and-export", "--out", out)
    assert_one_line(res, 2, "--overwrite")
    assert note(out) == "old" and leftovers(out) == []


def test_the_commit_checks_again_what_is_at_out(built, tmp_path):
    out = tmp_path / "out"
    # something else took the path while the run was staging: it is not replaced
    with pytest.raises(UsageError, match="not a nas2deploy bundle"):
        with staged_bundle(out, True) as tmp:
            (tmp / "manifest.json").write_text("{}")
            out.mkdir()
            (out / "precious.txt").write_text("keep me")
    assert (out / "precious.txt").read_text() == "keep me" and leftovers(out) == []
    shutil.rmtree(out)
    # a bundle appeared meanwhile and this run has no --overwrite: it is not replaced either
    with pytest.raises(UsageError, match="--overwrite"):
        with staged_bundle(out, False) as tmp:
            (tmp / "manifest.json").write_text("{}")
            copy_bundle(built, out, mark="theirs")
    assert note(out) == "theirs" and leftovers(out) == []


# --------------------------------------------------------------------------------------------
# 3. the commit: some complete bundle is always at --out


@pytest.mark.parametrize("step,commit,at_out_after_kill,at_out_after_next_run", [
    ("staged", "exchange", "old", "old"),
    ("exchanged", "exchange", "new", "new"),
    ("parked", "rename", None, "old"),  # no atomic exchange: the next run puts the old one back
])
def test_kill_9_during_the_commit(built, tmp_path, step, commit, at_out_after_kill,
                                  at_out_after_next_run):
    out = copy_bundle(built, tmp_path / "out", mark="old")
    env = {**os.environ, "NAS2DEPLOY_COMMIT": commit}
    kill9(driver(built, out, tmp_path, step, env=env))
    if at_out_after_kill is None:
        assert not out.exists()
    else:
        assert note(out) == at_out_after_kill and read_manifest(out)
    assert leftovers(out)  # what the killed run left: cleared by the next
    res = cli("search-and-export", "--out", out)  # refused (no --overwrite), after recovering
    assert_one_line(res, 2, "--overwrite")
    assert note(out) == at_out_after_next_run and read_manifest(out)
    assert leftovers(out) == []


def test_the_exchange_commit_runs_to_the_end(built, tmp_path):
    out = copy_bundle(built, tmp_path / "out", mark="old")
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    res = subprocess.run([sys.executable, str(script), str(built), str(out), "1", "0"],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert note(out) == "new" and read_manifest(out) and leftovers(out) == []


# --------------------------------------------------------------------------------------------
# 4. SIGTERM/SIGHUP like Ctrl-C; what a kill -9 left is cleared by the next run


def test_sigterm_while_staging_exits_130_and_cleans_up(random_plugin, built, tmp_path):
    out = copy_bundle(built, tmp_path / "out", mark="old")
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(TINY)
    proc = start_paused([str(EXE), "search-and-export", "--config", str(cfg), "--out", str(out),
                         "--overwrite", "--quiet"], "staged",
                        plugin_env(random_plugin, TMPDIR=str(scratch)), tmp_path)
    assert [p for p in tmp_path.iterdir() if p.name.startswith(".out.tmp-")]
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=60) == 130, output(proc)
    err = [ln for ln in output(proc).splitlines() if ln.strip()]
    assert err[-1].startswith("error: interrupted") and "Traceback" not in output(proc)
    assert note(out) == "old" and read_manifest(out)
    assert leftovers(out) == []
    assert [p.name for p in scratch.iterdir() if p.name.startswith("nas2deploy-")] == []


def test_sighup_early_in_a_run_exits_130_and_cleans_up(random_plugin, tmp_path):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(TINY)
    out = tmp_path / "out"
    log = open(tmp_path / "log.txt", "w+")
    proc = subprocess.Popen([str(EXE), "search-and-export", "--config", str(cfg), "--out",
                             str(out), "--quiet"], stdout=log, stderr=subprocess.STDOUT,
                            env=plugin_env(random_plugin, TMPDIR=str(scratch)),
                            preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while not any(p.name.startswith("nas2deploy-") for p in scratch.iterdir()):
        assert proc.poll() is None and time.monotonic() < deadline, "no scratch folder appeared"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGHUP)
    assert proc.wait(timeout=60) == 130
    log.seek(0)
    text = log.read()
    assert "Traceback" not in text
    assert text.strip().splitlines()[-1].startswith("error: interrupted")
    assert not out.exists() and leftovers(out) == []
    assert [p.name for p in scratch.iterdir() if p.name.startswith("nas2deploy-")] == []


def test_what_a_kill_9_left_is_cleared_by_the_next_run(built, tmp_path):
    out = copy_bundle(built, tmp_path / "out", mark="old")
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    live = scratch / f"nas2deploy-{os.getpid()}-live-abc"  # a running process's: kept
    live.mkdir()
    foreign = scratch / "nas2deploy-measure-abc"  # no pid in the name: not ours to judge
    foreign.mkdir()
    env = {**os.environ, "TMPDIR": str(scratch)}
    proc = driver(built, out, tmp_path, "staged", scratch=True, env=env)
    kill9(proc)
    dead = [p for p in scratch.iterdir() if p.name.startswith(f"nas2deploy-{proc.pid}-")]
    assert dead and any(n.startswith(".out.tmp-") for n in leftovers(out))
    res = cli("search-and-export", "--out", out, env=env)
    assert_one_line(res, 2, "--overwrite")
    assert leftovers(out) == [] and note(out) == "old"
    assert sorted(p.name for p in scratch.iterdir() if p.name.startswith("nas2deploy-")) == \
        sorted([live.name, foreign.name])


# --------------------------------------------------------------------------------------------
# 5. the manifest is written through a unique temporary file, never through a symlink


def test_measure_never_writes_through_a_planted_symlink(bundle, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("must survive")
    for name in (".manifest.json.tmp", ".manifest.json.tmp-1"):
        (bundle / name).symlink_to(victim)
    res = cli("measure", bundle, "--json")
    assert res.returncode in (0, 3), res.stderr
    assert victim.read_text() == "must survive"
    assert json.loads((bundle / MANIFEST).read_text())["measurements"]
    assert not (bundle / MANIFEST).is_symlink()


def test_a_manifest_that_is_a_symlink_is_refused(bundle, tmp_path):
    elsewhere = tmp_path / "elsewhere.json"
    shutil.move(bundle / MANIFEST, elsewhere)
    (bundle / MANIFEST).symlink_to(elsewhere)
    before = elsewhere.read_bytes()
    assert_one_line(cli("measure", bundle), 2, "symlink")
    assert elsewhere.read_bytes() == before and (bundle / MANIFEST).is_symlink()


def test_write_atomic(tmp_path):
    from nas2deploy.bundle import write_atomic

    path = tmp_path / "f.json"
    path.write_text("old")
    path.chmod(0o640)
    victim = tmp_path / "victim"
    victim.write_text("keep")
    (tmp_path / ".f.json.tmp").symlink_to(victim)
    write_atomic(path, "new")
    assert path.read_text() == "new" and victim.read_text() == "keep"
    assert path.stat().st_mode & 0o777 == 0o640  # an update keeps the file's mode
    assert sorted(p.name for p in tmp_path.iterdir()) == [".f.json.tmp", "f.json", "victim"]
    link = tmp_path / "link.json"
    link.symlink_to(victim)
    with pytest.raises(BundleError, match="symlink"):
        write_atomic(link, "x")
    assert victim.read_text() == "keep"


# --------------------------------------------------------------------------------------------
# 6. every path in the manifest stays inside the bundle, and every file has a matching hash


def _edit(bundle: Path, fn) -> None:
    m = json.loads((bundle / MANIFEST).read_text())
    fn(m)
    (bundle / MANIFEST).write_text(json.dumps(m, indent=2))


def _point_onnx_at(bundle: Path, rel: str) -> None:
    def fn(m):
        m["files"]["onnx"] = rel
        m["artifacts"]["onnx"]["files"]["model"] = rel
        m["hashes"][rel] = m["hashes"].pop("model.onnx")
    _edit(bundle, fn)


def damage(kind: str, b: Path, outside: Path) -> None:
    outside.mkdir()
    shutil.copy2(b / "model.onnx", outside / "model.onnx")
    if kind == "absolute-path":
        _point_onnx_at(b, str(outside / "model.onnx"))
    elif kind == "dotdot-path":
        _point_onnx_at(b, f"../{outside.name}/model.onnx")
    elif kind == "dotdot-in-hashes":
        _edit(b, lambda m: m["hashes"].update(
            {f"../{outside.name}/model.onnx": sha256(outside / "model.onnx")}))
    elif kind == "symlinked-file":  # same bytes, same hash: only the link gives it away
        (b / "model.onnx").unlink()
        (b / "model.onnx").symlink_to(outside / "model.onnx")
    elif kind == "symlinked-dir":
        shutil.move(b / "tensorrt", outside / "tensorrt")
        (b / "tensorrt").symlink_to(outside / "tensorrt")
    elif kind == "no-hashes":
        _edit(b, lambda m: m.pop("hashes"))
    elif kind == "unhashed-file":
        _edit(b, lambda m: m["hashes"].pop("model.onnx"))
    elif kind == "not-a-string":
        _edit(b, lambda m: m["files"].update(onnx=["model.onnx"]))
    else:
        raise AssertionError(kind)


DAMAGE = ["absolute-path", "dotdot-path", "dotdot-in-hashes", "symlinked-file", "symlinked-dir",
          "no-hashes", "unhashed-file", "not-a-string"]


@pytest.mark.parametrize("kind", DAMAGE)
def test_manifest_paths_stay_inside_and_are_all_hashed(bundle, tmp_path, kind):
    damage(kind, bundle, tmp_path / "outside")
    res = CliRunner().invoke(main, ["measure", str(bundle), "--no-record"])
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output and res.stderr.strip().startswith("error: ")
    with pytest.raises(BundleError):
        load_bundle(bundle)
    with pytest.raises(BundleError):
        read_manifest(bundle)


def test_a_hostile_path_is_refused_by_the_console_script(bundle, tmp_path):
    damage("dotdot-path", bundle, tmp_path / "outside")
    assert_one_line(cli("measure", bundle), 2, "outside the bundle")


def test_load_bundle_reads_only_files_the_manifest_names_and_hashes(bundle):
    _edit(bundle, lambda m: (m["files"].pop("architecture"),
                             m["hashes"].pop("architecture.json")))
    with pytest.raises(BundleError, match="architecture"):
        load_bundle(bundle)


def test_load_bundle_checks_the_weights_header_against_the_architecture(bundle, monkeypatch):
    """An architecture.json swapped for a much larger network (rehashed, so every file checks)
    is refused from the weights file's header, before any module of it is built."""
    arch = json.loads((bundle / "architecture.json").read_text())
    for node in arch["network"]["nodes"]:  # every channel count x4, the input's excepted
        for key in ("c_out", "c_in", "c", "mid", "groups"):
            if key in node and not (key == "c_in" and "input" in node["inputs"]
                                    or key == "groups" and node[key] == 1):
                node[key] *= 4
    (bundle / "architecture.json").write_text(json.dumps(arch))
    _edit(bundle, lambda m: m["hashes"].update(
        {"architecture.json": sha256(bundle / "architecture.json")}))
    import nas2deploy.bundle as bundle_mod

    built = []
    monkeypatch.setattr(bundle_mod, "build_network", lambda spec: built.append(spec))
    with pytest.raises(BundleError, match="another network"):
        load_bundle(bundle)
    assert built == []


# --------------------------------------------------------------------------------------------
# 7. build-engine never runs the bundle's own script


def _edit_script(bundle: Path, extra: str, *, rehash: bool) -> None:
    script = bundle / "tensorrt" / "build_engine.sh"
    text = script.read_text()
    script.write_text(text.replace("set -euo pipefail", f"set -euo pipefail\n{extra}"))
    if rehash:  # whoever edits the script can edit the manifest as well
        _edit(bundle, lambda m: m["hashes"].update({"tensorrt/build_engine.sh": sha256(script)}))


@pytest.mark.parametrize("rehash", [True, False], ids=["rehashed", "hash-mismatch"])
def test_build_engine_refuses_an_edited_script_before_anything_runs(bundle, tmp_path, rehash):
    pwned = tmp_path / "PWNED"
    _edit_script(bundle, f"touch {pwned}", rehash=rehash)
    before = (bundle / MANIFEST).read_bytes()
    for extra in ([], ["--trtexec"]):
        res = cli("build-engine", bundle, *extra)
        assert_one_line(res, 2, "build_engine.sh")
    assert not pwned.exists() and (bundle / MANIFEST).read_bytes() == before


def test_the_script_check_compares_with_the_regenerated_script(bundle):
    from nas2deploy_exporters import tensorrt as trt

    info = read_manifest(bundle)["artifacts"]["tensorrt"]["info"]
    plan, _ = trt.make_plan(bundle, info["onnx"], info["precision"], info["profile"]["opt"][0])
    trt.verify_script(bundle, plan)  # as exported: accepted
    _edit_script(bundle, "echo hi", rehash=True)
    with pytest.raises(BundleError, match="differs"):
        trt.verify_script(bundle, plan)


# --------------------------------------------------------------------------------------------
# 8. measure --threads is checked


@pytest.mark.parametrize("threads", ["0", "-2", str((os.cpu_count() or 1) * 4 + 1)])
def test_measure_threads_out_of_range(bundle, threads):
    before = (bundle / MANIFEST).read_bytes()
    assert_one_line(cli("measure", bundle, "--threads", threads), 2, "--threads")
    assert (bundle / MANIFEST).read_bytes() == before


# --------------------------------------------------------------------------------------------
# checked up front: an --out that cannot be written is refused in plan()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes in read-only directories")
def test_out_in_a_read_only_directory_is_refused_up_front(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        res = cli("search-and-export", "--out", ro / "out")
        assert_one_line(res, 2, "cannot write")
        assert "loading dataset" not in res.stderr and list(ro.iterdir()) == []
    finally:
        ro.chmod(0o755)


def test_out_under_a_file_is_refused_up_front(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    res = cli("search-and-export", "--out", f / "out")
    assert_one_line(res, 2, "--out")
    assert "loading dataset" not in res.stderr and f.read_text() == "x"
