"""What a scan image holds, laid out in a folder: the pipeline's program (a stand-in with the
real parser, see ``pipeline_facts``), its atlases (small real NIfTI label files under
neuroparc's real names) and the contract ``ndmg-image-contract`` writes at build time,
made by running that command as the Dockerfile does.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import pipeline_facts
from ndmg_cloud.atlases import catalogue
from ndmg_cloud.contract import reference_files

ATLASES = ("AAL", "Desikan", "DesikanKlein", "Yeo-7", "Yeo-7-liberal", "Schaefer400")
M2G_COMMIT = "95d271f748e7d35b8d7feaa1b0112f471be8e514"
NEUROPARC = "neurodata/neuroparc@5a5e7469671e65cb58087c47b69d0edb71dc2966"
BASE = "neurodata/m2g@sha256:" + "0" * 64  # a digest-shaped name: these tests never pull it


def write_nifti(path: Path, labels: int = 4) -> None:
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    data = (np.arange(4 * 4 * 4).reshape(4, 4, 4) % (labels + 1)).astype(np.int16)
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))


def write_lfs_pointer(path: Path) -> None:
    path.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:" + "a" * 64 + "\nsize 58395\n")


def make_atlas_dir(root: Path, names=ATLASES, sizes=("2mm",), pipeline: str = "m2g") -> Path:
    for size in sizes:
        for name in names:
            write_nifti(root / "atlases/label/Human" / catalogue(pipeline).get(name, size).file)
        for rel in reference_files(size):
            write_nifti(root / rel, labels=1)
    return root


@dataclass
class Image:
    bin_dir: Path
    atlas_dir: Path
    contract: Path

    def env(self, **extra: str) -> dict[str, str]:
        """The environment a scan container of this image runs in."""
        return {
            **os.environ,
            "PATH": f"{self.bin_dir}{os.pathsep}{os.environ['PATH']}",
            "NDMG_IMAGE_CONTRACT": str(self.contract),
            "NDMG_ATLAS_DIR": str(self.atlas_dir),
            **extra,
        }


def build_contract(image: Image, code: str = pipeline_facts.M2G_DEPLOY) -> subprocess.CompletedProcess:
    """The Dockerfile's last step: ``ndmg-image-contract`` against the image's program and atlases."""
    command = [
        str(Path(sys.executable).parent / "ndmg-image-contract"),
        "--pipeline", "m2g", "--code-version", "0.3.0", "--revision", M2G_COMMIT,
        "--source", "https://github.com/neurodata/m2g", "--atlas-dir", str(image.atlas_dir),
        "--atlas-source", NEUROPARC, "--base-image", BASE, "--out", str(image.contract),
    ]  # fmt: skip
    env = {**os.environ, "PATH": f"{image.bin_dir}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)


def m2g_image(root: Path, code: str = pipeline_facts.M2G_DEPLOY) -> Image:
    """A built m2g image: stand-in m2g of ``code``, atlases, and its contract (must build)."""
    image = Image(root / "bin", make_atlas_dir(root / "m2g_atlases"), root / "image-contract.json")
    pipeline_facts.install_stand_in(code, image.bin_dir)
    built = build_contract(image)
    assert built.returncode == 0, built.stderr
    return image
