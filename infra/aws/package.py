"""Build the Lambda deployment package: ``build/livemigrate-lambda.zip`` (``make package``).

The runtime's dependencies are fetched as binary wheels for the Lambda runtime's platform
(``--platform manylinux2014_<arch> --only-binary=:all: --python-version 3.12``), so nothing is
compiled on the build machine and a wheel with C extensions (pydantic-core) matches the runtime
whatever machine builds it. The project's own packages are pure Python and copied as they are.
Usage: ``python infra/aws/package.py [x86_64|arm64]`` (default x86_64, the template's default
``Architecture``).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "build"
PLATFORMS = {"x86_64": "manylinux2014_x86_64", "arm64": "manylinux2014_aarch64"}
PACKAGES = ("livemigrate", "backfill", "stream_consumer")
# Not needed in Lambda: localstack-client serves local runs only, rich the progress bar on a
# terminal (both imported lazily, only there).
LOCAL_ONLY = ("localstack-client", "rich")


def runtime_requirements() -> list[str]:
    """The project's runtime dependencies (pyproject.toml), less the local-only ones."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [d for d in project["dependencies"] if not d.startswith(LOCAL_ONLY)]


def build(arch: str) -> Path:
    if arch not in PLATFORMS:
        raise SystemExit(f"unknown architecture {arch!r}: use one of {', '.join(PLATFORMS)}")
    target = BUILD / "lambda"
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--target", str(target)]
    pip += ["--platform", PLATFORMS[arch], "--implementation", "cp", "--python-version", "3.12"]
    pip += ["--only-binary=:all:", *runtime_requirements()]
    subprocess.run(pip, check=True)
    for name in PACKAGES:
        shutil.copytree(
            ROOT / name, target / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
        )
    out = BUILD / "livemigrate-lambda.zip"
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(target.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                zf.write(path, path.relative_to(target))
    return out


def main() -> None:
    arch = sys.argv[1] if len(sys.argv) > 1 else "x86_64"
    out = build(arch)
    print(f"{out} ({out.stat().st_size / 1e6:.1f} MB, {arch}, python 3.12)")


if __name__ == "__main__":
    main()
