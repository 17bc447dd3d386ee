"""The grader against a student who attacks it, and against a busy machine.

Attacks through the operating system (a detached process, native file access, the grader's
memory, another submission's files) and by delegating the exercise to a library: each must end
with the stub's score, the results file intact and, for delegation, "asks you to write this
yourself". Correct work in notebook form (black's line breaks, display, magics, DataLoader
workers) keeps full marks; limits count CPU time, so a busy machine costs no points, and what
sleeps or spins forever stops with a message that says which limit stopped it.

The submissions are built in tests/fixtures/attacks.py. These tests grade as the CI does: as
root, where each child gets a uid and namespaces of its own. The fallbacks are tested at the
end: a grader that is not root (run as another uid), and one told to use no boundary at all.
"""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from fixtures import attacks
from fixtures.bad_submissions import stopped_by_cpu_limit
from fixtures.cli import fmlab_here
from fmlab.grading.grader import grade_notebook
from fmlab.grading.runner import Limits

ROOT = attacks.ROOT
HIDDEN = ROOT / "labs" / "hidden"
FIRST3 = ["q1", "q2", "q3"]
POINTS = {"q1": 2.0, "q2": 2.0, "q3": 3.0}
MASTER_NEEDLE = (b"a kernel as large", b" as the input")  # a hidden case's name, split
IS_ROOT = os.geteuid() == 0


def cli(*args: str, cwd: Path, env: dict | None = None, timeout: float = 400) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fmlab", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=env)


def scores(report) -> dict[str, float]:
    return {q.id: q.score for q in report.questions}


def messages(report, qid: str) -> str:
    return "\n".join(c.message for c in report.question(qid).cases)


def write(folder: Path, name: str, nb: dict) -> Path:
    path = folder / f"{name}.ipynb"
    path.write_text(json.dumps(nb))
    return path


@pytest.fixture(scope="module")
def sentinel():
    """A file outside every working folder (in the repository), which nothing may change."""
    path = ROOT / "tests" / f".sentinel-{os.getpid()}"
    path.write_text("original")
    os.chmod(path, 0o666)
    yield path
    path.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def cross_job(tmp_path_factory):
    """The master and a thief that copies other gradings' results, graded together by
    ``fmlab grade --jobs 64`` (capped at the cores). Started before the other gradings of this
    file and run beside them: the thief spends most of its 20 s waiting for what it would
    steal, which no test need wait for. (``graded`` asks for it, so that it starts first.)"""
    folder = tmp_path_factory.mktemp("cross-job")
    subs = folder / "subs"
    subs.mkdir()
    write(subs, "a_victim", attacks.master("cnn"))
    write(subs, "b_thief", attacks.cross_job_thief())
    with open(folder / "stdout.txt", "w") as out, open(folder / "stderr.txt", "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "fmlab", "grade", str(subs), "--tests",
                                 str(HIDDEN), "--jobs", "64", "--questions", "q2", "--gradebook",
                                 str(folder / "grades.csv")], cwd=folder, stdout=out, stderr=err)
    yield proc, folder
    if proc.poll() is None:
        proc.kill()
    proc.wait()


@pytest.fixture(scope="module")
def graded(tmp_path_factory, sentinel, cross_job):
    """The attacks graded by grade_notebook, two at a time."""
    folder = tmp_path_factory.mktemp("attacks")
    subs = {
        "native_read_master": (attacks.native_read_master(), "cnn", FIRST3),
        "native_read_hidden": (attacks.native_read_hidden(HIDDEN), "cnn", FIRST3),
        "repository_reader": (attacks.repository_reader(), "cnn", FIRST3),
        "native_write": (attacks.native_write(sentinel), "cnn", ["q1"]),
        "parent_memory": (attacks.parent_memory(MASTER_NEEDLE), "cnn", FIRST3),
        "notebook_style": (attacks.notebook_style(), "cnn", FIRST3),
        **{f"delegation_{lab}": (attacks.delegation(lab), lab, qs)
           for lab, qs in attacks.DELEGATION_QUESTIONS.items()},
    }

    def grade(name):
        nb, lab, only = subs[name]
        return grade_notebook(write(folder, name, nb), HIDDEN, limits=Limits(threads=1), only=only)

    scratch = tmp_path_factory.mktemp("scratch")  # the grader's temporary folders go here
    saved, tempfile.tempdir = tempfile.tempdir, str(scratch)
    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            reports = dict(zip(subs, pool.map(grade, subs)))
    finally:
        tempfile.tempdir = saved
    reports["scratch left"] = sorted(p.name for p in scratch.glob("fmlab-grade-*"))
    return reports


def test_temporary_folders_are_removed(graded):
    assert graded["scratch left"] == []


def test_a_detached_process_cannot_rewrite_the_results(tmp_path, capsys):
    results = tmp_path / "results.json"
    sub = write(tmp_path, "forger", attacks.detached_forger(results))
    status = fmlab_here("grade", str(sub), "--tests", str(HIDDEN), "--out", str(results),
                        "--questions", "q1")
    assert status == 0, capsys.readouterr().err
    unchanged_while_a_forger_lives(results, 8)


def alive(marker: str) -> bool:
    """Whether a process whose command line holds ``marker`` runs (a zombie's is empty)."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if marker.encode() in f.read():
                    return True
        except OSError:
            continue
    return False


def unchanged_while_a_forger_lives(results: Path, seconds: float) -> None:
    """The forger waits for the grader's results.json, then rewrites it; its command line holds
    that path. The file is watched for ``seconds``, or until no such process is left: after
    that nothing can rewrite it."""
    end = time.time() + seconds
    while True:
        gone = not alive(str(results))
        data = json.loads(results.read_text())
        assert data["score"] == 0 and "forged" not in data, data
        if gone or time.time() > end:
            return
        time.sleep(0.5)


def test_native_reads_of_the_master_and_hidden_tests_get_nothing(graded):
    for name in ("native_read_master", "native_read_hidden"):
        assert scores(graded[name]) == {"q1": 0, "q2": 0, "q3": 0}, name


def test_the_masters_in_the_repositorys_history_are_out_of_reach(graded):
    """Outside the boundary the reader finds the checkout's .git (above fmlab's files, or named
    in /proc/self/mountinfo) and the committed master in it; graded, it finds nothing."""
    if not (ROOT / ".git").is_dir():
        pytest.skip("not a git checkout: there is no history to read")
    found: dict = {}
    exec(attacks.git_reader(), found)
    assert "BEGIN SOLUTION" in found["_text"], "the attack does not work even without a boundary"
    assert scores(graded["repository_reader"]) == {"q1": 0, "q2": 0, "q3": 0}


def test_native_writes_outside_the_working_folder_change_nothing(graded, sentinel):
    assert graded["native_write"].question("q1").score == 0
    assert sentinel.read_text() == "original"


def test_the_graders_memory_is_out_of_reach(graded):
    assert scores(graded["parent_memory"]) == {"q1": 0, "q2": 0, "q3": 0}


@pytest.mark.parametrize("lab", list(attacks.DELEGATION_QUESTIONS))
def test_delegating_the_exercise_scores_zero(graded, lab):
    report = graded[f"delegation_{lab}"]
    for qid in attacks.DELEGATION_QUESTIONS[lab]:
        assert report.question(qid).score == 0, (qid, messages(report, qid))
        assert "asks you to write this yourself" in messages(report, qid), (qid, messages(report, qid))


def test_another_submissions_results_are_out_of_reach(cross_job):
    proc, folder = cross_job
    proc.wait(timeout=400)
    stderr = (folder / "stderr.txt").read_text()
    assert proc.returncode == 0, stderr
    assert "more than the" in stderr and "cores" in stderr  # --jobs capped, and said
    rows = {r["submission"]: r for r in csv.DictReader(open(folder / "grades.csv"))}
    assert rows["a_victim.ipynb"]["q2"] == "2.0" and rows["b_thief.ipynb"]["q2"] == "0.0", rows


def test_correct_work_in_notebook_form_keeps_full_marks(graded):
    r = graded["notebook_style"]
    assert scores(r) == POINTS, [messages(r, q) for q in FIRST3] + r.notes
    assert not r.notes, r.notes


CASE_S = 0.5  # the CPU-time limit of every case below; the wall-clock ceiling is 5 times that


@pytest.fixture(scope="module")
def forever(tmp_path_factory):
    """The master, with a q1 that sleeps forever and a q2 that spins forever, graded with a
    CPU-time limit of CASE_S per case; q3 is the master's."""
    folder = tmp_path_factory.mktemp("forever")
    return grade_notebook(write(folder, "forever", attacks.forever()), HIDDEN,
                          limits=Limits(case_timeout=CASE_S, cell_timeout=20, threads=1),
                          only=FIRST3)


def test_what_sleeps_or_spins_forever_stops_at_its_limit(forever):
    r = forever
    assert scores(r) == {"q1": 0, "q2": 0, "q3": 3.0}, [messages(r, q) for q in FIRST3] + r.notes
    assert "stopped at the wall-clock ceiling of 2.5 s" in messages(r, "q1"), messages(r, "q1")
    assert "mostly waiting" in messages(r, "q1")
    assert stopped_by_cpu_limit(messages(r, "q2"), CASE_S), messages(r, "q2")
    assert "machine load" in messages(r, "q2")


def test_torchs_lazy_imports_are_not_charged_to_a_case(forever):
    """The first torch.optim optimizer a process builds imports torch._dynamo (1.3-2 s of CPU
    measured); the child imports it before the cases, so q3's first case, which builds one,
    fits in half a second of CPU (its work takes a few milliseconds). (No case before it builds
    one: q1 sleeps and q2 spins.)"""
    assert CASE_S == 0.5
    assert scores(forever)["q3"] == 3.0, messages(forever, "q3")


# A busy loop that starts once the grading child has run the notebook's cells (its notes file
# appears then), so that it slows the cases rather than the child's start; it says so.
SPIN_AFTER_CELLS = (
    "import glob, sys, time\n"
    "while not glob.glob(sys.argv[1]):\n"
    "    time.sleep(0.02)\n"
    "open(sys.argv[2], 'w').close()\n"
    "while True:\n"
    "    pass\n")


def test_a_busy_machine_costs_no_points(tmp_path):
    """A question whose work takes seconds (training the CNN lab's network: about 3 s of CPU
    time) under a CPU-time limit of 6 s, while two busy-loop processes share the core it runs
    on (from the moment its cases begin). One core, so that the contention does not depend on
    what else this machine runs: the case gets a third of it, or half where the child has a
    control group of its own, so that the cases' wall time passes the limit; a limit on wall
    time would fail it, the CPU-time limit does not."""
    cores = os.sched_getaffinity(0)
    scratch, folder = tmp_path / "scratch", tmp_path / "submission"  # (the folder of a
    scratch.mkdir()  # submission is out of the child's reach: the scratch folder is not in it)
    folder.mkdir()
    notes = str(scratch / "fmlab-grade-*" / "out-*" / "notes.pt")
    os.sched_setaffinity(0, {min(cores)})  # the grader, its children and the loops inherit it
    spinners = [subprocess.Popen([sys.executable, "-c", SPIN_AFTER_CELLS, notes,
                                  str(tmp_path / f"spinning-{i}")]) for i in range(2)]
    saved, tempfile.tempdir = tempfile.tempdir, str(scratch)
    t0 = time.monotonic()
    try:
        r = grade_notebook(write(folder, "master", attacks.master("cnn")), HIDDEN,
                           limits=Limits(case_timeout=6, threads=1), only=["q4"])
    finally:
        wall = time.monotonic() - t0
        tempfile.tempdir = saved
        for p in spinners:
            p.kill()
            p.wait()
        os.sched_setaffinity(0, cores)
    assert scores(r) == {"q4": 3.0}, messages(r, "q4")
    assert len(list(tmp_path.glob("spinning-*"))) == 2, "the loops never started (no notes file)"
    assert wall > 6, f"graded in {wall:.1f} s: the spinners did not take the core's time"


HOGS = (  # three processes of 150 MB each at once
    "import subprocess, sys\n"
    "hog = 'import time; b = bytearray(150 << 20); b[::4096] = b\"x\" * len(b[::4096]); time.sleep(3)'\n"
    "hogs = [subprocess.Popen([sys.executable, '-c', hog]) for _ in range(3)]\n"
    "print([p.wait() for p in hogs])")
FILLS = (  # 200 MB in /tmp, then 200 MB in /dev/shm
    "for folder in ('/tmp', '/dev/shm'):\n"
    "    with open(folder + '/fill', 'wb') as f:\n"
    "        for _ in range(200):\n"
    "            f.write(b'x' * (1 << 20))\n"
    "print('both written')")
# A fork bomb, then a detached process that spins for 2 s of CPU time and is never waited for
# (the script waits for the file it writes when done: a wall-clock wait gave it only 1.1 s of
# CPU on a loaded machine)
FORKS = (
    "import os, subprocess, sys, time\n"
    "kids = []\n"
    "try:\n"
    "    while len(kids) < 500:\n"
    "        kids.append(subprocess.Popen(['sleep', '30']))\n"
    "except OSError:\n"
    "    pass\n"
    "print(len(kids))\n"
    "for k in kids:\n"
    "    k.kill()\n"
    "    k.wait()\n"
    "spin = 'import time\\nwhile time.process_time() < 2: pass\\nopen(\"spun\", \"w\").close()'\n"
    "subprocess.Popen([sys.executable, '-c', spin], start_new_session=True)\n"
    "end = time.time() + 60\n"
    "while not os.path.exists('spun') and time.time() < end:\n"
    "    time.sleep(0.05)")


@pytest.mark.skipif(not IS_ROOT, reason="control groups are the root grader's")
def test_a_submissions_processes_share_one_allowance(tmp_path):
    """A control group per submission (300 MB here): forked processes draw on one memory limit
    (the kernel kills one of three 150 MB processes), so do the in-memory folders (each
    capped at 300 MB, but not 400 MB together), forks stop at the process limit, and the
    parent counts the CPU time of every process, one never waited for included."""
    from fmlab.grading import cgroup

    def run(code: str, name: str):
        group, why = cgroup.create(memory_mb=300, pids=64, cpus=1)
        if group is None:
            pytest.skip(f"no control group here: {why}")
        folder = tmp_path / name
        folder.mkdir()
        try:
            done = run_in_view([sys.executable, "-c", code], folder, read=[], memory_mb=300,
                               cgroup=group.procs)
            return done, group.out_of_memory(), group.memory_peak_mb(), group.cpu_seconds()
        finally:
            group.remove()

    done, oom, peak, _ = run(HOGS, "hogs")
    assert done.returncode == 0 and "-9" in done.stdout and oom, done.stdout + done.stderr
    assert peak <= 300, peak
    done, oom, _, _ = run(FILLS, "fills")
    assert "both written" not in done.stdout and oom, done.stdout + done.stderr
    done, _, _, cpu = run(FORKS, "forks")
    assert done.returncode == 0 and int(done.stdout.split()[0]) < 64, done.stdout + done.stderr
    assert cpu >= 2.0, cpu


@pytest.mark.skipif(not IS_ROOT, reason="the in-memory work folder is the root grader's")
def test_the_work_folder_has_a_size_cap(tmp_path):
    fill = ("with open('big.bin', 'wb') as f:\n"
            "    for _ in range(100):\n"
            "        f.write(b'x' * (1 << 20))")
    sub = write(tmp_path, "filler", attacks.with_cells(attacks.stub("cnn"), fill))
    r = grade_notebook(sub, HIDDEN, limits=Limits(threads=1, work_mb=50), only=["q1"])
    assert any("No space left on device" in n for n in r.notes), r.notes


# --- the fallbacks ----------------------------------------------------------------------------

UID = 4242


def run_in_view(command: list[str], folder: Path, read: list[str], uid: int = UID,
                hide: tuple[str, ...] = (), memory_mb: int = 0,
                cgroup: list[str] | None = None) -> subprocess.CompletedProcess:
    """``command`` as ``uid`` inside a grading child's boundary (root mode), with ``folder``
    writable and ``read`` shown read-only besides what every child sees."""
    from fmlab.grading import boundary

    os.chown(folder, uid, uid)
    for p in folder.rglob("*"):
        os.chown(p, uid, uid)
    iso = boundary.Isolation("root", unshare=boundary._unshare())
    view = folder.parent / f"view-{os.getpid()}"
    view.mkdir(exist_ok=True)
    cfg = boundary.child_config(iso, uid=uid, keep=[str(folder)], hide=list(hide), read=read,
                                cwd=str(folder), cpu_s=1200, memory_mb=memory_mb, file_mb=0,
                                root=str(view), cgroup=cgroup)
    cfg["nproc"] = 4096
    cfg_file = folder.parent / f"harness-{os.getpid()}.json"
    cfg_file.write_text(json.dumps(cfg))
    fd = os.open(cfg_file, os.O_RDONLY)
    env = {"PATH": os.defpath, "HOME": str(folder), "LANG": "C.UTF-8", "OMP_NUM_THREADS": "1"}
    try:
        return subprocess.run([*iso.prefix(), sys.executable, "-I", "-S", boundary.PROGRAM, str(fd),
                               "--", *command], pass_fds=(fd,),
                              capture_output=True, text=True, timeout=400, env=env, cwd=folder)
    finally:
        os.close(fd)
        cfg_file.unlink()


def run_as_other_user(args: list[str], folder: Path) -> subprocess.CompletedProcess:
    """``python -m fmlab ARGS`` as an unprivileged uid, with ``folder`` writable. Python lives
    where that uid may not look (under /root here), so the run starts inside a mount namespace
    that shows it, which is what the grader's own boundary does for its children. read=[ROOT]:
    this grader reads the checks and hidden tests of the repository."""
    return run_in_view([sys.executable, "-m", "fmlab", *args], folder, read=[str(ROOT)])


VIEW_PROBE = r'''
import json, os, sys
def tree(path, depth):
    try:
        names = sorted(os.listdir(path))
    except OSError as err:
        return type(err).__name__
    return {n: tree(os.path.join(path, n), depth - 1) if depth and os.path.isdir(os.path.join(path, n))
            and not os.path.islink(os.path.join(path, n)) else None for n in names}
writable = {}
for d in ("/", "/usr", "/etc", os.getcwd(), "/tmp", "/dev/shm", os.path.dirname(sys.prefix)):
    try:
        open(os.path.join(d, ".probe"), "w").close()
        writable[d] = True
    except OSError:
        writable[d] = False
print(json.dumps({"root": sorted(os.listdir("/")), "repo": tree(sys.argv[1], 1),
                  "mounts": [l.split()[4] for l in open("/proc/self/mountinfo")],
                  "writable": writable}))
'''


@pytest.mark.skipif(not IS_ROOT, reason="the full boundary is built for a grader that is root")
def test_the_child_sees_only_what_it_is_given(tmp_path, monkeypatch):
    """The allowlist view: of the checkout, only fmlab's package and the public checks (and the
    virtual environment, where it lives there); no .git, masters or hidden tests; the mount
    table lists the view only; nothing but its own folders and scratch space is writable."""
    import fmlab
    import fmlab.checks
    from fmlab.grading import boundary

    # what the grader itself has on its path (pytest puts tests/ there) is not the child's
    monkeypatch.syspath_prepend(str(ROOT / "tests"))
    monkeypatch.syspath_prepend(str(ROOT / "tools"))
    folder = tmp_path / "work"
    folder.mkdir()
    run = run_in_view([sys.executable, "-I", "-c", VIEW_PROBE, str(ROOT)], folder, read=[])
    assert run.returncode == 0, run.stderr
    seen = json.loads(run.stdout)
    allowed = {os.path.realpath(p) for p in [*boundary.required_paths(), str(folder)]}
    repo = seen["repo"]
    assert set(repo) <= {"fmlab", "labs", ".venv"}, repo
    assert repo.get("labs", {}) in ({}, {"checks": None}), repo["labs"]
    assert Path(fmlab.__file__).parent.resolve() == ROOT / "fmlab"
    assert Path(fmlab.checks.__path__[0]).resolve() == ROOT / "labs" / "checks"
    # every mount point is the root, a system folder, a scratch folder, or one it was given
    system = set(boundary.SYSTEM + boundary.SYSTEM_INFO) | {"/", "/proc", "/tmp", "/var/tmp"}
    strays = [m for m in seen["mounts"] if m not in system and not m.startswith("/dev")
              and not any(m == a or m.startswith(a + "/") or a.startswith(m + "/")
                          for a in allowed)]
    assert not strays, strays
    assert not any(m.startswith(str(ROOT / "labs" / "hidden")) for m in seen["mounts"])
    assert seen["writable"] == {**{d: False for d in seen["writable"]}, str(folder): True,
                                "/tmp": True, "/dev/shm": True}, seen["writable"]


@pytest.mark.skipif(not IS_ROOT, reason="running the grader as another user needs root; the "
                                        "grader run by this test suite is that non-root grader")
def test_a_grader_that_is_not_root_uses_user_namespaces(tmp_path):
    folder = tmp_path / "nonroot"
    folder.mkdir()
    results = folder / "results.json"
    write(folder, "forger", attacks.detached_forger(results))
    write(folder, "reader", attacks.native_read_hidden(HIDDEN))
    run = run_as_other_user(["grade", "forger.ipynb", "--tests", str(HIDDEN), "--out", str(results),
                             "--questions", "q1"], folder)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "isolation is weaker" not in run.stderr  # user namespaces are allowed here
    unchanged_while_a_forger_lives(results, 6)
    run = run_as_other_user(["grade", "reader.ipynb", "--tests", str(HIDDEN), "--out", "r2.json",
                             "--questions", "q1,q2"], folder)
    assert run.returncode == 0, run.stdout + run.stderr
    assert json.loads((folder / "r2.json").read_text())["score"] == 0


def test_without_a_boundary_the_grader_says_so_and_still_grades(tmp_path):
    env = dict(os.environ, FMLAB_GRADING_ISOLATION="none")
    sub = write(tmp_path, "master", attacks.master("cnn"))
    run = cli("grade", str(sub), "--out", str(tmp_path / "r.json"), "--questions", "q1,q2",
              cwd=tmp_path, env=env)
    assert run.returncode == 0, run.stderr
    warning = [line for line in run.stderr.splitlines() if "isolation is weaker" in line]
    assert len(warning) == 1 and "root in a throw-away container" in warning[0], run.stderr
    assert json.loads((tmp_path / "r.json").read_text())["score"] == 4.0
