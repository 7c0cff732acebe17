"""The documentation site builds with warnings treated as errors, and every public function and
class of probe_sae has a docstring and an entry in the generated API reference.

Public means: the names in ``__all__`` of ``probe_sae`` and of each of its public subpackages
and modules (every ``probe_sae.<name>`` not starting with ``_``, discovered, so new ones are
checked as they arrive); a module without ``__all__`` exports the classes and functions it
defines whose names do not start with ``_``. The command-line modules are documented as
commands, not as API.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

import probe_sae

ROOT = Path(__file__).resolve().parents[1]
COMMAND_LINE = {"cli", "demo"}  # `probe-sae ...`: documented in the getting-started page


def public_modules() -> list[ModuleType]:
    names = [
        f"probe_sae.{info.name}"
        for info in pkgutil.iter_modules(probe_sae.__path__)
        if not info.name.startswith("_") and info.name not in COMMAND_LINE
    ]
    return [probe_sae, *(importlib.import_module(name) for name in sorted(names))]


def exported(module: ModuleType) -> dict[str, object]:
    """The module's public classes and functions by name."""
    if hasattr(module, "__all__"):
        names = list(module.__all__)
    else:
        names = [
            name
            for name, obj in vars(module).items()
            if not name.startswith("_") and getattr(obj, "__module__", None) == module.__name__
        ]
    objects = {name: getattr(module, name) for name in names}
    return {
        name: obj
        for name, obj in objects.items()
        if inspect.isclass(obj) or inspect.isfunction(obj)
    }


def own_docstring(obj: object) -> str:
    doc = obj.__dict__.get("__doc__") if inspect.isclass(obj) else obj.__doc__
    doc = (doc or "").strip()
    if inspect.isclass(obj) and doc.startswith(f"{obj.__name__}("):
        return ""  # the signature a dataclass writes when its class has no docstring
    return doc


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("site")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--clean", "-d", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return out, proc


def test_docs_build_strictly_without_warnings(site):
    out, proc = site
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log
    warnings = [line for line in log.splitlines() if "WARNING" in line or "ERROR" in line]
    assert not warnings, "\n".join(warnings)
    for page in ("index.html", "getting-started/index.html", "benchmarks/index.html"):
        assert (out / page).is_file(), page


def test_every_public_object_has_a_docstring():
    missing = [
        f"{module.__name__}.{name}"
        for module in public_modules()
        for name, obj in exported(module).items()
        if not own_docstring(obj)
    ]
    assert not missing, f"add docstrings to: {missing}"


def test_every_public_object_appears_in_the_api_reference(site):
    out, proc = site
    assert proc.returncode == 0, proc.stdout + proc.stderr
    html = "\n".join(p.read_text() for p in (out / "api").rglob("*.html"))
    anchors = set(re.findall(r'id="(probe_sae[\w.]*)"', html))
    modules = public_modules()
    undocumented_modules = [m.__name__ for m in modules if m.__name__ not in anchors]
    assert not undocumented_modules, (
        f"add an API page for {undocumented_modules}: docs/api/<name>.md holding "
        "'::: probe_sae.<name>', listed under 'API reference' in mkdocs.yml"
    )
    # an object re-exported by several modules may be documented under any of its names
    names_of: dict[int, set[str]] = {}
    for module in modules:
        for name, obj in exported(module).items():
            names_of.setdefault(id(obj), set()).update(
                {f"{module.__name__}.{name}", f"{obj.__module__}.{obj.__qualname__}"}
            )
    missing = sorted(
        f"{module.__name__}.{name}"
        for module in modules
        for name, obj in exported(module).items()
        if not names_of[id(obj)] & anchors
    )
    assert not missing, f"not in the API reference: {missing}"
