"""The Debian packaging in packaging/debian and packaging/build-deb.sh.

The cheap tests read the packaging files; the others build the .deb once (about 20 s, plus
installing the build dependencies with apt-get on a new machine) and look inside it.
"""

from __future__ import annotations

import fnmatch
import os
import re
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEBIAN = ROOT / "packaging" / "debian"
BUILD_DEB = ROOT / "packaging" / "build-deb.sh"
USER_UNIT_DIR = "usr/lib/systemd/user"
UNIT_SUFFIXES = (".service", ".socket", ".timer", ".path", ".target")
RUNTIME_DEPENDS = {"python3-paramiko", "python3-structlog", "python3-systemd",
                   "python3-pystemd", "openssh-client", "procps"}
BUILD_DEPENDS = {"debhelper-compat", "dh-python", "pybuild-plugin-pyproject", "python3-all"}


def parse_control(text: str) -> list[dict[str, str]]:
    """deb822 paragraphs: {field: value}, continuation lines joined with newlines."""
    paragraphs: list[dict[str, str]] = []
    current: dict[str, str] = {}
    field = None
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        if not line.strip():
            if current:
                paragraphs.append(current)
            current, field = {}, None
        elif line[0] in " \t":
            assert field is not None, f"continuation line without a field: {line!r}"
            current[field] += "\n" + line.strip()
        else:
            field, _, value = line.partition(":")
            assert _, f"not a field: {line!r}"
            current[field] = value.strip()
    if current:
        paragraphs.append(current)
    return paragraphs


def relation_names(value: str) -> set[str]:
    """Package names in a Depends-like field (every alternative; substvars left out)."""
    names = set()
    for relation in value.replace("\n", " ").split(","):
        for alternative in relation.split("|"):
            name = re.split(r"[\s(:\[<]", alternative.strip(), maxsplit=1)[0]
            if name and not name.startswith("${"):
                names.add(name)
    return names


def install_entries() -> list[tuple[str, str]]:
    """(source pattern, destination) pairs of debian/distsvc.install."""
    entries = []
    for line in (DEBIAN / "distsvc.install").read_text().splitlines():
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        assert len(words) >= 2, f"no destination in {line!r}"
        entries.extend((source, words[-1].strip("/")) for source in words[:-1])
    return entries


def pyproject_version() -> str:
    return str(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"])


def test_control_names_one_arch_all_package_with_the_dependencies() -> None:
    source, *binaries = parse_control((DEBIAN / "control").read_text())
    assert source["Source"] == "distsvc"
    assert relation_names(source["Build-Depends"]) >= BUILD_DEPENDS
    assert "debhelper-compat (= 13)" in source["Build-Depends"]
    assert [b["Package"] for b in binaries] == ["distsvc"]
    package = binaries[0]
    assert package["Architecture"] == "all"
    assert relation_names(package["Depends"]) >= RUNTIME_DEPENDS
    assert "${python3:Depends}" in package["Depends"]
    assert "${misc:Depends}" in package["Depends"]


def test_rules_use_pybuild_run_no_tests_and_enable_no_units() -> None:
    rules = (DEBIAN / "rules").read_text()
    assert os.access(DEBIAN / "rules", os.X_OK)
    assert re.search(r"^\tdh \$@ --with python3 --buildsystem=pybuild$", rules, re.M)
    # An empty recipe: the next line is blank or a comment, not a command.
    assert re.search(r"^override_dh_auto_test:\n(?!\t)", rules, re.M)
    assert re.search(r"^\tdh_installsystemduser --no-enable$", rules, re.M)
    assert (DEBIAN / "source" / "format").read_text().strip() == "3.0 (quilt)"


def test_every_unit_in_systemd_is_installed_as_a_user_unit() -> None:
    units = sorted(p.name for p in (ROOT / "systemd").iterdir()
                   if p.name.endswith(UNIT_SUFFIXES))
    assert units, "no unit files in systemd/"
    entries = install_entries()
    for unit in units:
        assert any(fnmatch.fnmatch(f"systemd/{unit}", source) and dest == USER_UNIT_DIR
                   for source, dest in entries), f"{unit} is not in debian/distsvc.install"
    for source, _ in entries:  # dh_install fails on a listed file that is missing
        assert list(ROOT.glob(source)), f"debian/distsvc.install lists missing {source}"


def test_docs_install_readme_and_example_config() -> None:
    docs = (DEBIAN / "distsvc.docs").read_text().split()
    assert {"README.md", "config/example.toml"} <= set(docs)
    for doc in docs:
        assert (ROOT / doc).is_file(), doc


def test_changelog_names_the_pyproject_version() -> None:
    first = (DEBIAN / "changelog").read_text().splitlines()[0]
    match = re.fullmatch(r"distsvc \((?:\d+:)?([^)\s]+)-[^-)\s]+\) [\w-]+; urgency=\w+", first)
    assert match, f"bad first changelog line: {first!r}"
    assert match.group(1) == pyproject_version()


def test_build_script_is_valid_bash() -> None:
    assert os.access(BUILD_DEB, os.X_OK)
    subprocess.run(["bash", "-n", str(BUILD_DEB)], check=True)


# --- building the package (installs its build dependencies with apt: CI runs as root) -----

JUNK = ("debian", "build", ".pybuild", "src/distsvc.egg-info", "distsvc.egg-info")


def build_deb(outdir: Path) -> Path:
    """Build the .deb from this checkout into `outdir` with packaging/build-deb.sh (which
    installs missing build dependencies with apt-get); its path. Fails the test when the
    build fails or leaves anything in the project."""
    before = {name for name in JUNK if (ROOT / name).exists()}
    result = subprocess.run([str(BUILD_DEB), str(outdir)], capture_output=True, text=True,
                            timeout=1200)
    assert result.returncode == 0, result.stderr[-5000:]
    after = {name for name in JUNK if (ROOT / name).exists()}
    assert after == before, f"the build left {sorted(after - before)} in the project"
    path = Path(result.stdout.strip().splitlines()[-1])
    assert path.parent == outdir and path.name.endswith("_all.deb"), result.stdout
    assert path.name == f"distsvc_{pyproject_version()}-1_all.deb"
    return path


@pytest.fixture(scope="module")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    yield build_deb(tmp_path_factory.mktemp("deb"))


@pytest.mark.timeout(1500)
def test_deb_contents(deb: Path) -> None:
    listing = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True,
                             check=True).stdout
    paths = {line.split()[-1].removeprefix(".") for line in listing.splitlines()}
    expected = {"/usr/bin/distsvc", "/usr/bin/distsvc-run", "/usr/bin/distsvc-shell",
                "/usr/share/doc/distsvc/example.toml", "/usr/share/doc/distsvc/README.md",
                "/usr/share/doc/distsvc/json.md",  # the --json schemas, which --help names
                "/usr/lib/python3/dist-packages/distsvc/__init__.py"}
    units = {"distsvc.socket", "distsvc.service", "distsvc-scan.service", "distsvc-scan.timer"}
    units |= {p.name for p in (ROOT / "systemd").iterdir() if p.name.endswith(UNIT_SUFFIXES)}
    expected |= {f"/{USER_UNIT_DIR}/{unit}" for unit in units}
    assert expected <= paths, sorted(expected - paths)


@pytest.mark.timeout(1500)
def test_deb_control_and_maintainer_scripts(deb: Path) -> None:
    info = subprocess.run(["dpkg-deb", "-I", str(deb)], capture_output=True, text=True,
                          check=True).stdout
    depends = re.search(r"^ Depends: (.*)$", info, re.M)
    assert depends, info
    assert relation_names(depends.group(1)) >= RUNTIME_DEPENDS
    assert re.search(r"^ Architecture: all$", info, re.M)
    # --no-enable: the postinst re-enables only units an administrator enabled globally
    # (deb-systemd-helper's state file exists), never on a first installation.
    postinst = subprocess.run(["dpkg-deb", "-I", str(deb), "postinst"], capture_output=True,
                              text=True, check=True).stdout
    assert "deb-systemd-helper --user debian-installed" in postinst
    assert "was-enabled defaults to true" not in postinst


@pytest.mark.timeout(1500)
def test_deb_runs_with_debians_python(deb: Path, tmp_path: Path) -> None:
    python = Path("/usr/bin/python3")  # scripts/setup.sh installs Debian's python3
    subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp_path)], check=True)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
           "PYTHONPATH": str(tmp_path / "usr/lib/python3/dist-packages")}
    for program in ("distsvc", "distsvc-run"):
        result = subprocess.run([str(python), str(tmp_path / "usr/bin" / program), "--version"],
                                capture_output=True, text=True, env=env, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == f"distsvc {pyproject_version()}"
    # distsvc-run without site and without installer's `import re` (scripts/fast-launcher.sh).
    launcher = (tmp_path / "usr/bin/distsvc-run").read_text()
    assert launcher.startswith("#!/usr/bin/python3 -S\n")
    assert "sys.path.append('/usr/lib/python3/dist-packages')" in launcher
    assert "import re" not in launcher


# --- lintian (scripts/setup.sh --test installs it) -------------------------------------------

LINTIAN_TAG = re.compile(r"^([A-Z]): (\S+(?: \w+)?): (\S+)(?: (.*))?$")
"""A tag line of lintian's output: code (E, W, I, O, ...), package, tag, context."""


def lintian_tags(output: str) -> list[tuple[str, str, str, str]]:
    """(code, package, tag, context) of each tag line of lintian's output; notes (N:) and
    anything else left out."""
    tags = []
    for line in output.splitlines():
        match = LINTIAN_TAG.match(line.rstrip())
        if match and match.group(1) != "N":
            code, package, tag, context = match.groups()
            tags.append((code, package, tag, context or ""))
    return tags


def accepted_warnings() -> set[tuple[str, str, str, str]]:
    """The warnings debian/README.source lists, each line as lintian prints it, with the
    reason indented below it."""
    text = (DEBIAN / "README.source").read_text()
    listed = lintian_tags("\n".join(line for line in text.splitlines()
                                    if line.startswith(("E: ", "W: "))))
    for code, _, tag, _ in listed:
        assert code == "W", f"README.source accepts an error: {tag} (errors must be fixed)"
    return set(listed)


def overridden_tags() -> set[str]:
    """The tags debian/distsvc.lintian-overrides overrides (each preceded by its reason)."""
    tags = set()
    lines = (DEBIAN / "distsvc.lintian-overrides").read_text().splitlines()
    for number, line in enumerate(lines):
        if line.strip() and not line.startswith("#"):
            assert number and lines[number - 1].startswith("#"), \
                f"override without a comment saying why: {line!r}"
            tags.add(line.split(":", 1)[1].split()[0])
    return tags


def test_lintian_output_parses() -> None:
    output = ("W: distsvc: no-manual-page [usr/bin/distsvc]\n"
              "N: a note\n"
              "O: distsvc: initial-upload-closes-no-bugs [x:1]\n"
              "E: distsvc source: some-error\n")
    assert lintian_tags(output) == [
        ("W", "distsvc", "no-manual-page", "[usr/bin/distsvc]"),
        ("O", "distsvc", "initial-upload-closes-no-bugs", "[x:1]"),
        ("E", "distsvc source", "some-error", "")]


@pytest.mark.timeout(1500)
def test_lintian_reports_no_errors_and_only_the_warnings_readme_source_lists(
        deb: Path) -> None:
    done = subprocess.run(["lintian", "--show-overrides", "--fail-on", "none", str(deb)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    tags = lintian_tags(done.stdout)
    errors = [t for t in tags if t[0] == "E"]
    assert not errors, f"lintian errors:\n{done.stdout}"
    warnings = {t for t in tags if t[0] == "W"}
    accepted = accepted_warnings()
    assert not warnings - accepted, (
        f"lintian warnings not in packaging/debian/README.source: {sorted(warnings - accepted)}"
        f" (fix them, or list them there with the reason)")
    assert not accepted - warnings, (
        f"packaging/debian/README.source lists warnings lintian no longer reports: "
        f"{sorted(accepted - warnings)} (remove them there)")
    # Each override is used (lintian shows it as O:) and README.source says why.
    overridden = {tag for code, _, tag, _ in tags if code == "O"}
    assert overridden == overridden_tags(), done.stdout
    readme = (DEBIAN / "README.source").read_text()
    for tag in overridden:
        assert re.search(rf"^\s+{re.escape(tag)}$", readme, re.M), \
            f"README.source does not explain the override of {tag}"
