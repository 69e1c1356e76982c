"""`distsvc job start` and `distsvc-run --detach`: where a job goes and how it queues, from
the options to the job_start request, and the refusals (one line, exit 2) before anything is
sent. No daemon: the parser and `_start` only."""

from __future__ import annotations

import argparse

import pytest

import distsvc.commands.main
import distsvc.commands.run
import distsvc.errors
from distsvc.commands import job

QUEUE_FIELDS = ("target", "host", "group", "after", "retries", "retry_delay")


def parse(*argv: str) -> argparse.Namespace:
    return distsvc.commands.main.parser("job").parse_args(["job", "start", *argv])


def request(*argv: str) -> dict[str, object]:
    return job._start(parse(*argv))


def queue_part(message: dict[str, object]) -> dict[str, object]:
    return {k: v for k, v in message.items() if k in QUEUE_FIELDS}


def refusal(*argv: str) -> str:
    with pytest.raises(distsvc.errors.UsageError) as caught:
        request(*argv)
    assert caught.value.exit_status == 2
    assert "\n" not in caught.value.message
    return caught.value.message


def test_no_queue_option_leaves_every_field_to_the_daemon() -> None:
    message = request("make", "-j4")
    assert message["argv"] == ["make", "-j4"]
    assert queue_part(message) == {}


@pytest.mark.parametrize(("argv", "fields"), [
    (["--host", "build1"], {"target": "host", "host": "build1"}),
    (["--best"], {"target": "best"}),
    (["--local"], {"target": "local"}),
    (["--group", "nightly"], {"group": "nightly"}),
    (["--retries", "3"], {"retries": 3}),
    (["--retries", "0"], {"retries": 0}),
    (["--retry-delay", "30"], {"retry_delay": 30.0}),
    (["--retry-delay", "1.5"], {"retry_delay": 1.5}),
    (["--retry-delay", "2m"], {"retry_delay": 120.0}),
    (["--retry-delay", "1h30m"], {"retry_delay": 5400.0}),
    (["--retry-delay", "1d"], {"retry_delay": 86400.0}),
    (["--retry-delay", "0"], {"retry_delay": 0.0}),
    (["--retry-delay", "0s"], {"retry_delay": 0.0}),
])
def test_each_option_becomes_its_field(argv: list[str], fields: dict[str, object]) -> None:
    assert queue_part(request(*argv, "true")) == fields


def test_after_is_repeatable_and_comma_separated_in_order_each_once() -> None:
    message = request("--after", "3,4", "--after", "12", "--after", "4,", "--after", " 5 ",
                      "true")
    assert message["after"] == ["3", "4", "12", "5"]


def test_everything_at_once_with_the_command_after_it() -> None:
    message = request("--host", "h2", "--group", "g", "--after", "7", "--retries", "2",
                      "--retry-delay", "10s", "--memory", "1G", "--", "sh", "-c", "exit 3")
    assert queue_part(message) == {"target": "host", "host": "h2", "group": "g",
                                   "after": ["7"], "retries": 2, "retry_delay": 10.0}
    assert message["argv"] == ["sh", "-c", "exit 3"]
    assert message["limits"] == {"memory": 1 << 30}


def test_options_after_the_command_belong_to_the_command() -> None:
    message = request("echo", "--retries", "x")
    assert message["argv"] == ["echo", "--retries", "x"]
    assert queue_part(message) == {}


@pytest.mark.parametrize("value", ["x", "-1", "101", "1.5", "", "1e2", "²", "9" * 5000])
def test_bad_retries_are_refused(value: str) -> None:
    assert refusal("--retries", value, "true").startswith(f"--retries {value}:")


def test_retries_up_to_the_bound_are_taken() -> None:
    assert request("--retries", "100", "true")["retries"] == 100
    assert request("--retries", "007", "true")["retries"] == 7


def test_a_retries_value_that_is_not_printable_stays_on_one_line() -> None:
    assert refusal("--retries", "1\n2", "true") == (
        '--retries "1\\n2": not a whole number from 0 to 100')


@pytest.mark.parametrize(("value", "why"), [
    ("-5", "not a duration"), ("soon", "not a duration"), ("5x", "not a duration"),
    ("", "not a duration"), ("99999d", "too long"), ("86401", "too long (at most 1d)"),
    ("25h", "too long"),
])
def test_bad_retry_delays_are_refused_as_limits_are(value: str, why: str) -> None:
    message = refusal("--retry-delay", value, "true")
    assert message.startswith("--retry-delay ") and why in message


@pytest.mark.parametrize("value", ["abc", "0", "01", "-3", "3;rm", "../1", ","])
def test_after_a_value_that_is_not_an_id_is_refused(value: str) -> None:
    message = refusal("--after", value, "true")
    assert message.startswith("--after ") and "not a job ID" in message


def test_after_names_the_bad_id_among_good_ones() -> None:
    assert refusal("--after", "3,x,4", "true").startswith("--after x: not a job ID")


@pytest.mark.parametrize("argv", [
    ["--host", "h1", "--local"], ["--host", "h1", "--best"], ["--best", "--local"],
    ["--local", "--best", "--host", "h1"],
])
def test_targets_exclude_each_other(argv: list[str]) -> None:
    message = refusal(*argv, "true")
    assert "give only one of --host NAME, --best, --local and --on CLUSTER" in message
    assert message.startswith("--host") or message.startswith("--best")


@pytest.mark.parametrize("argv", [["--host", ""], ["--host", " "], ["--host", "a\nb"],
                                  ["--group", ""], ["--group", "x\ty"]])
def test_empty_names_are_refused(argv: list[str]) -> None:
    assert refusal(*argv, "true").startswith(argv[0])


def test_distsvc_run_detach_sends_the_same_request() -> None:
    args = distsvc.commands.run.parser().parse_args(
        ["--detach", "--host", "h1", "--after", "2,3", "--retries", "1", "--retry-delay", "5",
         "--group", "g", "sleep", "9"])
    message = job._start(args)
    assert queue_part(message) == {"target": "host", "host": "h1", "group": "g",
                                   "after": ["2", "3"], "retries": 1, "retry_delay": 5.0}
    assert message["argv"] == ["sleep", "9"]


def test_distsvc_run_refuses_queue_options_without_detach(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert distsvc.commands.run.main(["--retries", "2", "true"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "add --detach" in err


def test_distsvc_run_refuses_a_bad_value_before_starting(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The check comes before the daemon is asked: with DISTSVC_DAEMON=off, a request would
    fail with 255 instead."""
    monkeypatch.setenv("DISTSVC_DAEMON", "off")
    assert distsvc.commands.run.main(["--detach", "--after", "x", "true"]) == 2
    assert capsys.readouterr().err == (
        "distsvc: --after x: not a job ID (IDs are numbers, as `distsvc job list` shows)\n")


def test_on_a_cluster() -> None:
    import distsvc.commands.main

    args = distsvc.commands.main.parser().parse_args(
        ["job", "start", "--on", "hpc", "--after", "3", "true"])
    fields = distsvc.commands.job.queue_from(args)
    assert fields == {"target": "cluster", "cluster": "hpc", "after": ["3"]}
    assert "--host, --on: give only one" in refusal("--host", "h1", "--on", "hpc", "true")


@pytest.mark.parametrize("argv", [["--host", "h1", "--on", "hpc", "true"],
                                  ["--retries", "2", "--on", "hpc", "true"]])
def test_distsvc_run_subcommand_checks_as_distsvc_run_does(
        argv: list[str], capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """`distsvc run` and distsvc-run share their checks: the same one line, exit 2."""
    monkeypatch.setenv("DISTSVC_DAEMON", "off")
    assert distsvc.commands.run.main(argv) == 2
    alone = capsys.readouterr().err
    assert distsvc.commands.main.main(["run", *argv]) == 2
    assert capsys.readouterr().err == alone and alone.count("\n") == 1
    assert "add --detach" in alone


def test_distsvc_run_subcommand_detach_is_a_job(monkeypatch: pytest.MonkeyPatch) -> None:
    """`distsvc run --detach` is distsvc-run --detach: job start (its checks first)."""
    started: list[list[str]] = []
    monkeypatch.setattr(job, "start", lambda args: started.append(args.command) or 0)
    assert distsvc.commands.main.main(["run", "--detach", "--on", "hpc", "sleep", "9"]) == 0
    assert started == [["sleep", "9"]]
