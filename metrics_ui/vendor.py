"""Build-time step: fetch the pinned Chart.js with npm into ``metrics_ui/static/vendor/``.

``python -m metrics_ui.vendor`` (run by ``make metrics-ui-install``, hence by ``make
metrics-ui`` and ``make test``, never by ``make install``) asks npm for the package tarball
(``npm pack chart.js@VERSION``), checks it against the pinned integrity hash, and copies out
only the UMD bundle and the licence. The page
loads the bundle from this server, so nothing is fetched at run time. The
directory is not committed; the step does nothing when the pinned version is
already there (``--force`` fetches again).
"""

from __future__ import annotations

import base64
import hashlib
import os
import pathlib
import shutil
import subprocess
import sys
import tarfile
import tempfile

PACKAGE = "chart.js"
VERSION = "4.6.1"
# npm's "integrity" of chart.js-4.6.1.tgz (sha512 of the tarball, base64).
INTEGRITY = "sha512-hJyniucsFmq//EvXYvJ6c6mahPoI3kaxdjVH8awTaJ/fDNWeSqqqArixMJWkWNN6fcYvPU3HneSANFNYtRi61g=="  # noqa: E501
FILE_NAME = "chart.umd.js"
URL_PATH = f"/static/vendor/{FILE_NAME}"
VENDOR_DIR = pathlib.Path(__file__).resolve().parent / "static" / "vendor"
# tarball member -> file in VENDOR_DIR
MEMBERS = {f"package/dist/{FILE_NAME}": FILE_NAME, "package/LICENSE.md": "LICENSE.md"}
STAMP = "VERSION"


class VendorError(Exception):
    """The library could not be installed; the message says why and what to do."""


def installed(vendor_dir: pathlib.Path = VENDOR_DIR) -> bool:
    """Whether the pinned version's files are all in ``vendor_dir``."""
    stamp = vendor_dir / STAMP
    files = [vendor_dir / name for name in MEMBERS.values()]
    return (
        stamp.is_file() and stamp.read_text().strip() == VERSION and all(f.is_file() for f in files)
    )


def integrity_of(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode("ascii")


def unpack(tarball: bytes, vendor_dir: pathlib.Path) -> None:
    """Check ``tarball`` against :data:`INTEGRITY` and write :data:`MEMBERS` into ``vendor_dir``."""
    found = integrity_of(tarball)
    if found != INTEGRITY:
        raise VendorError(f"{PACKAGE}@{VERSION}: tarball integrity {found}, expected {INTEGRITY}")
    vendor_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile() as raw:
        raw.write(tarball)
        raw.seek(0)
        with tarfile.open(fileobj=raw, mode="r:gz") as tar:
            for member, name in MEMBERS.items():
                source = tar.extractfile(member)  # by exact name: nothing else leaves the tarball
                if source is None:
                    raise VendorError(f"{member} is not a file in {PACKAGE}@{VERSION}")
                partial = vendor_dir / f".{name}.partial"
                partial.write_bytes(source.read())
                os.replace(partial, vendor_dir / name)
    (vendor_dir / STAMP).write_text(VERSION + "\n")


def fetch_tarball() -> bytes:
    """``npm pack`` the pinned version into a temporary directory and return its bytes."""
    npm = shutil.which("npm")
    if npm is None:
        raise VendorError("npm is not installed (Debian: apt-get install -y npm)")
    with tempfile.TemporaryDirectory() as tmp:
        result = subprocess.run(
            [npm, "pack", "--silent", f"{PACKAGE}@{VERSION}"],
            cwd=tmp,
            capture_output=True,
            text=True,
            timeout=300,
        )
        tarballs = list(pathlib.Path(tmp).glob("*.tgz"))
        if result.returncode != 0 or len(tarballs) != 1:
            raise VendorError(f"npm pack {PACKAGE}@{VERSION} failed:\n{result.stderr.strip()}")
        return tarballs[0].read_bytes()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args not in ([], ["--force"]):
        print("Usage: python -m metrics_ui.vendor [--force]", file=sys.stderr)
        return 1
    if installed() and not args:
        print(f"{PACKAGE} {VERSION} already in {VENDOR_DIR}")
        return 0
    try:
        unpack(fetch_tarball(), VENDOR_DIR)
    except VendorError as err:
        print(f"Error: {err}", file=sys.stderr)
        return 1
    print(f"Installed {PACKAGE} {VERSION} into {VENDOR_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
