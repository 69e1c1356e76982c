"""Tests of the QEMU VM bed (tests/vmbed.py): real boots, no mocks. Inside, with
``systemd-run --user`` as the test user, each cgroup v2 limit distsvc's jobs rely on is
enforced, not just recorded (in the nspawn container on this hybrid-cgroup machine they are
only recorded)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

import container
import helpers
import sshbed
import vmbed

pytestmark = pytest.mark.timeout(300)  # a boot, on a busy machine (vmbed.BOOT_TIMEOUT)


def systemd_run(vm: vmbed.VM, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    """``systemd-run --user --wait --pipe ARGS`` as the test user: the unit's stdout comes
    back, and systemd-run's summary (result, runtime, CPU time) on stderr."""
    return vm.run_as_user(["systemd-run", "--user", "--wait", "--pipe", *args],
                          check=False, timeout=timeout)


def summary(stderr: str, field: str) -> str:
    """One line of systemd-run's summary after --wait (``Finished with result: ...``)."""
    match = re.search(rf"^{re.escape(field)}: (.*)$", stderr, re.MULTILINE)
    assert match, f"no {field!r} in systemd-run's output:\n{stderr}"
    return match.group(1).strip()


def seconds(text: str) -> float:
    """systemd's time span (``1min 2.5s``, ``830ms``, ``1.2s``) in seconds."""
    units = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "min": 60.0, "h": 3600.0}
    parts = re.findall(r"([\d.]+)(us|ms|min|s|h)", text)
    assert parts, f"not a time span: {text!r}"
    return sum(float(n) * units[u] for n, u in parts)


# --- the bed itself (these boot VMs of their own: run before the session's VM is up) ---------


def test_teardown_leaves_nothing_even_when_the_test_fails() -> None:
    with pytest.raises(RuntimeError, match="the test failed"), vmbed.booted() as vm:
        assert vm.qemu.poll() is None and vm.workdir.is_dir()
        assert set(vm.masters) == {"root", vm.user}
        sleeper = vm.popen_as_user(["sleep", "300"], stdout=subprocess.DEVNULL)
        assert sleeper.pid_inside() is not None
        raise RuntimeError("the test failed")
    assert vmbed.leftovers(vm) == []
    assert sleeper.poll() is not None
    running = subprocess.run(["pgrep", "-af", vmbed.QEMU], capture_output=True, text=True)
    assert str(vm.workdir) not in running.stdout


def test_a_killed_test_run_leaves_no_vm_and_its_directory_is_cleaned() -> None:
    """SIGKILL of the process that booted: QEMU dies with it (parent-death signal), and the
    next `cleanup_stale` removes the directory it left."""
    script = textwrap.dedent("""
        import sys, time, vmbed
        with vmbed.booted():
            time.sleep(600)
    """)
    run = subprocess.Popen([sys.executable, "-c", script], cwd=Path(__file__).parent,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        def qemu_of_run() -> tuple[Path, int] | None:
            for workdir in vmbed.BASE.glob(vmbed.PREFIX + "*"):
                with_owner = workdir / "bed.json"
                try:
                    record = json.loads(with_owner.read_text())
                except (OSError, ValueError):
                    continue
                qemu = [pid for what, pid, _ in record["processes"] if what == "qemu"]
                if record["owner"] == run.pid and qemu:
                    return workdir, qemu[0]
            return None

        workdir, qemu = helpers.wait_for(qemu_of_run, 60, "the run's QEMU to start")
        run.kill()
        run.wait()
        helpers.wait_for(lambda: not Path(f"/proc/{qemu}").exists()
                         or Path(f"/proc/{qemu}/stat").read_text().split()[2] == "Z",
                         20, "QEMU to die with the test run")
        assert workdir.is_dir()
        assert str(workdir) in vmbed.cleanup_stale()
        assert not workdir.exists()
    finally:
        helpers.reap([run])


def test_sigterm_during_a_boot_tears_it_down() -> None:
    """SIGTERM to the process that booted (with no SIGTERM handler of its own) becomes a
    KeyboardInterrupt there, and the teardown runs."""
    script = textwrap.dedent("""
        import time, vmbed
        try:
            with vmbed.booted() as vm:
                time.sleep(600)
        except KeyboardInterrupt:
            print("interrupted")
    """)
    run = subprocess.Popen([sys.executable, "-c", script], cwd=Path(__file__).parent,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        def bed_of_run() -> Path | None:
            for workdir in vmbed.BASE.glob(vmbed.PREFIX + "*"):
                try:
                    record = json.loads((workdir / "bed.json").read_text())
                except (OSError, ValueError):
                    continue
                if record["owner"] == run.pid and record["processes"]:
                    return workdir
            return None

        workdir = helpers.wait_for(bed_of_run, 60, "the run's QEMU to start")
        run.send_signal(signal.SIGTERM)
        out, err = run.communicate(timeout=60)
        assert out.strip() == b"interrupted", err.decode(errors="replace")
        assert run.returncode == 0
        assert not workdir.exists()
    finally:
        helpers.reap([run])


def test_cleanup_stale_leaves_the_beds_of_live_runs_alone() -> None:
    workdir = vmbed.BASE / f"{vmbed.PREFIX}livetest{os.getpid()}"
    workdir.mkdir()
    bed = vmbed._Bed(workdir)  # owned by this live process
    bed.save()
    try:
        assert str(workdir) not in vmbed.cleanup_stale()
        assert workdir.is_dir()
    finally:
        vmbed._teardown(bed)
    assert not workdir.exists()


def test_a_port_taken_before_qemu_binds_it_is_given_up_for_another(
        monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        busy = taken.getsockname()[1]
        offered = [busy]
        free_port = sshbed.free_port
        monkeypatch.setattr(sshbed, "free_port",
                            lambda address: offered.pop() if offered else free_port(address))
        k = vmbed.kernel()
        bed = vmbed._Bed(Path(tempfile.mkdtemp(prefix=vmbed.PREFIX, dir=vmbed.BASE)))
        bed.save()
        try:
            (bed.workdir / "overlay").mkdir()
            qemu, port = vmbed._start_qemu(bed, k)
            assert qemu.poll() is None
            assert port != busy and not offered
            assert [what for what, _, _ in bed.processes] == ["qemu"]
        finally:
            assert vmbed._teardown(bed) == []


def test_the_kernel_is_cached_and_not_rebuilt() -> None:
    first = vmbed.kernel()
    built = first.initrd.stat().st_mtime_ns
    again = vmbed.kernel()
    assert again == first
    assert again.initrd.stat().st_mtime_ns == built
    assert first.vmlinuz.is_file() and (first.modules / "modules.dep").is_file()
    assert first.release.startswith("6.") and first.release.endswith("-amd64")


def test_a_stale_initramfs_is_rebuilt() -> None:
    """An initramfs made of other parts (its stamp differs) is rebuilt, atomically: a VM
    booting meanwhile reads either file whole."""
    k = vmbed.kernel()
    stamp = k.directory / "initrd.stamp"
    stamp.write_text("made by another version of tests/vmbed.py")
    before = k.initrd.stat().st_ino
    assert vmbed.kernel() == k
    assert stamp.read_text() == k.stamp()
    assert k.initrd.stat().st_ino != before


# --- inside the session's VM -----------------------------------------------------------------


def test_the_vm_runs_a_pure_cgroup2_kernel_of_its_own(vm: vmbed.VM) -> None:
    assert vm.run(["uname", "-r"]).stdout.strip() == vm.kernel.release
    assert vm.run(["stat", "-f", "-c", "%T", "/sys/fs/cgroup"]).stdout.strip() == "cgroup2fs"
    assert vm.run(["systemd-detect-virt"], check=False).stdout.strip() == "qemu"
    assert vm.manager_state in ("running", "degraded"), vm.debug_report()
    # The root is the overlay; the host's files show through, the VM's writes stay inside.
    assert vm.run(["findmnt", "-n", "-o", "FSTYPE", "/"]).stdout.strip() == "overlay"
    marker = f"/var/tmp/vmbed-write-{os.getpid()}"
    vm.run(["touch", marker])
    assert not Path(marker).exists()
    # User-mode networking, restricted: only loopback and the slirp address.
    addresses = vm.run(["ip", "-o", "-4", "addr", "show"]).stdout
    assert "10.0.2.15/24" in addresses


def test_the_users_manager_has_cpu_memory_and_pids_delegated(vm: vmbed.VM) -> None:
    service = f"/sys/fs/cgroup/user.slice/user-{vm.uid}.slice/user@{vm.uid}.service"
    enabled = set(vm.run(["cat", f"{service}/cgroup.subtree_control"]).stdout.split())
    assert {"cpu", "memory", "pids"} <= enabled, enabled
    delegated = vm.run(["systemctl", "show", "-p", "DelegateControllers", "--value",
                        f"user@{vm.uid}.service"]).stdout.split()
    assert {"cpu", "memory", "pids"} <= set(delegated), delegated
    print(f"user@{vm.uid}.service subtree_control: {sorted(enabled)}; "
          f"DelegateControllers: {delegated}")


def test_memory_max_ends_an_allocation_with_oom_kill(vm: vmbed.VM) -> None:
    done = systemd_run(vm, "-p", "MemoryMax=50M", "-p", "MemorySwapMax=0",
                       "python3", "-c", "data = b'x' * (200 << 20); print('allocated')")
    assert "allocated" not in done.stdout
    assert summary(done.stderr, "Finished with result") == "oom-kill", done.stderr
    assert done.returncode != 0


def test_tasks_max_refuses_further_forks(vm: vmbed.VM) -> None:
    script = textwrap.dedent("""
        import os, time
        children = []
        try:
            for _ in range(30):
                pid = os.fork()
                if pid == 0:
                    time.sleep(60)
                    os._exit(0)
                children.append(pid)
            print("all forked")
        except OSError as e:
            print("refused after", len(children), e.errno)
        for pid in children:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
    """)
    done = systemd_run(vm, "-p", "TasksMax=10", "python3", "-c", script)
    # The unit holds python and 9 children: the 10th fork is refused (EAGAIN).
    assert done.stdout.strip() == "refused after 9 11", done.stdout + done.stderr
    assert summary(done.stderr, "Finished with result") == "success"


def test_cpu_quota_holds_a_busy_loop_well_below_one_cpu(vm: vmbed.VM) -> None:
    busy = "import time\nend = time.monotonic() + 6\nwhile time.monotonic() < end: pass"
    done = systemd_run(vm, "-p", "CPUQuota=20%", "python3", "-c", busy)
    assert summary(done.stderr, "Finished with result") == "success", done.stderr
    cpu = seconds(summary(done.stderr, "CPU time consumed"))
    wall = seconds(summary(done.stderr, "Service runtime"))
    share = cpu / wall
    print(f"CPUQuota=20%: {cpu:.2f} s of CPU in {wall:.2f} s ({share:.0%})")
    assert wall >= 6
    assert 0 < share < 0.6, f"{share:.0%} of a CPU"


def test_the_projects_venv_runs_inside(vm: vmbed.VM) -> None:
    env = dict(line.split("=", 1) for line in vm.run_as_user(["env"]).stdout.splitlines())
    assert env["PATH"].split(":")[0] == str(vmbed.VENV_BIN)
    assert env["XDG_RUNTIME_DIR"] == f"/run/user/{vm.uid}"
    assert env["DBUS_SESSION_BUS_ADDRESS"] == f"unix:path=/run/user/{vm.uid}/bus"
    assert env["HOME"] == vm.home and env["USER"] == vm.user
    done = vm.run_as_user(["python3", "-c", "import distsvc, pystemd, sys\n"
                           "print(sys.prefix); print(distsvc.__file__)"])
    prefix, where = done.stdout.split()
    assert prefix == str(vmbed.VENV_BIN.parent)
    assert where.startswith(str(container.PROJECT))
    assert vm.run_as_user(["id", "-u"]).stdout.strip() == str(vm.uid)


def test_the_users_bus_answers_pystemd(vm: vmbed.VM) -> None:
    script = textwrap.dedent("""
        import pystemd.run
        from pystemd.dbuslib import DBus
        from pystemd.systemd1 import Manager
        with DBus(user_mode=True) as bus:
            manager = Manager(bus=bus, _autoload=True)
            print(manager.Manager.Version.decode())
        unit = pystemd.run(["/bin/sh", "-c", "exit 3"], user_mode=True, wait=True)
        print(unit.Service.ExecMainStatus)
    """)
    version, status = vm.run_as_user(["python3", "-c", script]).stdout.split()
    assert version.startswith("252")
    assert status == "3"


def test_a_popen_command_is_signalled_inside(vm: vmbed.VM) -> None:
    marker = str(3000 + os.getpid() % 1000)
    sleeper = vm.popen_as_user(["sleep", marker], stdout=subprocess.PIPE)
    try:
        pid = sleeper.pid_inside()
        assert pid is not None
        owner = vm.run(["ps", "-o", "user=,args=", "-p", str(pid)]).stdout.split()
        assert owner == [vm.user, "sleep", marker]
        sleeper.terminate()
        assert sleeper.wait(30) == 255  # ssh's status for a command ended by a signal
        assert vm.run(["pgrep", "-f", f"^sleep {marker}$"], check=False).returncode == 1
    finally:
        if sleeper.poll() is None:
            subprocess.Popen.kill(sleeper)
            sleeper.wait()


def test_a_command_that_times_out_is_killed_inside(vm: vmbed.VM) -> None:
    marker = str(4000 + os.getpid() % 1000)
    with pytest.raises(subprocess.TimeoutExpired):
        vm.run_as_user(["sleep", marker], timeout=3)
    helpers.wait_for(lambda: vm.run(["pgrep", "-f", f"^sleep {marker}$"], check=False)
                     .returncode == 1, 20, "the command to end inside")


def test_a_failing_command_says_what_it_printed(vm: vmbed.VM) -> None:
    with pytest.raises(vmbed.CommandFailed, match=r"exited 7\n--- stdout\nout\n--- stderr\nerr"):
        vm.run_as_user(["sh", "-c", "echo out; echo err >&2; exit 7"])
    done = vm.run(["cat"], input=b"\x00binary\xff")
    assert done.stdout == b"\x00binary\xff"


def test_commands_share_one_connection_per_login(vm: vmbed.VM) -> None:
    before = vm.run(["ss", "-Htn", "state", "established", "( sport = :22 )"]).stdout
    for _ in range(3):
        vm.run_as_user(["true"])
    after = vm.run(["ss", "-Htn", "state", "established", "( sport = :22 )"]).stdout
    assert len(before.splitlines()) == len(after.splitlines()) == 2  # root's and the user's
    # Under load a command costs a few tenths of a second; printed, not asserted.
    started = time.monotonic()
    vm.run_as_user(["true"])
    print(f"one command: {time.monotonic() - started:.2f} s; boot: {vm.timings}; "
          f"QEMU RSS {vm_rss_mib(vm)} MiB")


def vm_rss_mib(vm: vmbed.VM) -> int:
    for line in Path(f"/proc/{vm.qemu.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) // 1024
    return -1
