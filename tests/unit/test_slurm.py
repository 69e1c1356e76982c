"""The pure Slurm pieces: options from limits, refusals, Slurm's answers read; `[[clusters]]`."""

from __future__ import annotations

import pytest

import distsvc.config
import distsvc.errors
import distsvc.slurm as slurm
from distsvc.jobs.limits import Limits

HPC = distsvc.config.Cluster(name="hpc", partition="debug", account="proj",
                             defaults=Limits(memory=1 << 30, timeout=3600.0))


def test_options_map_limits_over_the_clusters_defaults() -> None:
    assert slurm.options(HPC, Limits(cpu=250, timeout=90.0)) == [
        "--partition=debug", "--account=proj", "--mem=1024M", "--cpus-per-task=3",
        "--time=00:02:00"]
    assert slurm.options(distsvc.config.Cluster(name="x"), Limits()) == []


@pytest.mark.parametrize(("seconds", "text"), [
    (1, "00:01:00"), (60, "00:01:00"), (61, "00:02:00"), (3600 * 25, "1-01:00:00")])
def test_time_is_whole_minutes_rounded_up(seconds: float, text: str) -> None:
    assert slurm.format_time(seconds) == text


@pytest.mark.parametrize("limit", ["tasks", "io_weight", "io_read", "io_write"])
def test_limits_slurm_has_no_counterpart_for_are_refused(limit: str) -> None:
    with pytest.raises(slurm.ClusterCannot) as refused:
        slurm.options(HPC, Limits(**{limit: 5}))
    assert refused.value.exit_status == distsvc.errors.EXIT_JOB
    assert "cluster hpc cannot enforce it" in refused.value.message
    assert refused.value.message.startswith("--" + limit.replace("_", "-"))


@pytest.mark.parametrize(("stderr", "words"), [
    ("srun: error: invalid partition specified: nope\n"
     "allocation failure: Invalid partition name specified\n",
     ["Invalid partition name specified", "`partition` of cluster hpc (debug)"]),
    ("sbatch: error: Batch job submission failed: Invalid account or account/partition "
     "combination specified\n", ["Invalid account", "`account` of cluster hpc (proj)"]),
    ("allocation failure: Requested time limit is invalid (missing or exceeds some limit)\n",
     ["Requested time limit is invalid", "ask for less (--time=00:05:00)"]),
    ("srun: error: Unable to allocate resources: Requested node configuration is not "
     "available\n", ["Requested node configuration is not available", "ask for less"]),
    ("allocation failure: Job violates accounting/QOS policy (job submit limit, user's size "
     "and/or time limits)\n", ["Job violates accounting/QOS policy"]),
    ("sbatch: error: Batch job submission failed: Invalid generic resource (gres) "
     "specification\n", ["Invalid generic resource"]),
])
def test_a_refusal_is_one_line_with_slurms_reason_and_what_to_do(stderr: str,
                                                                 words: list[str]) -> None:
    refused = slurm.refusal(HPC, stderr, ["--time=00:05:00"])
    assert isinstance(refused, slurm.ClusterCannot) and refused.exit_status == 4
    message = refused.message
    assert "\n" not in message and message.startswith("cluster hpc refused it: ")
    assert all(w in message for w in words), message
    assert "submission failed" not in message


# Slurm failing to be asked at all, in its own words (the first measured with no slurm.conf).
@pytest.mark.parametrize(("stderr", "words"), [
    ("srun: error: resolve_ctls_from_dns_srv: res_nsearch error: Unknown host\n"
     "srun: error: fetch_config: DNS SRV lookup failed\n"
     "srun: error: _establish_config_source: failed to fetch config\n"
     "srun: fatal: Could not establish a configuration source\n",
     "Slurm could not be asked (Could not establish a configuration source)"),
    ("sbatch: error: Munge encode failed: Failed to access \"/run/munge/munge.socket.2\": No "
     "such file or directory\nsbatch: error: auth_g_create: REQUEST_SUBMIT_BATCH_JOB failure\n"
     "sbatch: error: Batch job submission failed: Protocol authentication error\n",
     "Slurm could not be asked (Protocol authentication error)"),
    ("srun: error: Unable to allocate resources: Unable to contact slurm controller (connect "
     "failure)\n", "Slurm's controller does not answer (Unable to contact slurm controller"),
    ("srun: error: something Slurm never said before\n", "Slurm could not be asked"),
])
def test_slurm_not_asked_is_255_not_a_refusal(stderr: str, words: str) -> None:
    error = slurm.refusal(HPC, stderr, [])
    assert type(error) is distsvc.errors.CannotRun and error.exit_status == 255
    assert words in error.message and "\n" not in error.message, error.message


@pytest.mark.parametrize(("state", "code", "end"), [
    ("COMPLETED", "0:0", ("exited", 0, None, None)),
    ("FAILED", "3:0", ("exited", 3, None, "Slurm: FAILED")),
    ("FAILED", "0:9", ("killed", None, 9, "Slurm: FAILED")),
    ("CANCELLED by 1001", "0:15", ("killed", None, 15, "Slurm: CANCELLED")),
    ("TIMEOUT", "0:1", ("timeout", None, None, "Slurm: TIMEOUT")),
    ("OUT_OF_MEMORY", "0:125", ("oom", None, None, "Slurm: OUT_OF_MEMORY")),
    ("NODE_FAIL", "0:0", ("failed", None, None, "Slurm: NODE_FAIL")),
    ("PENDING", "0:0", None), ("RUNNING", "0:0", None), ("COMPLETING", "0:0", None),
])
def test_slurm_states_map_to_a_records_end(state: str, code: str, end: object) -> None:
    assert slurm.ended(state, code) == end


def test_answers_are_read() -> None:
    summary = slurm.parse_summary("node n1 idle\nnode n2 alloc\nnode n3 down*\nnode n4 mixed\n"
                                  "cpus 10/6/4/20\njob PENDING\njob PENDING\njob RUNNING\n")
    assert summary.nodes == {"idle": 1, "allocated": 1, "down": 1, "mixed": 1}
    assert (summary.cpus, summary.pending, summary.running) == ((10, 6, 4, 20), 2, 1)
    fields = slurm.parse_fields("JobId=7 JobName=x JobState=PENDING Reason=Dependency "
                                "ExitCode=0:0 Command=/bin/echo a b")
    assert (fields["JobState"], slurm.reason_text(fields)) == ("PENDING", "Dependency")
    assert slurm.reason_text({"Reason": "None"}) is None
    assert slurm.parse_duration("1-02:03:04") == 93784
    assert slurm.parse_duration("00:01.500") == 1.5
    assert slurm.parse_size("2048K") == 2 << 20 and slurm.parse_size("") is None


def test_clusters_in_the_config_with_every_problem_at_its_path() -> None:
    config = distsvc.config.from_mapping({"clusters": [
        {"name": "hpc", "login": "l1", "port": 2222, "partition": "debug", "memory": "2G"},
        {"name": "here"}]}, "f", None)
    hpc = config.cluster("hpc")
    assert hpc is not None and hpc.login == distsvc.config.Host(name="l1", port=2222)
    assert hpc.defaults == Limits(memory=2 << 30)
    assert config.cluster("here") == distsvc.config.Cluster(name="here")
    assert distsvc.config.from_wire(distsvc.config.to_mapping(config)).clusters == \
        config.clusters
    with pytest.raises(distsvc.errors.ConfigError) as bad:
        distsvc.config.from_mapping({"hosts": [{"name": "a"}], "clusters": [
            {"name": "a", "user": "u", "qos": "x y", "color": 1, "cpu": "lots", "tasks": 9},
            {}]}, "f", None)
    assert bad.value.problems == [
        "clusters[0].tasks: a cluster cannot have it: Slurm bounds no process count",
        "clusters[0].color: unknown setting",
        "clusters[0].user: is for the login node: set `login` too (or leave it out to use "
        "Slurm's commands on this machine)",
        "clusters[0].qos: \"x y\" is not a Slurm name (letters, digits and _.+- only)",
        "clusters[0].cpu: lots: not a percentage (use N% of one CPU, e.g. 150%)",
        "clusters[0].name: 'a' is a host's name too (a name is either a host or a cluster)",
        "clusters[1].name: is required"]


@pytest.mark.parametrize("output", ["out/%j", "out\\x", "it's", "a\nb"])
def test_an_output_sbatch_would_read_as_a_pattern_is_refused(output: str) -> None:
    with pytest.raises(distsvc.errors.ConfigError) as bad:
        distsvc.config.from_mapping({"clusters": [{"name": "c", "output": output}]}, "f", None)
    assert bad.value.problems == [
        "clusters[0].output: must not hold a newline, a quote, % or \\ (sbatch reads % and "
        "\\ in its --output as patterns)"]
