"""tasks.forkserver: a DVC stage's step runs in a child of its repro's warm server, with the
stage's arguments, streams and exit status; an edited module, a dead `dvc` or a killed
client are handled as a cold process would be.

A stand-in `dvc` (a script named dvc that runs the commands it is given, in order, in the
project) gives the stages a `dvc` process above them, as `dvc repro` does."""
import json
import signal
import subprocess
import time

import pytest

from tests.helpers.project import BIN, make_project, project_env
from tests.helpers.study import TINY_STUDY

pytestmark = pytest.mark.slow

FAKE_DVC = r"""
import json, subprocess, sys, time
from pathlib import Path

results = []
for cmd in json.loads(sys.argv[1]):
    if cmd == ["wait-for-server"]:  # until the server of this session listens
        deadline = time.time() + 60
        while not list(Path(".kdflow/forkserver").glob("*.sock")) and time.time() < deadline:
            time.sleep(0.2)
        continue
    if cmd[:1] == ["touch"]:
        Path(cmd[1]).write_text(Path(cmd[1]).read_text() + "\n# edited\n")
        time.sleep(0.05)
        continue
    done = subprocess.run(cmd, capture_output=True, text=True)
    results.append({"cmd": cmd, "code": done.returncode, "stdout": done.stdout, "stderr": done.stderr})
print("RESULT" + json.dumps(results))
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    study = json.loads(json.dumps(TINY_STUDY))
    study["tracking"]["enabled"] = False
    study["teacher"]["schedule"]["epochs"] = 40  # long enough to be signalled while it trains
    dest = make_project(tmp_path_factory.mktemp("forkserver"), study)
    (dest / "bad.yaml").write_text("study: bad\nnot_a_key: 1\n")
    (dest / "bin").mkdir()
    (dest / "bin" / "dvc").write_text(FAKE_DVC)
    return dest


def step(*args):
    return [str(BIN / "python"), "-m", "tasks.forkserver", *args]


def fake_dvc(project, commands, timeout=300):
    """Run `commands` under one stand-in dvc process; returns their results and the server log."""
    done = subprocess.run([str(BIN / "python"), str(project / "bin" / "dvc"), json.dumps(commands)], cwd=project,
                          env=project_env(project), capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("RESULT"))[len("RESULT"):])
    logs = sorted((project / ".kdflow" / "forkserver").glob("dvc-*.log"), key=lambda p: p.stat().st_mtime)
    return results, logs[-1].read_text()


def wait_until(predicate, timeout=15.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def test_a_stage_runs_forked_with_its_arguments_streams_and_exit_status(project):
    results, log = fake_dvc(project, [
        step("check_study", "--validate-only"),  # no server yet: starts one, runs cold
        ["wait-for-server"],
        step("check_study", "--validate-only"),
        step("check_study", "--validate-only", "--params", "bad.yaml"),
        step("prepare_data"),
    ])
    cold, warm, bad, data = results
    assert cold["code"] == warm["code"] == data["code"] == 0, results
    assert "valid study 'tiny'" in cold["stdout"] and "valid study 'tiny'" in warm["stdout"]
    # a config error through the server: exit 2, its message on the stage's stderr, no traceback
    assert bad["code"] == 2 and "not_a_key" in bad["stderr"] and "Traceback" not in bad["stderr"]
    assert "prepare_data:" in data["stdout"] and (project / "artifacts" / "data" / "manifest.json").is_file()
    # the first ran cold (it started the server); the other three were forked
    assert log.count("forked check_study --validate-only") == 2 and "forked prepare_data" in log, log
    # the server left with its dvc process: nothing listens any more
    assert wait_until(lambda: not list((project / ".kdflow" / "forkserver").glob("*.sock")))


def test_the_time_account_of_a_forked_stage_skips_the_imports(project):
    results, log = fake_dvc(project, [step("prepare_data"), ["wait-for-server"], step("prepare_data")])
    assert [r["code"] for r in results] == [0, 0] and "forked prepare_data" in log
    sessions = sorted((project / ".kdflow" / "time").glob("dvc-*"), key=lambda p: p.stat().st_mtime)
    records = [json.loads(p.read_text()) for p in sorted(sessions[-1].glob("prepare_data*.json"))]
    assert len(records) == 1  # one file per step run: the second replaced the first
    cold_line, warm_line = (next(line for line in r["stdout"].splitlines() if line.startswith("time account")) for r in results)
    startup = lambda line: float(line.split("startup ")[1].split(",")[0]) if "startup" in line else 0.0  # noqa: E731
    assert startup(warm_line) < 0.5 < startup(cold_line), (cold_line, warm_line)


def test_an_edited_module_is_never_served_stale(project):
    results, log = fake_dvc(project, [
        step("check_study", "--validate-only"), ["wait-for-server"],
        ["touch", "kdlib/metrics.py"],
        step("check_study", "--validate-only"),
    ])
    assert [r["code"] for r in results] == [0, 0]
    assert "changed since the server started" in results[1]["stderr"]  # the client said why it ran cold
    assert "refused 'check_study'" in log and "forked" not in log
    assert wait_until(lambda: not list((project / ".kdflow" / "forkserver").glob("*.sock")))  # and the server left


SIGNALLED = r"""
import json, os, re, subprocess, sys, time
from pathlib import Path

py, signals = sys.argv[1], [int(s) for s in sys.argv[2:]]
subprocess.run([py, "-m", "tasks.forkserver", "prepare_data"], check=True, capture_output=True)
deadline = time.time() + 60
while not list(Path(".kdflow/forkserver").glob("*.sock")) and time.time() < deadline:
    time.sleep(0.2)
log = next(Path(".kdflow/forkserver").glob("*.log"))


def signalled(sig, mode):
    cmd = [py, "-m", "tasks.forkserver", "train_teacher"] if mode == "warm" else [py, "-m", "tasks.train_teacher"]
    forks = log.read_text().count("forked train_teacher")
    client = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in client.stdout:  # signalled once training is under way (a later run resumes the killed one)
        if re.search(r"epoch \d+/40", line):
            break
    found = log.read_text()
    child = int(found.rsplit("forked train_teacher  as pid ", 1)[1].split()[0]) if mode == "warm" else client.pid
    os.kill(client.pid, sig)
    client.stdout.read()
    code = client.wait(timeout=60)
    alive = True
    for _ in range(100):  # the stage's process follows its command
        stat = Path(f"/proc/{child}/stat")
        if not stat.exists() or stat.read_text().rpartition(")")[2].split()[0] == "Z":
            alive = False
            break
        time.sleep(0.1)
    return {"code": code, "alive": alive, "forked": found.count("forked train_teacher") - forks}


print("RESULT" + json.dumps({sig: {mode: signalled(sig, mode) for mode in ("warm", "cold")} for sig in signals}))
"""


def test_a_signalled_stage_ends_as_a_cold_one_does(project):
    """SIGINT and SIGTERM reach the forked child, and the command exits as the same step in
    its own interpreter does; SIGKILL, which cannot be forwarded, closes the command's socket
    and the child kills itself. No stage's process outlives its command."""
    fake = project / "bin" / "signalled" / "dvc"  # named dvc: the stages find it above them
    fake.parent.mkdir(exist_ok=True)
    fake.write_text(SIGNALLED)
    signals = [int(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL)]
    done = subprocess.run([str(BIN / "python"), str(fake), str(BIN / "python"), *map(str, signals)], cwd=project,
                          env=project_env(project, PYTHONUNBUFFERED="1"), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("RESULT"))[len("RESULT"):])
    for sig in signals:
        warm, cold = out[str(sig)]["warm"], out[str(sig)]["cold"]
        assert warm["forked"] == 1 and cold["forked"] == 0, (sig, warm, cold)
        assert warm["code"] == cold["code"] and not warm["alive"] and not cold["alive"], (sig, warm, cold)
    assert out[str(int(signal.SIGKILL))]["warm"]["code"] == -signal.SIGKILL


def test_without_a_dvc_process_the_step_runs_in_the_client(project):
    done = subprocess.run(step("check_study", "--validate-only"), cwd=project, env=project_env(project),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "valid study" in done.stdout


def test_an_unknown_step_is_refused(project):
    done = subprocess.run(step("not_a_step"), cwd=project, env=project_env(project), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2 and "not_a_step" in done.stderr and "Traceback" not in done.stderr
