"""SSH behaviour against real OpenSSH servers: host keys, agent, ~/.ssh/config, proxies."""

from __future__ import annotations

import os
import signal
import subprocess

import conftest

WHERE = ["sh", "-c", 'set -- $SSH_CONNECTION; echo "$3"']


def test_unknown_host_key_is_refused_with_a_way_forward(client: conftest.Client) -> None:
    (client.home / ".ssh" / "known_hosts").write_text("")
    client.configure(hosts=client.bed.hosts[:1])
    result = client.run("distsvc-run", "true")
    assert result.returncode == 255
    err = result.stderr.decode()
    assert "host key not known" in err and "accept-new" in err and len(err.splitlines()) == 1


def test_accept_new_remembers_the_key(client: conftest.Client) -> None:
    known = client.home / ".ssh" / "known_hosts"
    known.write_text("")
    host = client.bed.hosts[0]
    client.configure(hosts=[host])
    assert client.run("distsvc-run", "--accept-new", "true").returncode == 0
    assert f"[{host.address}]:{host.port} {host.host_key}" in known.read_text()
    assert client.run("distsvc-run", "true").returncode == 0  # now known without the option


def test_changed_host_key_is_refused_even_with_accept_new(client: conftest.Client) -> None:
    bed = client.bed
    # h1's address with h2's key: what a man in the middle would present.
    (client.home / ".ssh" / "known_hosts").write_text(
        f"[{bed.hosts[0].address}]:{bed.hosts[0].port} {bed.hosts[1].host_key}\n")
    client.configure(hosts=bed.hosts[:1], extra='host_key_policy = "accept-new"')
    result = client.run("distsvc-run", "true")
    assert result.returncode == 255 and b"host key CHANGED" in result.stderr
    assert b"ssh-keygen -R" in result.stderr


def test_key_from_the_ssh_agent(client: conftest.Client) -> None:
    key = client.home / ".ssh" / "id_ed25519"
    agent_key = client.home / "agent_key"
    key.rename(agent_key)
    socket_path = client.home / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(socket_path)],
                             stdout=subprocess.DEVNULL)
    try:
        while not socket_path.exists():
            pass
        env = {"SSH_AUTH_SOCK": str(socket_path)}
        subprocess.run(["ssh-add", "-q", str(agent_key)], env={**os.environ, **env}, check=True)
        client.configure(hosts=client.bed.hosts[:1])
        result = client.run("distsvc-run", "echo", "via agent", env=env)
        assert (result.returncode, result.stdout) == (0, b"via agent\n"), result.stderr
        if client.mode == "direct":
            assert client.run("distsvc-run", "true").returncode == 255  # no agent, no key
        else:  # the daemon's connection, made with the agent's key, stays warm and usable
            assert client.run("distsvc-run", "true").returncode == 0
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait()


def test_ssh_config_alias_with_hostname_port_user_and_identity(
        client: conftest.Client) -> None:
    host = client.bed.hosts[1]
    ssh = client.home / ".ssh"
    (ssh / "id_ed25519").rename(ssh / "special_key")
    (ssh / "config").write_text(
        f"Host buildbox\n  HostName {host.address}\n  Port {host.port}\n"
        f"  User {client.bed.user}\n  IdentityFile ~/.ssh/special_key\n")
    client.configure(hosts=[], unknown=[{"name": "buildbox"}])
    result = client.run("distsvc-run", *WHERE)
    assert result.stdout.decode().strip() == host.address, result.stderr


def test_proxy_jump(client: conftest.Client) -> None:
    jump, target = client.bed.hosts[0], client.bed.hosts[2]
    (client.home / ".ssh" / "config").write_text(
        f"Host jumpbox\n  HostName {jump.address}\n  Port {jump.port}\n"
        f"  User {client.bed.user}\n"
        f"Host inner\n  HostName {target.address}\n  Port {target.port}\n"
        f"  User {client.bed.user}\n  ProxyJump jumpbox\n")
    client.configure(hosts=[], unknown=[{"name": "inner"}])
    result = client.run("distsvc-run", *WHERE)
    assert result.stdout.decode().strip() == target.address, result.stderr


def test_proxy_command(client: conftest.Client) -> None:
    jump, target = client.bed.hosts[0], client.bed.hosts[3]
    ssh = client.home / ".ssh"
    proxy = (f"ssh -F /dev/null -i {ssh}/id_ed25519 -o BatchMode=yes "
             f"-o UserKnownHostsFile={ssh}/known_hosts -p {jump.port} "
             f"{client.bed.user}@{jump.address} -W %h:%p")
    (ssh / "config").write_text(
        f"Host viaproxy\n  HostName {target.address}\n  Port {target.port}\n"
        f"  User {client.bed.user}\n  ProxyCommand {proxy}\n")
    client.configure(hosts=[], unknown=[{"name": "viaproxy"}])
    result = client.run("distsvc-run", *WHERE)
    assert result.stdout.decode().strip() == target.address, result.stderr
