"""The unit files `distsvc install-units` writes (adapters/systemd/unitfiles.py): pure text and
the user's own directories; tests/test_install_e2e.py runs them under systemd."""

from __future__ import annotations

from pathlib import Path

import pytest

import distsvc.adapters.systemd.unitfiles as unitfiles

PROJECT = Path(__file__).resolve().parents[2]


def test_the_package_data_is_the_projects_systemd_directory() -> None:
    for name in unitfiles.UNITS:
        assert unitfiles.packaged(name) == (PROJECT / "systemd" / name).read_text()
    assert {p.name for p in (PROJECT / "systemd").iterdir()} == set(unitfiles.UNITS)


def test_render_names_the_program_and_keeps_the_rest() -> None:
    text = unitfiles.render(unitfiles.packaged("distsvc.service"), "/opt/v/bin/distsvc",
                            "file:///opt/v/METADATA", "distsvc 1 at /opt/v/bin/distsvc")
    lines = text.splitlines()
    assert lines[0] == unitfiles.MARKER
    assert "ExecStart=/opt/v/bin/distsvc daemon" in lines
    assert "Documentation=file:///opt/v/METADATA" in lines
    assert "/usr/bin/distsvc" not in text and "/usr/share/doc" not in text
    original = unitfiles.packaged("distsvc.service").splitlines()
    assert [x for x in lines if not x.startswith(("#", "ExecStart=", "Documentation="))] == [
        x for x in original if not x.startswith(("#", "ExecStart=", "Documentation="))]


def test_render_without_documentation_keeps_the_packaged_line() -> None:
    text = unitfiles.render(unitfiles.packaged("distsvc.socket"), "/x/distsvc", None, "s")
    assert "Documentation=file:///usr/share/doc/distsvc/README.md" in text.splitlines()


@pytest.mark.parametrize(("path", "word"), [
    ("/home/a/.venv/bin/distsvc", "/home/a/.venv/bin/distsvc"),
    ("/home/a b/bin/distsvc", '"/home/a b/bin/distsvc"'),
    ("/h/100%/$HOME/distsvc", "/h/100%%/$$HOME/distsvc"),
    ('/h/q"\\/distsvc', '/h/q\\"\\\\/distsvc'),
])
def test_exec_path_escapes_what_systemd_would_expand_or_split(path: str, word: str) -> None:
    assert unitfiles.exec_path(path) == word


def test_render_refuses_a_unit_that_does_not_run_the_packaged_program() -> None:
    with pytest.raises(ValueError, match="unexpected ExecStart"):
        unitfiles.render("[Service]\nExecStart=/bin/true\n", "/x/distsvc", None, "s")


def test_user_dir_follows_xdg_config_home() -> None:
    assert unitfiles.user_dir({"HOME": "/home/a"}) == Path("/home/a/.config/systemd/user")
    assert unitfiles.user_dir({"HOME": "/home/a", "XDG_CONFIG_HOME": "/c"}) == Path(
        "/c/systemd/user")
    # A relative XDG_CONFIG_HOME is invalid (XDG base directory spec): ignored.
    assert unitfiles.user_dir({"HOME": "/home/a", "XDG_CONFIG_HOME": "c"}) == Path(
        "/home/a/.config/systemd/user")


def test_written_by_us_and_links_to(tmp_path: Path) -> None:
    ours, theirs = tmp_path / "distsvc.socket", tmp_path / "distsvc.service"
    unitfiles.write(ours, unitfiles.render(unitfiles.packaged("distsvc.socket"), "/x", None,
                                           "s"))
    theirs.write_text("[Service]\nExecStart=/bin/true\n")
    assert unitfiles.written_by_us(ours) and not unitfiles.written_by_us(theirs)
    assert not unitfiles.written_by_us(tmp_path / "missing")
    assert ours.stat().st_mode & 0o777 == 0o644
    wants = tmp_path / "sockets.target.wants"
    wants.mkdir()
    (wants / "distsvc.socket").symlink_to(ours)  # absolute, as systemctl enable makes it
    (wants / "other.socket").symlink_to(theirs)
    (tmp_path / "default.target.wants").mkdir()
    (tmp_path / "default.target.wants" / "distsvc.socket").symlink_to("../distsvc.socket")
    assert unitfiles.links_to(tmp_path, [ours]) == [
        tmp_path / "default.target.wants" / "distsvc.socket", wants / "distsvc.socket"]
