"""distsvc.environment: which variables travel, and the saved environment file."""

from __future__ import annotations

import json
import os
import stat

import pytest

import distsvc.environment
import distsvc.errors
from distsvc.config import DEFAULT_ENV_DENY, EnvFilter
from distsvc.environment import carried, load_saved, store_saved

LIVE = {
    "HOME": "/home/u",
    "USER": "u",
    "PATH": "/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "LC_ALL": "C",
    "SSH_AUTH_SOCK": "/tmp/agent",
    "SSH_CONNECTION": "1 2 3 4",
    "DISPLAY": ":0",
    "TERM": "xterm-256color",
    "XDG_RUNTIME_DIR": "/run/user/1000",
    "XDG_SESSION_ID": "3",
    "XDG_DATA_DIRS": "/usr/share",
    "DISTSVC_HOSTS": "a,b",
    "MY_VAR": "1",
    "MY_SECRET_TOKEN": "hunter2",
    "_": "/usr/bin/distsvc-run",
}


def test_default_filter_drops_session_variables_and_keeps_the_rest():
    result = carried(LIVE, EnvFilter(), {})
    assert result == {
        "PATH": "/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "LC_ALL": "C",
        "XDG_DATA_DIRS": "/usr/share",
        "MY_VAR": "1",
        "MY_SECRET_TOKEN": "hunter2",
    }


@pytest.mark.parametrize("name", ["HOME", "USER", "SSH_AUTH_SOCK", "SSH_CONNECTION", "DISPLAY",
                                  "TERM", "XDG_RUNTIME_DIR", "XDG_SESSION_ID", "DISTSVC_HOSTS",
                                  "_"])
def test_default_deny_list_drops(name):
    assert name not in carried(LIVE, EnvFilter(), {})


def test_allow_globs_select_variables():
    env_filter = EnvFilter(allow=("LANG", "LC_*", "MY_*"))
    assert carried(LIVE, env_filter, {}) == {
        "LANG": "C.UTF-8", "LC_ALL": "C", "MY_VAR": "1", "MY_SECRET_TOKEN": "hunter2"}


def test_deny_globs_win_over_allow():
    env_filter = EnvFilter(allow=("MY_*", "HOME"), deny=(*DEFAULT_ENV_DENY, "*SECRET*"))
    assert carried(LIVE, env_filter, {}) == {"MY_VAR": "1"}


def test_globs_are_case_sensitive():
    env_filter = EnvFilter(allow=("my_*",), deny=())
    assert carried(LIVE, env_filter, {}) == {}


def test_character_class_and_question_mark_globs():
    env_filter = EnvFilter(allow=("LC_???", "[LP]A*"), deny=())
    assert carried(LIVE, env_filter, {}) == {"LC_ALL": "C", "LANG": "C.UTF-8",
                                             "PATH": "/usr/bin:/bin"}


def test_each_filter_decides_for_itself_however_often_a_name_is_asked_about():
    """The decisions are kept per filter (the daemon filters the same names again and
    again, for clients with different configurations)."""
    environ = {"HOME": "/h", "MAKEFLAGS": "-j4", "SECRET_TOKEN": "x"}
    everything, only_make = EnvFilter(allow=("*",), deny=("SECRET_*",)), EnvFilter(
        allow=("MAKE*",), deny=())
    for _ in range(3):
        assert carried(environ, everything, {}) == {"HOME": "/h", "MAKEFLAGS": "-j4"}
        assert carried(environ, only_make, {}) == {"MAKEFLAGS": "-j4"}


def test_saved_variables_are_added_and_override_live_ones():
    saved = {"MY_VAR": "saved", "EXTRA": "x"}
    result = carried(LIVE, EnvFilter(allow=("MY_VAR", "LANG")), saved)
    assert result == {"MY_VAR": "saved", "LANG": "C.UTF-8", "EXTRA": "x"}


def test_saved_variables_are_carried_even_if_the_filter_would_drop_them():
    result = carried({}, EnvFilter(), {"TERM": "dumb"})
    assert result == {"TERM": "dumb"}


def test_carried_does_not_modify_its_inputs():
    live = dict(LIVE)
    saved = {"A": "1"}
    carried(live, EnvFilter(), saved)
    assert live == LIVE and saved == {"A": "1"}


# --- the saved environment file --------------------------------------------------------------


def test_store_then_load_round_trip(tmp_path):
    path = tmp_path / "cfg" / "distsvc" / "environment.json"
    variables = {"B": "2", "A": "line\nbreak", "U": "é☃", "Q": "\"'$`"}
    store_saved(path, variables)
    assert load_saved(path) == variables
    assert list(json.loads(path.read_text())) == ["A", "B", "Q", "U"]  # sorted


def test_store_saved_writes_mode_0600_and_a_private_directory(tmp_path):
    path = tmp_path / "new" / "environment.json"
    store_saved(path, {"SECRET": "x"})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_store_saved_makes_an_existing_world_readable_file_private(tmp_path):
    path = tmp_path / "environment.json"
    path.write_text("{}")
    path.chmod(0o644)
    store_saved(path, {"SECRET": "x"})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_store_saved_replaces_atomically_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "environment.json"
    store_saved(path, {"A": "1"})
    before = path.stat().st_ino
    store_saved(path, {"A": "2"})
    assert path.stat().st_ino != before  # a new file renamed over the old one
    assert [p.name for p in tmp_path.iterdir()] == ["environment.json"]
    assert load_saved(path) == {"A": "2"}


def test_store_saved_ignores_the_umask_for_the_file(tmp_path):
    previous = os.umask(0)
    try:
        store_saved(tmp_path / "environment.json", {"A": "1"})
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "environment.json").stat().st_mode) == 0o600


def test_load_saved_of_a_missing_file_is_empty(tmp_path):
    assert load_saved(tmp_path / "nope.json") == {}


@pytest.mark.parametrize("content", [b"{", b"not json", b"", b"\xff\xfe{}", b'{"a": 1'])
def test_load_saved_corrupt_json_is_a_one_line_usage_error(tmp_path, content):
    path = tmp_path / "environment.json"
    path.write_bytes(content)
    with pytest.raises(distsvc.errors.UsageError) as caught:
        load_saved(path)
    error = caught.value
    assert error.exit_status == 2
    assert "\n" not in error.message
    assert str(path) in error.message
    assert "distsvc env delete --all" in error.message


@pytest.mark.parametrize("data", [[], ["A"], {"A": 1}, {"A": None}, {"A": ["x"]}, "text", 3])
def test_load_saved_wrong_shape_is_a_one_line_usage_error(tmp_path, data):
    path = tmp_path / "environment.json"
    path.write_text(json.dumps(data))
    with pytest.raises(distsvc.errors.UsageError) as caught:
        load_saved(path)
    assert "\n" not in caught.value.message
    assert "not a JSON object of strings" in caught.value.message


def test_load_saved_unreadable_path_is_a_usage_error(tmp_path):
    path = tmp_path / "environment.json"
    path.mkdir()
    with pytest.raises(distsvc.errors.UsageError) as caught:
        load_saved(path)
    assert "\n" not in caught.value.message
