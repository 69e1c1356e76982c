import conftest


def test_runs_on_a_host(client: conftest.Client) -> None:
    client.configure()
    result = client.run("distsvc-run", "sh", "-c", "echo out; echo err >&2; exit 3")
    assert result.stdout == b"out\n", result.stderr
    assert result.stderr == b"err\n"
    assert result.returncode == 3
