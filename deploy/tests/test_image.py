"""The container image's Dockerfile: every base image pinned by digest, its tag kept beside it,
and the build stage on the toolchain the project is built with."""

from __future__ import annotations

import re
import subprocess

from helmrender import REPO

DOCKERFILE = REPO / "deploy" / "Dockerfile"
FROM = re.compile(r"^FROM\s+(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?\s*$", re.IGNORECASE)
PINNED = re.compile(r"^(?P<name>[a-z0-9./_-]+):(?P<tag>[A-Za-z0-9._-]+)@sha256:(?P<digest>[0-9a-f]{64})$")


def base_images() -> list[str]:
    """The images the FROM lines pull: a FROM naming an earlier stage pulls nothing."""
    stages: set[str] = set()
    images = []
    for line in DOCKERFILE.read_text().splitlines():
        match = FROM.match(line.strip())
        if not match:
            continue
        image, stage = match.groups()
        if image not in stages:
            images.append(image)
        if stage:
            stages.add(stage)
    return images


def test_every_base_image_is_pinned_by_digest_with_its_tag():
    images = base_images()
    assert len(images) == 2, images
    for image in images:
        match = PINNED.match(image)
        assert match, f"{image}: not name:tag@sha256:<64 hex digits>"
        assert "${" not in image, f"{image}: a build argument could swap the pinned image"


def test_the_build_stage_uses_the_toolchain_the_project_builds_with():
    rustc = subprocess.run(["rustc", "--version"], capture_output=True, text=True, check=True).stdout
    minor = re.match(r"rustc (\d+\.\d+)", rustc).group(1)
    rust = [i for i in base_images() if i.startswith("rust:")]
    assert rust, "no rust build stage"
    tag = PINNED.match(rust[0]).group("tag")
    assert tag.startswith(f"{minor}-"), f"{rust[0]}: the machine's toolchain is {minor}"
