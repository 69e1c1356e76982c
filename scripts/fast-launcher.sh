#!/usr/bin/env bash
# Rewrites the distsvc-run that pip generated into one that starts Python without `site`:
#   scripts/fast-launcher.sh PYTHON SCRIPT [DIR]
# DIR holds the distsvc package (default: where PYTHON imports it from). scripts/setup.sh:
# .venv/bin/python .venv/bin/distsvc-run; the Debian package (packaging/debian/rules):
# /usr/bin/python3 debian/distsvc/usr/bin/distsvc-run /usr/lib/python3/dist-packages.
#
# Why: `distsvc-run CMD` through the daemon imports only distsvc and the standard library
# (tests/test_fast_client_e2e.py), but every interpreter start runs `site` first: the venv's
# .pth files (setuptools' distutils-precedence.pth imports _distutils_hack), sitecustomize,
# the user site: 9M of the 30M instructions of `python -c pass` (callgrind), of which the fast
# client needs only `os` (5M). Measured: `distsvc-run true` through a warm daemon executes 3.2M
# instructions fewer with this launcher than with pip's script, ~2 ms less CPU of ~20.
# pip cannot write this script itself: pip (26.3 and Debian 12's 23.0.1) replaces a whole
# "#!python -S" line by "#!/path/to/python", dropping the flag, and so does `installer`
# (Debian's pybuild); console scripts from [project.scripts] never get flags. installer's
# script (Debian's /usr/bin/distsvc-run) also imports `re` to strip a ".exe": ~10 ms more.
#
# The launcher puts distsvc's directory on sys.path itself (after the standard library, where
# site would put it), unless the user installed a distsvc of their own in their user site
# (pip install --user), which then goes first as it would with site (and as it does for the
# daemon); when the fast path cannot do a command, commands/run.py loads `site` then
# (site.main()), so the full client finds paramiko and the rest as usual. A later `pip install`
# writes pip's script back, which works the same, only slower. Nothing is rewritten when the
# interpreter's path would not fit a shebang line (spaces, over 127 bytes): pip's script stays.
set -euo pipefail
python=$1 script=$2 where=${3:-}
[[ -x $python && -f $script ]] || { echo "fast-launcher.sh: no $python or $script" >&2; exit 2; }
python=$(cd "$(dirname "$python")" && pwd)/$(basename "$python")  # absolute; a venv's link kept
"$python" - "$python" "$script" "$where" <<'PY'
import os
import sys

python, script, where = sys.argv[1:]
if not where:
    import distsvc

    where = os.path.dirname(os.path.dirname(os.path.abspath(distsvc.__file__)))
shebang = f"#!{python} -S"
if any(c.isspace() for c in python) or len(shebang) > 127:
    print(f"fast-launcher.sh: keeping pip's {script} (interpreter path unfit for a shebang)",
          file=sys.stderr)
    sys.exit(0)
text = f"""{shebang}
# distsvc-run without `site`: written by scripts/fast-launcher.sh over pip's script (see there).
import os
import site
import sys
if (sys.prefix == sys.base_prefix and site.check_enableusersite()  # (a venv has no user site)
        and os.path.isdir(site.getusersitepackages() + "/distsvc")):
    site.main()  # a distsvc of the user's own (pip install --user) goes first, as with site
else:
    sys.path.append({where!r})
from distsvc.commands.run import main
sys.exit(main())
"""
temporary = f"{script}.{os.getpid()}.tmp"
with open(temporary, "w") as out:
    out.write(text)
os.chmod(temporary, 0o755)
os.replace(temporary, script)
PY
