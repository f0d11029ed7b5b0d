"""The Java half of machida-flink: compiled from ``java/`` against the installed Flink jars.

The ingress source (FLIP-27), the framed socket sink and the key placement
helper are Java classes; no jar is committed. ``python -m machida_flink.jar``
(run by ``make flink-install``) compiles them with ``javac --release 11``
against the jars inside the installed ``apache-flink`` wheel and packs
``build/flink/machida-flink.jar``; :func:`ensure` rebuilds it when a source is
newer, so a checkout that changed a Java file never runs a stale jar.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ROOT / "java"
JAR = Path(os.environ.get("MACHIDA_FLINK_JAR", ROOT / "build" / "flink" / "machida-flink.jar"))


class JarError(Exception):
    """The Java classes cannot be found or built; the message says what to do."""


def flink_home() -> Path:
    """The Flink distribution inside the installed ``apache-flink`` wheel."""
    try:
        import pyflink
    except ImportError:
        raise JarError(
            "apache-flink is not installed in this environment; run `make flink-install`"
        ) from None
    return Path(pyflink.__file__).resolve().parent


def _sources() -> list[Path]:
    return sorted(SOURCES.rglob("*.java"))


def stale() -> bool:
    sources = _sources()
    if not JAR.exists():
        return True
    built = JAR.stat().st_mtime
    return any(source.stat().st_mtime > built for source in sources)


def build() -> Path:
    """Compile the sources and pack the jar; returns its path."""
    sources = _sources()
    if not sources:
        raise JarError(f"no Java sources under {SOURCES}; machida-flink needs its java/ directory")
    javac, jar = shutil.which("javac"), shutil.which("jar")
    if javac is None or jar is None:
        raise JarError("javac and jar are needed (Debian: apt-get install openjdk-17-jdk-headless)")
    home = flink_home()
    classpath = os.pathsep.join([str(home / "lib" / "*"), str(home / "opt" / "*")])
    JAR.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as classes:
        compile_cmd = [javac, "--release", "11", "-nowarn", "-cp", classpath, "-d", classes]
        done = subprocess.run([*compile_cmd, *map(str, sources)], capture_output=True, text=True)
        if done.returncode != 0:
            raise JarError(f"javac failed:\n{done.stdout}{done.stderr}")
        packed = JAR.with_suffix(".tmp")
        done = subprocess.run([jar, "cf", str(packed), "-C", classes, "."], capture_output=True)
        if done.returncode != 0:
            raise JarError(f"jar failed: {done.stderr.decode(errors='replace')}")
        packed.replace(JAR)
    return JAR


def ensure() -> Path:
    """The jar, built first if it is missing or older than a source."""
    if stale():
        print(f"machida-flink: compiling {SOURCES} into {JAR}", file=sys.stderr, flush=True)
        build()
    return JAR


def main() -> int:
    try:
        print(build())
    except JarError as err:
        print(f"Error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
