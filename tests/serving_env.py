"""A serving box's virtual environment built in seconds: a new venv holding exactly the
distributions a model's requirements.txt needs (the pins and everything they require,
nothing else: no gan-pipelines, no Ray), linked from the test's own environment, where pip
installed them from the same index a user's `pip install -r requirements.txt` uses.

Why not pip: installing torch's wheels into a new venv unpacks about 6 GB (about two
minutes here), which kept the serving test out of CI. Linking the installed files gives
the same bytes; pip then checks the venv with `--no-index` (a pin that is missing or at
another version fails there, nothing is fetched) and `pip check`. `build(...,
from_index=True)` is the user's way, `pip install -r requirements.txt`.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name


def closure(requirements: list[str]) -> list[metadata.Distribution]:
    """The installed distributions `requirements` need, transitively, with their markers
    evaluated for this interpreter; a distribution asked for with extras (`pkg[extra]`)
    brings what those extras require too."""
    env = default_environment()
    wanted: dict[str, metadata.Distribution] = {}
    extras_done: dict[str, set[str]] = {}
    todo = [Requirement(r) for r in requirements]
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        extras = {""} | set(req.extras)
        new = extras - extras_done.get(name, set())
        if not new:
            continue
        dist = wanted.get(name) or metadata.distribution(req.name)  # PackageNotFoundError: a pin missing here
        if req.specifier and not req.specifier.contains(dist.version, prereleases=True):
            raise RuntimeError(f"{req} is pinned but {dist.version} is installed")
        wanted[name] = dist
        extras_done.setdefault(name, set()).update(new)
        for sub in dist.requires or []:
            child = Requirement(sub)
            if child.marker is None or any(child.marker.evaluate({**env, "extra": e}) for e in new):
                todo.append(child)
    return list(wanted.values())


def _copy_script(src: Path, dest: Path, python: Path) -> None:
    """A console script names its interpreter in its first line: point it at the new venv's."""
    text = src.read_bytes()
    if text.startswith(b"#!"):
        first, _, rest = text.partition(b"\n")
        if re.search(rb"python[0-9.]*$", first):
            text = b"#!" + str(python).encode() + b"\n" + rest
    dest.write_bytes(text)
    dest.chmod(0o755)


def _link(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
        return
    try:
        os.link(src, dest)  # same bytes, no copy; read-only use by the server
    except OSError:
        shutil.copy2(src, dest)  # another filesystem


def clean_env(venv: Path) -> dict[str, str]:
    """The environment of a shell with only `venv` activated: no tracking store, no
    PYTHONPATH or pip settings of the test's, the venv's bin first (`mlflow models serve`
    starts `uvicorn` from PATH)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PYTHON", "VIRTUAL_ENV", "PIP_"))}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", VIRTUAL_ENV=str(venv),
               MLFLOW_DISABLE_TELEMETRY="true")
    return env


def build(venv: Path, requirements_txt: Path, from_index: bool = False) -> Path:
    """A venv at `venv` with the closure of `requirements_txt`, verified by pip;
    from_index: `pip install -r` from the package index instead, as a user does."""
    python = venv / "bin" / "python"
    if from_index:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "-r", str(requirements_txt)],
                       check=True, timeout=1500, env=clean_env(venv), capture_output=True)
        return venv
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               check=True, capture_output=True, text=True, timeout=60).stdout.strip())
    here_site = Path(sysconfig.get_path("purelib")).resolve()
    here_bin = Path(sysconfig.get_path("scripts")).resolve()
    pins = [line.strip() for line in requirements_txt.read_text().splitlines() if line.strip()]
    for dist in closure([*pins, "pip"]):  # pip itself: the checks below run it
        for file in dist.files or []:
            src = Path(dist.locate_file(file)).resolve()
            if not src.is_file():
                continue
            if src.is_relative_to(here_bin):
                _copy_script(src, venv / "bin" / src.name, python)
            elif src.is_relative_to(here_site):
                _link(src, site / src.relative_to(here_site))
    # pip's own verdict on the venv: every pin present at its version, nothing fetched.
    check = subprocess.run([str(python), "-m", "pip", "install", "--no-index", "-r", str(requirements_txt)],
                           capture_output=True, text=True, timeout=300, env=clean_env(venv))
    assert check.returncode == 0 and "Successfully installed" not in check.stdout, check.stdout + check.stderr
    verdict = subprocess.run([str(python), "-m", "pip", "check"], capture_output=True, text=True, timeout=300,
                             env=clean_env(venv))
    assert verdict.returncode == 0, verdict.stdout + verdict.stderr
    return venv
