"""`cache-buster wait`'s flags, checked and resolved into one `WaitOptions` before anything
connects: a bad flag is one line naming it (exit status 2)."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

from sidecar.config import SERVICEACCOUNT_NAMESPACE_FILE
from sidecar.core.grammar import DURATION_HINT, is_dns_label, is_dns_subdomain, parse_duration
from sidecar.core.images import ImageRefError, parse_image

DEFAULT_TIMEOUT = "30m"
DEFAULT_NAMESPACE = "default"


class UsageError(ValueError):
    """A bad flag or setting: `str()` is one line, `flag: what is wrong`."""

    def __init__(self, flag: str, message: str) -> None:
        self.flag = flag
        super().__init__(f"{flag}: {message}")


class Match(enum.Enum):
    # The Flux Job pattern compared the strings (jq's `==`): the default.
    EXACT = "exact"
    # sidecar.core.images.same_image: `nginx:1.27` is `docker.io/library/nginx:1.27`.
    NORMALIZED = "normalized"


@dataclass(frozen=True)
class WaitOptions:
    deployment: str
    namespace: str = DEFAULT_NAMESPACE
    # None: the Deployment's `cache-buster.io/container` annotation, else its first container.
    container: str | None = None
    # None: wait for the rollout of whatever the Deployment runs when first seen.
    image: str | None = None
    match: Match = Match.EXACT
    # Seconds bounding the whole wait, the wait for the image included; 0: none.
    timeout: float = 1800.0
    kubeconfig: str | None = None
    # Where `image` came from, for the first line: "--image" or "APP_IMAGE" ("" when none).
    image_source: str = ""


def _read_namespace_file(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip() or None
    except OSError:
        return None


def parse_options(
    *,
    deployment: str | None,
    namespace: str | None = None,
    container: str | None = None,
    image: str | None = None,
    match: str = "exact",
    timeout: str = DEFAULT_TIMEOUT,
    kubeconfig: str | None = None,
    env: Mapping[str, str],
    namespace_file: str = SERVICEACCOUNT_NAMESPACE_FILE,
) -> WaitOptions:
    """Flags first, then the environment (`NAMESPACE`, `APP_IMAGE`, the Flux Job pattern's
    names), then the service account's namespace file. Raises UsageError naming the flag."""
    if deployment is None or not deployment.strip():
        raise UsageError("--deployment", "is required: the name of the Deployment to wait for")
    if not is_dns_subdomain(deployment):
        raise UsageError("--deployment", f"{deployment!r} is not a Kubernetes object name")

    ns_source = "--namespace"
    ns = namespace
    if ns is None:
        ns_source, ns = "NAMESPACE", (env.get("NAMESPACE") or "").strip() or None
    if ns is None:
        ns_source, ns = namespace_file, _read_namespace_file(namespace_file)
    if ns is None:
        ns = DEFAULT_NAMESPACE
    if not is_dns_label(ns):
        raise UsageError(ns_source, f"{ns!r} is not a namespace name")

    if container is not None and not is_dns_label(container):
        raise UsageError("--container", f"{container!r} is not a container name")

    image_source = "--image"
    ref = image
    if ref is None:
        image_source, ref = "APP_IMAGE", (env.get("APP_IMAGE") or "").strip() or None
    if ref is not None:
        try:
            parse_image(ref)
        except ImageRefError as err:
            raise UsageError(image_source, str(err)) from None
    else:
        image_source = ""

    try:
        chosen = Match(match)
    except ValueError:
        raise UsageError("--match", f"expected exact or normalized; got {match!r}") from None

    try:
        seconds = parse_duration(timeout)
    except ValueError:
        raise UsageError(
            "--timeout", f"expected {DURATION_HINT} (0: no timeout); got {timeout!r}"
        ) from None

    return WaitOptions(
        deployment=deployment,
        namespace=ns,
        container=container,
        image=ref,
        match=chosen,
        timeout=seconds,
        kubeconfig=kubeconfig,
        image_source=image_source,
    )
