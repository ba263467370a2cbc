"""Send a signal to a geowh process at a chosen moment of its start-up, deterministically.

    env = trip_env(tmp_path, "import:typer", "SIGINT")     # as the import of typer begins
    env = trip_env(tmp_path, "call:get_command")            # as Typer builds the Click command
    subprocess.run([geowh, "sql", "select 42"], env=os.environ | env)

A `sitecustomize.py` on PYTHONPATH (Python imports it at start-up, before the console script's
first line) installs an import hook and a profile hook; when the named module starts importing,
or the named function is called, the process sends the signal to itself (delivered before
`os.kill` returns), then removes both hooks. No sleeps: the same moment on an idle machine and
on a loaded one.
"""

from __future__ import annotations

from pathlib import Path

_SITE = '''
import os, signal, sys

_stage = os.environ.pop("GEOWH_TRIP", None)
if _stage:
    _kind, _name = _stage.split(":", 1)
    _signum = getattr(signal, os.environ.pop("GEOWH_TRIP_SIGNAL", "SIGINT"))

    class _Trip:
        def find_spec(self, name, path=None, target=None):
            if _kind == "import" and name == _name:
                _fire()
            return None

    def _profile(frame, event, arg):
        if event == "call" and frame.f_code.co_name == _name:
            _fire()

    def _fire():
        sys.setprofile(None)
        sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _Trip)]
        os.kill(os.getpid(), _signum)

    if _kind == "import":
        sys.meta_path.insert(0, _Trip())
    else:
        sys.setprofile(_profile)
'''


def trip_env(folder: Path, stage: str, signal: str = "SIGINT") -> dict[str, str]:
    """Environment variables that make a Python process started with them signal itself at `stage`."""
    site = Path(folder) / "trip-site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(_SITE)
    return {"PYTHONPATH": str(site), "GEOWH_TRIP": stage, "GEOWH_TRIP_SIGNAL": signal}
