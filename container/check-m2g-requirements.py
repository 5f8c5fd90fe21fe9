"""Refuse an m2g base image whose Python packages are older than the pinned m2g needs.

    python3.7 check-m2g-requirements.py /opt/m2g-src/requirements.txt

Dockerfile.m2g runs it before installing m2g: m2g's setup.py imports m2g, which imports its
requirements, so on a base from before 2022-03-22 the install would fail deep in an import
(or m2g would run on packages it was never tested with). This names every package that is
missing or older than m2g's requirements.txt asks for, and what to build on instead. A newer
version passes: m2g's own images upgrade some of them. Runs on the base's Python (3.7 in
neurodata/m2g), with the standard library and setuptools' pkg_resources only.
"""

import re
import sys

import pkg_resources

REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:(==|>=|~=)\s*([^\s;#]+))?")


def problems(requirements_file):
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
    requirements_file = sys.argv[1]
    found = problems(requirements_file)
    if found:
        print(
            "check-m2g-requirements: this base's Python {} packages are older than the pinned m2g needs ({}): {}. "
            "Build on a neurodata/m2g image from 2022-03-22 or later (container/build-m2g.sh pins the newest by digest), "
            "or pass --build-arg M2G_BASE=<an image with these packages>".format(
                sys.version.split()[0], requirements_file, "; ".join(found)
            ),
            file=sys.stderr,
        )
        return 1
    print(f"check-m2g-requirements: the base has every package {requirements_file} asks for, at its version or newer")
    return 0


if __name__ == "__main__":
    sys.exit(main())
