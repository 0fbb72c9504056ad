"""The cache of base images: pull, list, remove, prune."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING

from orchestrator.progress import Reporter

from .vms import EventCallback

if TYPE_CHECKING:
    from orchestrator.guest.images import ImageInfo


async def pull(
    sources: Mapping[str, str | None], *, force: bool = False, on_event: EventCallback | None = None
) -> None:
    """Fetch the images ({URL: checksum or None}) into the cache, in parallel; each one's
    progress comes as Transfer events. ImageError listing those that could not be pulled."""
    from orchestrator.guest.images import ImageError
    from orchestrator.guest.pull import pull as pull_all

    failures = await pull_all(sources, force=force, report=Reporter(on_event))
    if failures:
        lines = "".join(f"\n  {url}: {why}" for url, why in failures.items())
        raise ImageError(f"{len(failures)} of {len(sources)} images could not be pulled:{lines}")


def images() -> list[ImageInfo]:
    """The cached images: name, size, format, source, last use, the VM disks built on them."""
    from orchestrator.guest.images import list_images

    return list_images()


def remove_image(key: str, *, force: bool = False) -> ImageInfo:
    """Remove a cached image, by name (as `images` has it) or URL; refused while VM disks are
    built on it, unless ``force``."""
    from orchestrator.guest.images import find_image
    from orchestrator.guest.images import remove_image as remove

    info = find_image(key)
    remove(info, force=force)
    return info


def prune_images(*, keep: Collection[str] = (), dry_run: bool = False) -> list[ImageInfo]:
    """Remove the cached images no VM disk is built on, but those of the sources in ``keep``;
    returns them (with ``dry_run``, only says which)."""
    from orchestrator.guest.images import list_images, prune

    if dry_run:
        return [i for i in list_images() if not i.in_use_by and i.source not in keep]
    return prune(keep=keep)
