"""The units adapter and job isolation against a real systemd user manager (systemd 252), in a
booted container (tests/container.py).

The code under test runs INSIDE the container as the test user: each test sends a Python
snippet to `python3` there (the project's venv), which makes a `Manager` on the user's
manager and prints its findings as JSON on its last line. Unit names are unique per test, and
every snippet stops and resets its units, which `no_units_left` checks after each test.

The container's cgroups are a hybrid layout (cpu, memory, pids... are v1 hierarchies), as on
the machines running these tests: limits are accepted and read back but not enforced there
(the VM bed proves enforcement), the user manager has no controllers delegated, no CPU or
memory accounting, and no freezer (FreezeUnit says so: `Unsupported`).
"""

from __future__ import annotations

import json
import secrets
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import container

PRELUDE = f"""
import json, os, signal, subprocess, sys, time
sys.path.insert(0, {str(Path(__file__).parent)!r})
from helpers import wait_for as _wait_for
from distsvc.adapters.systemd.units import Manager, UnitError, UnitExists, Unsupported
from distsvc.jobs import isolation

m = Manager()
HOME = os.environ.get("HOME") or "/root"
""" + """
def wait_for(predicate, what, timeout=30):
    return _wait_for(predicate, timeout, what)

def wait_end(name, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s = m.state(name)
        if s is None or s.active_state == "failed" or s.sub_state == "exited":
            return s
        time.sleep(0.05)
    raise AssertionError(f"{name} did not end: {m.state(name)}")

def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:  # gone (ENOENT), or going while read (ESRCH)
        return False

def comm(pid):
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return None

def proc_state(pid):
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rpartition(")")[2].split()[0]

def cleanup(*names):
    for name in names:
        m.stop(name)
        m.reset_failed(name)

def out(value):
    print(json.dumps(value, default=str))
"""


@pytest.fixture(scope="module")
def box() -> Iterator[container.Container]:
    yield from container.container_fixture()


@pytest.fixture()
def unit(box: container.Container) -> Iterator[str]:
    """A unique prefix for this test's unit names; afterwards none of its units is left."""
    prefix = f"t-{secrets.token_hex(4)}"
    yield prefix
    left = box.run_as_user(["systemctl", "--user", "list-units", "--all", "--plain",
                            "--no-legend", f"{prefix}*"]).stdout.strip()
    if left:  # a failed test's: out of the next tests' way first
        box.run_as_user(["systemctl", "--user", "stop", f"{prefix}*"], check=False)
        box.run_as_user(["systemctl", "--user", "reset-failed", f"{prefix}*"], check=False)
    assert left == "", f"units left behind: {left}"


def inside(c: container.Container, code: str, *args: str, timeout: float = 90,
           root: bool = False) -> Any:
    """Run PRELUDE + `code` as the test user (or root: the system manager) in the container;
    the JSON of its last line."""
    argv = [str(container.VENV_BIN / "python3"), "-c", PRELUDE + textwrap.dedent(code), *args]
    run = c.run if root else c.run_as_user
    done = run(argv, timeout=timeout, check=False)
    assert done.returncode == 0, f"snippet failed ({done.returncode}):\n{done.stderr}"
    return json.loads(done.stdout.strip().splitlines()[-1])


EVERY_PROPERTY = {
    "WorkingDirectory": "/var",
    "Environment": ["A=1", "B=two words"],
    "RemainAfterExit": True,
    "MemoryMax": 536870912,
    "MemoryHigh": 268435456,
    "CPUQuotaPerSecUSec": 1500000,
    "CPUWeight": 50,
    "TasksMax": 64,
    "IOWeight": 100,
    "IOReadBandwidthMax": [["/home", 10485760]],
    "IOWriteBandwidthMax": [["/home", 1048576]],
    "RuntimeMaxUSec": 600000000,
    "TimeoutStartUSec": 5000000,
    "PrivateUsers": True,
    "PrivateNetwork": True,
    "PrivateTmp": True,
    "PrivateMounts": True,
    "ProtectProc": "invisible",
    "ProcSubset": "pid",
    "KillMode": "control-group",
    "TimeoutStopUSec": 7000000,
    "SendSIGKILL": True,
    "Type": "exec",
    "UMask": 0o027,
    "OOMPolicy": "continue",
    "StandardInput": "null",
    "Nice": 5,
    "CollectMode": "inactive-or-failed",
}



def commands(ps: str) -> set[str]:
    """`ps -o comm=` names, pidinit's interpreter (python3 or python3.11) as python3."""
    return {"python3" if name.startswith("python3") else name for name in ps.split()}

def test_a_service_with_every_property_is_started_and_reads_them_back(
        box: container.Container, unit: str) -> None:
    got = inside(box, """
        name, wanted = sys.argv[1], json.loads(sys.argv[2])
        wanted["IOReadBandwidthMax"] = [tuple(x) for x in wanted["IOReadBandwidthMax"]]
        wanted["IOWriteBandwidthMax"] = [tuple(x) for x in wanted["IOWriteBandwidthMax"]]
        props = {**wanted, "Slice": "distsvc-test.slice",
                 "StandardOutputFileToAppend": f"{HOME}/{name}.out",
                 "StandardErrorFileToAppend": f"{HOME}/{name}.err"}
        try:
            m.start_slice("distsvc-test.slice", {"TasksMax": 1000})
            m.start_service(name, ["sleep", "300"], props, "every property")
            back = m.properties(name)
            state = m.state(name)
            out({"back": {key: back.get(key) for key in wanted},
                 "slice": back.get("Slice"), "stdout": back.get("StandardOutput"),
                 "exec": back.get("ExecStart"), "limits": state.limits,
                 "description": back.get("Description"), "state": state.sub_state,
                 "peak": state.memory_peak, "current": state.memory_current,
                 "cpu": state.cpu_ns, "has_peak": "MemoryPeak" in back,
                 "controllers": sorted(m.delegated_controllers()), "version": m.version})
        finally:
            cleanup(name, "distsvc-test.slice")
    """, f"{unit}-all.service", json.dumps(EVERY_PROPERTY))
    expected = {key: [list(x) for x in value] if key.startswith("IO") and "Bandwidth" in key
                else value for key, value in EVERY_PROPERTY.items()}
    assert got["back"] == expected
    assert got["slice"] == "distsvc-test.slice"
    assert got["stdout"] == "append"
    assert got["exec"][0][:2] == ["sleep", ["sleep", "300"]]
    assert got["description"] == "every property"
    assert got["state"] == "running"
    assert got["limits"] == {"MemoryMax": 536870912, "CPUQuotaPerSecUSec": 1500000,
                             "TasksMax": 64, "IOWeight": 100, "RuntimeMaxUSec": 600000000}
    # The hybrid container: no controllers for the user manager, no accounting, no MemoryPeak
    # (systemd 252 has none; 253+ does).
    assert got["controllers"] == []
    assert got["version"].startswith("252")
    assert not got["has_peak"] and got["peak"] is None
    assert got["current"] is None and got["cpu"] is None


def test_a_property_the_manager_does_not_know_is_one_clear_error(
        box: container.Container, unit: str) -> None:
    got = inside(box, """
        name = sys.argv[1]
        said = {}
        for props in ({"PrivatePIDs": True}, {"NoSuchThing": 1}):
            try:
                m.start_service(name, ["true"], props, "x")
                said[next(iter(props))] = "started"
            except UnitError as error:
                said[next(iter(props))] = error.message
        cleanup(name)
        out(said)
    """, f"{unit}-pids.service")
    # systemd 252 has no PrivatePIDs= (257 has): the manager refuses it, by name.
    assert "refused a property" in got["PrivatePIDs"] and "PrivatePIDs" in got["PrivatePIDs"]
    assert got["NoSuchThing"] == ("unknown unit property 'NoSuchThing' "
                                  "(distsvc does not know its type)")


def test_output_files_are_appended(box: container.Container, unit: str) -> None:
    got = inside(box, """
        name = sys.argv[1]
        stdout, stderr = f"{HOME}/{name}.out", f"{HOME}/{name}.err"
        with open(stdout, "w") as f:
            f.write("before\\n")
        for run in ("1", "2"):
            m.start_service(name, ["sh", "-c", f"echo out{run}; echo err{run} >&2"],
                            {"RemainAfterExit": True, "StandardOutputFileToAppend": stdout,
                             "StandardErrorFileToAppend": stderr}, "output")
            wait_end(name)
            cleanup(name)
        out([open(stdout).read(), open(stderr).read()])
    """, f"{unit}-out.service")
    assert got == ["before\nout1\nout2\n", "err1\nerr2\n"]


def test_remain_after_exit_keeps_the_exit_status_of_a_failure_and_of_true(
        box: container.Container, unit: str) -> None:
    got = inside(box, """
        three, true = sys.argv[1], sys.argv[2]
        keep = {"RemainAfterExit": True, "Type": "exec"}
        m.start_service(three, ["sh", "-c", "exit 3"], keep, "three")
        m.start_service(true, ["true"], keep, "true")
        wait_end(three), wait_end(true)
        time.sleep(1)  # still there a while later, not collected
        states = [m.state(three), m.state(true)]
        cleanup(three, true)
        gone = [m.state(three), m.state(true)]
        out([[s.active_state, s.sub_state, s.result, s.exec_main_code, s.exec_main_status,
              s.started_at is not None, s.exited_at is not None] for s in states] + [gone])
    """, f"{unit}-three.service", f"{unit}-true.service")
    assert got[0] == ["failed", "failed", "exit-code", 1, 3, True, True]
    assert got[1] == ["active", "exited", "success", 1, 0, True, True]
    assert got[2] == [None, None]


@pytest.mark.parametrize("how", ["kill", "stop"])
def test_kill_and_stop_end_a_double_forked_grandchild(box: container.Container, unit: str,
                                                      how: str) -> None:
    got = inside(box, """
        name, how = sys.argv[1], sys.argv[2]
        m.start_service(name, ["sh", "-c", "(sleep 1000 &); exec sleep 1001"],
                        {"RemainAfterExit": True, "KillMode": "control-group",
                         "TimeoutStopUSec": 10000000}, "tree")
        def two_sleeps():
            pids = m.processes(name)
            comms = [comm(pid) for pid in pids]
            return comms == ["sleep", "sleep"] and pids
        pids = wait_for(two_sleeps, "two sleeps")
        main = m.state(name).main_pid
        orphan = [pid for pid in pids if pid != main]
        parent = open(f"/proc/{orphan[0]}/stat").read().rpartition(")")[2].split()[1]
        if how == "kill":
            m.kill(name, signal.SIGTERM)
            wait_for(lambda: not any(alive(pid) for pid in pids), "the tree to die")
            state = wait_end(name)
            result = [state.exec_main_code, state.exec_main_status]
        else:
            m.stop(name)
            result = [m.state(name) and m.state(name).active_state]
        left = [pid for pid in pids if alive(pid)]
        cleanup(name)
        out({"pids": pids, "main": main, "orphan_parent": int(parent), "left": left,
             "result": result, "processes_after": m.processes(name)})
    """, f"{unit}-{how}.service", how)
    assert len(got["pids"]) == 2 and got["main"] in got["pids"]
    assert got["orphan_parent"] != got["main"]  # re-parented: not the main process's child
    assert got["left"] == []
    assert got["processes_after"] == []
    if how == "kill":
        assert got["result"] == [2, 15]  # CLD_KILLED by SIGTERM
    else:
        assert got["result"] in (["inactive"], ["failed"], [None])


def test_freeze_is_unsupported_here_and_sigstop_of_every_process_pauses_the_tree(
        box: container.Container, unit: str) -> None:
    got = inside(box, """
        name = sys.argv[1]
        m.start_service(name, ["sh", "-c", "sh -c 'sleep 1000 & wait' & sleep 1000 & wait"],
                        {"RemainAfterExit": True}, "pause")
        pids = wait_for(lambda: len(m.processes(name)) == 4 and m.processes(name), "4 procs")
        try:
            m.freeze(name)
            froze = m.state(name).freezer_state
        except Unsupported as error:
            froze = error.message
        try:
            m.thaw(name)
            thawed = m.state(name).freezer_state
        except Unsupported as error:
            thawed = error.message
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        stopped = wait_for(lambda: all(proc_state(p) == "T" for p in pids) and
                           [proc_state(p) for p in pids], "all stopped")
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
        resumed = wait_for(lambda: all(proc_state(p) != "T" for p in pids) and
                           [proc_state(p) for p in pids], "all resumed")
        cgroup = open("/proc/self/mountinfo").read()
        cleanup(name)
        out({"froze": froze, "thawed": thawed, "stopped": stopped, "resumed": resumed,
             "hybrid": " /sys/fs/cgroup/unified " in cgroup})
    """, f"{unit}-pause.service")
    assert got["hybrid"]
    # systemd 252 freezes only with the cgroup v2 freezer of a pure v2 layout.
    assert got["froze"] == f"cannot freeze {unit}-pause.service: Unit '{unit}-pause.service' " \
                           "does not support freezing."
    assert got["thawed"] == f"cannot thaw {unit}-pause.service: Unit '{unit}-pause.service' " \
                            "does not support freezing."
    assert got["stopped"] == ["T"] * 4
    assert "T" not in got["resumed"]


def test_a_name_collision_is_unit_exists(box: container.Container, unit: str) -> None:
    got = inside(box, """
        name = sys.argv[1]
        m.start_service(name, ["sleep", "100"], {}, "first")
        try:
            m.start_service(name, ["sleep", "100"], {}, "second")
            said = "started twice"
        except UnitExists as error:
            said = error.message
        running = m.state(name).sub_state
        cleanup(name)
        out([said, running])
    """, f"{unit}-twice.service")
    assert got[0].startswith(f"unit {unit}-twice.service exists already")
    assert "systemctl --user reset-failed" in got[0]
    assert got[1] == "running"  # the first one is not disturbed


def test_a_scope_over_a_running_process(box: container.Container, unit: str) -> None:
    got = inside(box, """
        name = sys.argv[1]
        child = subprocess.Popen(["sleep", "1000"])
        m.start_scope(name, [child.pid], {"TasksMax": 16, "MemoryMax": 1 << 30}, "scope")
        state = m.state(name)
        cgroup = open(f"/proc/{child.pid}/cgroup").read()
        processes = m.processes(name)
        limits = state.limits
        m.stop(name)
        code = child.wait(timeout=30)
        cleanup(name)
        out({"active": state.active_state, "processes": processes, "pid": child.pid,
             "in_cgroup": f"/{name}" in cgroup, "limits": limits, "code": code})
    """, f"{unit}-fg.scope")
    assert got["active"] == "active"
    assert got["processes"] == [got["pid"]]
    assert got["in_cgroup"]
    assert got["limits"]["TasksMax"] == 16 and got["limits"]["MemoryMax"] == 1 << 30
    assert got["code"] == -15  # stop: SIGTERM


def test_probe_sees_every_kind_working(box: container.Container, unit: str) -> None:
    got = inside(box, """
        out(isolation.probe(m))
    """)
    assert got == {"pid": None, "mount": None, "network": None}


ISOLATED_SCRIPT = r"""
echo "ps=$(ps -e -o comm= | tr '\n' ' ')"
echo "tmp=$(ls -A /tmp | wc -l)"
echo "secret=$(cat /tmp/host-secret 2>&1 >/dev/null | wc -l)"
touch /tmp/from-job
echo "ifaces=$(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | tr '\n' ' ')"
echo "sysnet=$(ls /sys/class/net | wc -l)"
echo "pidns=$(readlink /proc/self/ns/pid)"
echo "mntns=$(readlink /proc/self/ns/mnt)"
echo "netns=$(readlink /proc/self/ns/net)"
"""


@pytest.mark.parametrize("kinds", [["pid"], ["mount"], ["network"], ["pid", "mount", "network"],
                                   []])
def test_each_isolation_kind_is_observed_from_inside_a_job(
        box: container.Container, unit: str, kinds: list[str]) -> None:
    box.run_as_user(["sh", "-c", "echo s > /tmp/host-secret"])
    got = inside(box, """
        name, kinds, script = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
        plan = isolation.plan(kinds, m.user)
        stdout = f"{HOME}/{name}.out"
        m.start_service(name, [*plan.argv_prefix, "/bin/sh", "-c", script],
                        {**plan.properties, "RemainAfterExit": True, "Type": "exec",
                         "StandardOutputFileToAppend": stdout,
                         "StandardErrorFileToAppend": f"{HOME}/{name}.err"}, "isolated")
        state = wait_end(name)
        cleanup(name)
        seen = dict(line.partition("=")[::2] for line in open(stdout).read().splitlines())
        ours = {kind: os.readlink(f"/proc/self/ns/{kind}") for kind in ("pid", "mnt", "net")}
        out({"seen": seen, "ours": ours, "status": [state.exec_main_code,
                                                    state.exec_main_status],
             "leaked": os.path.exists("/tmp/from-job"), "err": open(f"{HOME}/{name}.err").read()})
    """, f"{unit}-iso.service", json.dumps(kinds), ISOLATED_SCRIPT)
    seen, ours = got["seen"], got["ours"]
    assert got["status"] == [1, 0], got["err"]
    spaces = {key: seen[key] for key in ("pidns", "mntns", "netns")}
    if "pid" in kinds:
        # pidinit's init as PID 1, the command, the $(...) subshell, ps and (when it has
        # started by the time ps looks: a pipeline starts its parts in any order) tr
        assert seen["ps"].split()[0].startswith("python3")
        assert {"python3", "sh", "ps"} <= commands(seen["ps"]) <= {"python3", "sh", "ps",
                                                                       "tr"}
        assert spaces["pidns"] != ours["pid"]
    else:
        assert len(seen["ps"].split()) > 5  # the container's processes
        assert spaces["pidns"] == ours["pid"]
    if "mount" in kinds:
        assert seen["tmp"] == "0" and seen["secret"] == "1"  # empty; the host's file absent
        assert not got["leaked"]
        assert spaces["mntns"] != ours["mnt"]
    else:
        assert seen["tmp"] != "0" and seen["secret"] == "0"
        assert got["leaked"]
        box.run_as_user(["rm", "-f", "/tmp/from-job"])
    if "network" in kinds:
        assert seen["ifaces"].split() == ["lo"]
        assert spaces["netns"] != ours["net"]
    else:
        assert spaces["netns"] == ours["net"]
    # /sys/class/net shows the host's interfaces either way (sysfs is not remounted).
    assert int(seen["sysnet"]) >= 1


@pytest.mark.parametrize(("command", "expected"), [
    ("kill -TERM $$", [2, 15]),  # killed by SIGTERM, though PID 2 of its namespace
    ("exit 3", [1, 3]),
    ("kill -KILL $$", [2, 9]),
    ("true", [1, 0]),
])
def test_a_pid_namespace_keeps_the_commands_exit_status_and_signal(
        box: container.Container, unit: str, command: str, expected: list[int]) -> None:
    got = inside(box, """
        name, command = sys.argv[1], sys.argv[2]
        plan = isolation.plan(["pid"], m.user)
        m.start_service(name, [*plan.argv_prefix, "sh", "-c", command],
                        {"RemainAfterExit": True, "Type": "exec"}, "status")
        state = wait_end(name)
        cleanup(name)
        out([state.exec_main_code, state.exec_main_status])
    """, f"{unit}-st.service", command)
    assert got == expected


def test_stop_of_an_isolated_job_ends_its_whole_namespace(box: container.Container,
                                                          unit: str) -> None:
    got = inside(box, """
        name = sys.argv[1]
        plan = isolation.plan(["pid", "mount", "network"], m.user)
        m.start_service(name, [*plan.argv_prefix, "sh", "-c", "(sleep 1000 &); sleep 1001"],
                        {**plan.properties, "RemainAfterExit": True, "Type": "exec",
                         "KillMode": "control-group"}, "tree")
        # pidinit outside, its init, sh, sleep 1001 and the orphan sleep 1000 (the init's now)
        pids = wait_for(lambda: len(m.processes(name)) == 5 and m.processes(name), "5 procs")
        m.kill(name, signal.SIGTERM)
        state = wait_end(name)
        left = [pid for pid in pids if alive(pid)]
        cleanup(name)
        out({"left": left, "status": [state.exec_main_code, state.exec_main_status]})
    """, f"{unit}-isostop.service")
    assert got["left"] == []
    assert got["status"] == [2, 15]  # the command's own end: SIGTERM


def test_a_command_that_cannot_be_executed_fails_the_start(box: container.Container,
                                                           unit: str) -> None:
    got = inside(box, """
        name = sys.argv[1]
        try:
            m.start_service(name, ["/nonexistent/cmd"], {"Type": "exec",
                                                         "RemainAfterExit": True}, "x")
            said = "started"
        except UnitError as error:
            said = error.message
        cleanup(name)
        out(said)
    """, f"{unit}-noexec.service")
    assert "exit status 203: the command could not be executed" in got


def test_one_manager_serves_several_threads(box: container.Container, unit: str) -> None:
    got = inside(box, """
        import threading
        prefix, errors, results = sys.argv[1], [], {}
        def work(i):
            try:
                for j in range(5):
                    name = f"{prefix}-{i}-{j}.service"
                    m.start_service(name, ["sh", "-c", f"exit {i}"],
                                    {"RemainAfterExit": True, "Type": "exec"}, "thread")
                    state = wait_end(name)
                    results[name] = state.exec_main_status
                    cleanup(name)
            except Exception as error:
                errors.append(repr(error))
        threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
        for t in threads: t.start()
        for t in threads: t.join()
        out({"errors": errors, "results": results})
    """, unit)
    assert got["errors"] == []
    assert got["results"] == {f"{unit}-{i}-{j}.service": i for i in range(6) for j in range(5)}


def test_many_units_leave_no_fds_threads_or_units_behind(box: container.Container,
                                                         unit: str) -> None:
    got = inside(box, """
        prefix = sys.argv[1]
        def counts():
            return len(os.listdir("/proc/self/fd")), len(os.listdir("/proc/self/task"))
        def cycle(i):
            name = f"{prefix}-{i}.service"
            m.start_service(name, ["true"], {"RemainAfterExit": True, "Type": "exec"}, "many")
            wait_end(name)
            m.state(name), m.processes(name), m.properties(name)
            cleanup(name)
        cycle(0)
        before = counts()
        for i in range(1, 201):
            cycle(i)
        out({"before": before, "after": counts()})
    """, unit, timeout=110)
    assert got["after"] == got["before"]


def test_as_root_the_system_manager_runs_an_isolated_job(box: container.Container,
                                                          unit: str) -> None:
    """Root's jobs go to the system manager: no user namespaces needed, ProtectProc given."""
    got = inside(box, """
        name, script = sys.argv[1], sys.argv[2]
        plan = isolation.plan(isolation.KINDS, m.user)
        stdout = f"/root/{name}.out"
        m.start_service(name, [*plan.argv_prefix, "/bin/sh", "-c", script + "exit 4"],
                        {**plan.properties, "RemainAfterExit": True, "Type": "exec",
                         "StandardOutputFileToAppend": stdout}, "root job")
        state = wait_end(name)
        back = m.properties(name)
        cleanup(name)
        seen = dict(line.partition("=")[::2] for line in open(stdout).read().splitlines())
        hog = f"{sys.executable} -c 'bytearray(100 * 2**20)'"
        m.start_service(f"{name}-hog.service", ["sh", "-c", hog],
                        {"RemainAfterExit": True, "MemoryMax": 20 * 2**20,
                         "MemorySwapMax": 0}, "hog")
        hogged = wait_end(f"{name}-hog.service")
        cleanup(f"{name}-hog.service")
        out({"user": m.user, "probe": isolation.probe(m), "seen": seen,
             "hog": [hogged.result, hogged.exec_main_code, hogged.exec_main_status],
             "status": [state.exec_main_code, state.exec_main_status],
             "protect": back["ProtectProc"], "private_users": back["PrivateUsers"],
             "controllers": sorted(m.delegated_controllers())})
    """, f"{unit}-root.service", ISOLATED_SCRIPT, root=True)
    assert got["user"] is False
    assert got["probe"] == {"pid": None, "mount": None, "network": None}
    assert got["status"] == [1, 4]
    assert {"python3", "sh", "ps"} <= commands(got["seen"]["ps"]) <= {"python3", "sh", "ps",
                                                                           "tr"}
    assert got["seen"]["tmp"] == "0" and got["seen"]["ifaces"].split() == ["lo"]
    assert got["protect"] == "invisible" and got["private_users"] is False
    # nspawn mounts the v1 hierarchies read-only: the container's system manager enforces no
    # limit either, and says so (on the machine itself, hybrid, it has cpu io memory pids).
    assert got["controllers"] == []
    assert got["hog"] == ["success", 1, 0]  # 100 MiB under MemoryMax=20M: not enforced


def test_no_bus_is_one_clear_line(box: container.Container, unit: str) -> None:
    done = box.run_as_user(
        [str(container.VENV_BIN / "python3"), "-c",
         "from distsvc.adapters.systemd.units import Manager, UnitError\n"
         "try:\n    Manager()\nexcept UnitError as e:\n    print(e.message)"],
        env={"DBUS_SESSION_BUS_ADDRESS": "unix:path=/nonexistent/bus"})
    assert done.stdout.startswith("cannot reach your user's service manager over D-Bus (")
    assert done.stdout.count("\n") == 1
