"""Refuse an m2g base image whose Python packages cannot carry the pinned m2g.

    python3.7 check-m2g-requirements.py /opt/m2g-src

Dockerfile.m2g runs it on the base's Python before installing m2g. m2g's setup.py imports
m2g, which imports every module of it and so most of its requirements: on a base from before
2022-03-22 that import fails and pip's install fails deep in a traceback. This does the same
import first, from the source folder, and when it fails says why in one message, with every
package that is missing or older than m2g's requirements.txt asks for, and what to build on
instead. Packages that differ from requirements.txt while m2g imports are printed, not
refused: m2g's own image installs requirements.txt and then, among others, nibabel 3.0.0 over
its 3.2.2 (its Dockerfile's last pip line), so the real base differs from it too. Runs on the
base's Python (3.7 in neurodata/m2g) with the standard library and setuptools' pkg_resources.
"""

import os
import re
import sys

import pkg_resources

REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*(?:(==|>=|~=)\s*([^\s;#,]+))?")


def older_than_required(requirements_file):
    """``name version (needs wanted)`` for each package missing or older than asked."""
    found = []
    with open(requirements_file) as f:
        for line in f:
            match = REQUIREMENT.match(line.split("#", 1)[0])
            if not match:
                continue
            name, _, wanted = match.groups()
            try:
                have = pkg_resources.get_distribution(name).version
            except pkg_resources.DistributionNotFound:
                found.append("{} is not installed (needs {})".format(name, wanted or "any version"))
                continue
            if wanted and pkg_resources.parse_version(have) < pkg_resources.parse_version(wanted):
                found.append(f"{name} {have} (needs {wanted})")
    return found


def main():
    source = sys.argv[1]
    requirements_file = os.path.join(source, "requirements.txt")
    differing = older_than_required(requirements_file)
    python = sys.version.split()[0]
    sys.path.insert(0, source)
    try:
        import m2g  # noqa: F401  (what m2g's setup.py does first)
    except Exception as error:  # any failure of the import is the finding
        print(
            "check-m2g-requirements: the pinned m2g cannot be imported with this base's Python {} packages "
            "(its setup.py imports it, so pip would fail the same way): {}: {}. "
            "Missing or older than its requirements.txt: {}. "
            "Build on a neurodata/m2g image from 2022-03-22 or later (container/build-m2g.sh pins the newest by digest), "
            "or pass --build-arg M2G_BASE=<an image with these packages>".format(
                python, type(error).__name__, error, "; ".join(differing) or "none"
            ),
            file=sys.stderr,
        )
        return 1
    if differing:
        print(
            "check-m2g-requirements: m2g imports on this base's Python {}; these differ from its requirements.txt "
            "(as in m2g's own image): {}".format(python, "; ".join(differing))
        )
    print(f"check-m2g-requirements: the pinned m2g imports with this base's Python {python} packages")
    return 0


if __name__ == "__main__":
    sys.exit(main())
