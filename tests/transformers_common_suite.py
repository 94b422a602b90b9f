"""transformers' own common test mixins, fetched from the source distribution of the installed transformers.

A wheel ships no ``tests/``, so the sdist of exactly the installed version is downloaded from the package index
with pip, and only the four mixin files are unpacked into a cache folder outside the repository (nothing fetched is
ever committed). The mixins import a few helpers that the sdist does not ship (``tests/utils``,
``tests/generation``, ``tests/exporters`` and ``utils/fetch_hub_objects_for_ci.py`` of the transformers
repository); minimal stand-ins for them are registered here.

Run ``python tests/transformers_common_suite.py`` to pre-fetch (``.ci/run`` does); ``tests/models/test_transformers_common.py``
fetches on first use when the cache is missing. A failed download raises ``SuiteUnavailable`` with pip's output.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import types
from pathlib import Path

MIXIN_FILES = (
    "test_modeling_common.py",
    "test_configuration_common.py",
    "test_image_processing_common.py",
    "test_processing_common.py",
)
PACKAGE = "transformers_common_tests"  # import name of the unpacked mixins (never "transformers" or "tests")
MANIFEST = "manifest.json"
CACHE_ENV = "CLOOME_TRANSFORMERS_TESTS_CACHE"


class SuiteUnavailable(RuntimeError):
    """The transformers sdist could not be fetched or does not hold the expected mixin files."""


def installed_version() -> str:
    import transformers

    return transformers.__version__


def cache_root() -> Path:
    """``$CLOOME_TRANSFORMERS_TESTS_CACHE``, else ``$XDG_CACHE_HOME/cloome-hf/transformers-tests`` (~/.cache)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "cloome-hf" / "transformers-tests"


def suite_dir(version: str) -> Path:
    return cache_root() / version


def _is_complete(folder: Path, version: str) -> bool:
    """True when ``folder`` holds every mixin file with the hashes its manifest recorded for ``version``."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    if manifest.get("version") != version or set(manifest.get("files", {})) != set(MIXIN_FILES):
        return False
    package = folder / PACKAGE
    for name, digest in manifest["files"].items():
        path = package / name
        if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            return False
    return True


def _download_sdist(version: str, into: Path) -> Path:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               f"transformers=={version}", "--dest", str(into)]
    result = subprocess.run(command, capture_output=True, text=True)
    archives = sorted(into.glob(f"transformers-{version}.tar.gz"))
    if result.returncode != 0 or not archives:
        raise SuiteUnavailable(
            f"could not download the transformers {version} source distribution (`{' '.join(command[2:])}` "
            f"exited {result.returncode}); the common-test adapter needs it.\n{result.stdout[-2000:]}"
            f"{result.stderr[-3000:]}"
        )
    return archives[0]


def _unpack_mixins(archive: Path, version: str, package: Path) -> dict[str, str]:
    """Extract only the mixin files (as plain files, whatever the archive says) and return their sha256."""
    digests = {}
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for name in MIXIN_FILES:
                member_name = f"transformers-{version}/tests/{name}"
                try:
                    member = tar.getmember(member_name)
                except KeyError:
                    raise SuiteUnavailable(f"{archive.name} has no {member_name}") from None
                if not member.isfile():
                    raise SuiteUnavailable(f"{archive.name}: {member_name} is not a regular file")
                data = tar.extractfile(member).read()
                (package / name).write_bytes(data)
                digests[name] = hashlib.sha256(data).hexdigest()
    except (tarfile.TarError, OSError, EOFError) as err:
        raise SuiteUnavailable(f"{archive}: damaged transformers sdist ({err})") from err
    return digests


def fetch(version: str | None = None) -> Path:
    """Make sure the mixins of transformers ``version`` (default: installed) are cached; return their folder."""
    version = version or installed_version()
    target = suite_dir(version)
    if _is_complete(target, version):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=target.parent))
    try:
        archive = _download_sdist(version, staging / "download")
        package = staging / "suite" / PACKAGE
        package.mkdir(parents=True)
        (package / "__init__.py").write_text(f'"""transformers {version} common test mixins (fetched)."""\n')
        digests = _unpack_mixins(archive, version, package)
        manifest = {"version": version, "sdist_sha256": hashlib.sha256(archive.read_bytes()).hexdigest(),
                    "files": digests}
        (staging / "suite" / MANIFEST).write_text(json.dumps(manifest, indent=2))
        if target.exists() and not _is_complete(target, version):  # half-written or stale: replace it whole
            shutil.rmtree(target)
        try:
            os.replace(staging / "suite", target)
        except OSError:
            if not _is_complete(target, version):  # another run may have finished the same fetch meanwhile
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if not _is_complete(target, version):
        raise SuiteUnavailable(f"{target}: the fetched mixins do not match their manifest")
    return target


# ---------------------------------------------------------------------------------------------------- stand-ins
class _NoExportTests:
    """Stand-in for ``tests/exporters/test_export.py:ExportTesterMixin`` (not in the sdist): adds no tests."""


class _NoGenerationTests:
    """Stand-in for ``tests/generation/test_utils.py:GenerationTesterMixin`` (not in the sdist); CLOOME cannot generate."""


def _url_to_local_path(url: str) -> str:
    """Stand-in for ``utils/fetch_hub_objects_for_ci.py``: no pre-fetched Hub fixtures here, keep the URL."""
    return url


# Stand-in for ``tests/utils/test_configuration_utils.py:config_common_kwargs``: a non-default value for every
# field that every ``PreTrainedConfig`` carries, so ``ConfigTester.check_config_arguments_init`` checks that a
# config stores them.
CONFIG_COMMON_KWARGS = {
    "return_dict": False,
    "output_hidden_states": True,
    "dtype": "float16",
    "chunk_size_feed_forward": 5,
    "architectures": ["CloomeModel"],
    "id2label": {0: "label_a", 1: "label_b"},
    "label2id": {"label_a": 0, "label_b": 1},
    "problem_type": "regression",
}


def _module(name: str, **attributes) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attributes)
    module.__path__ = []  # importable as a package, so that sub-modules resolve
    return module


def _register_stand_ins() -> None:
    stand_ins = {
        f"{PACKAGE}.exporters": {},
        f"{PACKAGE}.exporters.test_export": {"ExportTesterMixin": _NoExportTests},
        f"{PACKAGE}.generation": {},
        f"{PACKAGE}.generation.test_utils": {"GenerationTesterMixin": _NoGenerationTests},
        f"{PACKAGE}.utils": {},
        f"{PACKAGE}.utils.test_configuration_utils": {"config_common_kwargs": CONFIG_COMMON_KWARGS},
        "fetch_hub_objects_for_ci": {"url_to_local_path": _url_to_local_path},
    }
    for name, attributes in stand_ins.items():
        sys.modules.setdefault(name, _module(name, **attributes))


def load(version: str | None = None) -> types.SimpleNamespace:
    """Fetch if needed and import the four mixin modules; ``SuiteUnavailable`` when they cannot be had."""
    folder = fetch(version)
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    _register_stand_ins()
    modules = {name[: -len(".py")]: importlib.import_module(f"{PACKAGE}.{name[: -len('.py')]}") for name in MIXIN_FILES}
    for module in modules.values():
        if not Path(module.__file__).resolve().is_relative_to(folder.resolve()):
            raise SuiteUnavailable(f"{module.__name__} was imported from {module.__file__}, not from {folder}")
    return types.SimpleNamespace(folder=folder, **modules)


if __name__ == "__main__":
    print(fetch())
