"""The daemon's side of a fast client's `run`: the client's configuration (cached while its
file is unchanged), environment and directory, or the full client's turn."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

import distsvc.daemon.run_setting as run_setting
import distsvc.errors

HOSTS = '[[hosts]]\nname = "a"\n[[hosts]]\nname = "b"\n'


def home(tmp_path: Path, config: str | None = HOSTS) -> dict[str, str]:
    environ = {"HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "cfg"),
               "PATH": "/bin", "TERM": "vt100", "MINE": "1", "SSH_AUTH_SOCK": "/agent"}
    if config is not None:
        (tmp_path / "cfg" / "distsvc").mkdir(parents=True)
        (tmp_path / "cfg" / "distsvc" / "config.toml").write_text(config)
    return environ


def request(environ: dict[str, str], cwd: str) -> dict[str, Any]:
    return {"type": "run", "argv": ["true"], "environ": environ, "cwd": cwd}


def test_the_setting_is_what_the_full_client_would_send(tmp_path: Path) -> None:
    environ = home(tmp_path)
    setting = run_setting.of(request({**environ, "PWD": str(tmp_path)}, str(tmp_path)))
    assert [h.name for h in setting.config.hosts] == ["a", "b"]
    assert setting.env["MINE"] == "1" and "HOME" not in setting.env
    assert (setting.workdir, setting.term, setting.ssh_auth_sock) == (
        str(tmp_path), "vt100", "/agent")


def test_pwd_is_the_directory_only_when_it_is_the_current_one(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    environ = home(tmp_path)
    real = str(tmp_path / "real")
    via_link = {**environ, "PWD": str(tmp_path / "link")}
    assert run_setting.of(request(via_link, real)).workdir == str(tmp_path / "link")
    assert run_setting.of(request({**environ, "PWD": "/"}, real)).workdir == real


def test_the_configuration_is_loaded_once_per_version_of_its_file(tmp_path: Path) -> None:
    environ = home(tmp_path)
    first = run_setting.client_config(environ)
    assert run_setting.client_config(environ) is first
    path = tmp_path / "cfg" / "distsvc" / "config.toml"
    path.write_text(HOSTS.replace('"b"', '"c"'))
    os.utime(path, ns=(1, 1))  # even with an old time: the size and ctime changed
    assert [h.name for h in run_setting.client_config(environ).hosts] == ["a", "c"]
    only_a = run_setting.client_config({**environ, "DISTSVC_HOSTS": "a"})
    assert [h.name for h in only_a.hosts] == ["a"]


@pytest.mark.parametrize(("config", "reason"), [
    ('max_age = "x"\n', "max_age"),
    (None, "no hosts configured"),
    ("", "no hosts configured"),
])
def test_what_the_daemon_leaves_to_the_full_client(tmp_path: Path, config: str | None,
                                                   reason: str) -> None:
    with pytest.raises(run_setting.FullClient, match=reason):
        run_setting.of(request(home(tmp_path, config), str(tmp_path)))


def test_an_unreadable_saved_environment_is_left_to_the_full_client(tmp_path: Path) -> None:
    environ = home(tmp_path)
    (tmp_path / "cfg" / "distsvc" / "environment.json").write_text("[")
    with pytest.raises(run_setting.FullClient, match="saved environment"):
        run_setting.of(request(environ, str(tmp_path)))


def test_a_configuration_the_daemon_must_not_read_is_left_to_the_full_client(
        tmp_path: Path) -> None:
    """The daemon reads files a client's environment names: a FIFO would block it, a device
    never end, a huge file fill its memory; a relative HOME is the client's to resolve."""
    environ = home(tmp_path, None)
    (tmp_path / "cfg" / "distsvc").mkdir(parents=True)
    config = tmp_path / "cfg" / "distsvc" / "config.toml"
    os.mkfifo(config)
    with pytest.raises(run_setting.FullClient, match="not a regular file"):
        run_setting.of(request(environ, str(tmp_path)))
    config.unlink()
    config.symlink_to("/dev/zero")
    with pytest.raises(run_setting.FullClient, match="not a regular file"):
        run_setting.of(request(environ, str(tmp_path)))
    config.unlink()
    config.write_text(HOSTS + "#" * run_setting.CONFIG_MAX_BYTES)
    with pytest.raises(run_setting.FullClient, match="over"):
        run_setting.of(request(environ, str(tmp_path)))
    relative = {k: v for k, v in environ.items() if k != "XDG_CONFIG_HOME"} | {"HOME": "home"}
    with pytest.raises(run_setting.FullClient, match="relative"):
        run_setting.of(request(relative, str(tmp_path)))


def test_a_saved_environment_that_is_a_fifo_is_left_to_the_full_client(tmp_path: Path) -> None:
    environ = home(tmp_path)
    os.mkfifo(tmp_path / "cfg" / "distsvc" / "environment.json")
    with pytest.raises(run_setting.FullClient, match="not a regular file"):
        run_setting.of(request(environ, str(tmp_path)))


def test_the_full_clients_form_is_taken_as_sent(tmp_path: Path) -> None:
    setting = run_setting.of({"type": "run", "argv": ["x"], "config": {"hosts": [{"name": "a"}]},
                              "env": {"A": "1"}, "workdir": "", "term": ""})
    assert (setting.env, setting.workdir, setting.term) == ({"A": "1"}, "/", "xterm")
    with pytest.raises(distsvc.errors.ConfigError):
        run_setting.of({"type": "run", "config": {"max_age": "x"}, "env": {}, "workdir": "/"})


def test_a_configuration_from_the_wire_is_validated_once() -> None:
    data = {"hosts": [{"name": "a"}], "max_age": 7}
    first = run_setting.wire_config(data)
    assert run_setting.wire_config(dict(data)) is first and first.max_age == 7
    assert run_setting.wire_config({**data, "max_age": 8}).max_age == 8
    for _ in range(2):  # an invalid one is refused every time
        with pytest.raises(distsvc.errors.ConfigError, match="max_age"):
            run_setting.wire_config({**data, "max_age": "x"})
