"""Record the largest label of each neuroparc label file in
plugins/ndmg_cloud/core/data/neuroparc-labels.json (``largest_label`` of the m2g entry), read
from the pinned neuroparc tarball (the 2 and 4 mm files: the tarball has no 1 mm ones).

    .venv/bin/python scripts/neuroparc_labels.py [THIRD_PARTY_FOLDER]

tests/test_atlases.py checks the recorded values against the tarball.
"""

from __future__ import annotations

import gzip
import json
import sys
import tarfile
from pathlib import Path

import nibabel as nib
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "plugins/ndmg_cloud/core/data/neuroparc-labels.json"
TARBALL = "neuroparc-5a5e7469-atlases.tar.gz"
LABEL_DIR = "/atlases/label/Human/"


def largest_labels(tarball: Path) -> dict[str, int]:
    """file name -> its largest label value, for every label file in the tarball."""
    found = {}
    with tarfile.open(tarball) as archive:
        for member in archive.getmembers():
            if member.isfile() and LABEL_DIR in member.name and member.name.endswith(".nii.gz"):
                raw = gzip.decompress(archive.extractfile(member).read())  # type: ignore[union-attr]
                image = nib.Nifti1Image.from_bytes(raw)
                found[member.name.rsplit("/", 1)[-1]] = int(np.asanyarray(image.dataobj).max())
    return dict(sorted(found.items()))


def main() -> None:
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT.parent / "shared/third_party"
    data = json.loads(DATA.read_text())
    data["m2g"]["largest_label"] = largest_labels(folder / TARBALL)
    DATA.write_text(json.dumps(data, indent=1) + "\n")
    print(f"{len(data['m2g']['largest_label'])} label files read into {DATA.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
