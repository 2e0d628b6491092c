"""Per-app settings from a Deployment's `cache-buster.io/*` annotations.

Pure functions over the raw Deployment dict (no Kubernetes client models), stdlib only. Every
value grammar (probe URLs, host names, label values, zone ids) is `sidecar.core.grammar`'s, the
one the reporter uses too. A bad annotation is one `AnnotationError` naming the Deployment and
the annotation; the aggregator reports it for that app and goes on with the others
(docs/architecture.md, guarantee 5).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sidecar.core.grammar import (
    ANNOTATION_PREFIX,
    DISTRIBUTION_ID_HINT,
    DURATION_HINT,
    LABEL_VALUE_HINT,
    Probe,
    is_distribution_id,
    is_label_value,
    parse_cache_tag,
    parse_domain,
    parse_duration,
    parse_probe,
    parse_version_url,
    parse_zone_id,
)
from sidecar.core.images import ImageRefError, parse_image

__all__ = [
    "AnnotationError",
    "AppConfig",
    "Probe",
    "app_config",
    "parse_domain",
    "parse_probe",
    "parse_version_url",
]

PREFIX = ANNOTATION_PREFIX
NAME = PREFIX + "name"
DOMAINS = PREFIX + "domains"
PATHS = PREFIX + "paths"
PROVIDER = PREFIX + "provider"
DISTRIBUTION_ID = PREFIX + "distribution-id"
ZONE = PREFIX + "zone"
CONTAINER = PREFIX + "container"
WEBHOOKS = PREFIX + "webhooks"
PURGE_ON_ROLLBACK = PREFIX + "purge-on-rollback"
WAIT_FOR_OLD_PODS = PREFIX + "wait-for-old-pods"
OLD_PODS_TIMEOUT = PREFIX + "old-pods-timeout"
CLOUDFLARE_PURGE = PREFIX + "cloudflare-purge"
CLOUDFLARE_TAGS = PREFIX + "cloudflare-tags"
# On the pod template (the reporter reads them through the Downward API).
PROBE = PREFIX + "probe"
VERSION_URL = PREFIX + "version-url"

DEPLOYMENT_ANNOTATIONS = (
    NAME,
    DOMAINS,
    PATHS,
    PROVIDER,
    DISTRIBUTION_ID,
    ZONE,
    CONTAINER,
    WEBHOOKS,
    PURGE_ON_ROLLBACK,
    WAIT_FOR_OLD_PODS,
    OLD_PODS_TIMEOUT,
    CLOUDFLARE_PURGE,
    CLOUDFLARE_TAGS,
)
POD_TEMPLATE_ANNOTATIONS = (PROBE, VERSION_URL)

# Known provider names; some may not be implemented yet (the aggregator reports that).
PROVIDERS = ("cloudfront", "cloudflare", "fastly", "http")
DEFAULT_PROVIDER = "cloudfront"
DEFAULT_PATHS = ("/*",)
# CloudFront accepts at most 3000 paths per invalidation.
MAX_PATHS = 3000
NO_WEBHOOKS = "none"
# `cloudflare-purge`: what a Cloudflare purge names (unset: files for exact paths, prefixes for
# `/dir/*`, hosts for `/*`).
CLOUDFLARE_PURGE_MODES = ("files", "prefixes", "hosts", "tags", "everything")
# `wait-for-old-pods`: how long past kubectl's verdict we wait for old pods to go.
DEFAULT_OLD_PODS_TIMEOUT = 300.0

_HOOK_NAME = re.compile(r"^[^\s,]+$")


class AnnotationError(ValueError):
    """`deployment shop/web: annotation cache-buster.io/paths: "index.html" must start with "/"`"""

    def __init__(self, annotation: str, message: str, *, deployment: str = "") -> None:
        self.annotation = annotation
        self.message = message
        self.deployment = deployment
        super().__init__(self._text())

    def _text(self) -> str:
        parts = []
        if self.deployment:
            parts.append(f"deployment {self.deployment}")
        if self.annotation:
            parts.append(f"annotation {self.annotation}")
        parts.append(self.message)
        return ": ".join(parts)

    def for_deployment(self, deployment: str) -> AnnotationError:
        return AnnotationError(self.annotation, self.message, deployment=deployment)


@dataclass(frozen=True)
class AppConfig:
    namespace: str
    deployment: str
    # The app key: the same on every cluster of the group.
    app: str
    # The watched container and its image as the pod template has it.
    container: str
    image: str
    # Empty: derived later from the Ingress named like the Deployment (the Go worker's
    # rule) or the Ingresses of the Services selecting the app (sidecar.core.domains).
    domains: tuple[str, ...] = ()
    paths: tuple[str, ...] = DEFAULT_PATHS
    provider: str = DEFAULT_PROVIDER
    distribution_id: str | None = None
    zone: str | None = None
    # Cloudflare only: one of CLOUDFLARE_PURGE_MODES (None: what each path needs), and the
    # cache tags `tags` purges.
    cloudflare_purge: str | None = None
    cloudflare_tags: tuple[str, ...] = ()
    # Extra hook names from the webhooks config, or ("none",) to turn every hook off.
    webhooks: tuple[str, ...] = ()
    purge_on_rollback: bool = False
    # Opt-in: after kubectl's verdict, also wait until no pod of an older ReplicaSet is live
    # (a draining old pod can re-cache the old version), at most `old_pods_timeout` seconds.
    wait_for_old_pods: bool = False
    old_pods_timeout: float = DEFAULT_OLD_PODS_TIMEOUT
    # Pod template annotations (sidecar mode), validated here so errors are reported once.
    probe: Probe | None = None
    version_url: str | None = None
    # `cache-buster.io/*` annotations nobody reads: most likely typos, worth a warning.
    unknown_annotations: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.deployment}"

    @property
    def webhooks_disabled(self) -> bool:
        return self.webhooks == (NO_WEBHOOKS,)


def _deployment_ref(deployment: Mapping[str, Any]) -> str:
    meta = deployment.get("metadata") or {}
    return f"{meta.get('namespace') or 'default'}/{meta.get('name') or '?'}"


def _annotations(obj: Mapping[str, Any] | None) -> Mapping[str, Any]:
    meta = (obj or {}).get("metadata") or {}
    annotations = meta.get("annotations") or {}
    return annotations if isinstance(annotations, Mapping) else {}


def _containers(deployment: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    template = (deployment.get("spec") or {}).get("template") or {}
    containers = (template.get("spec") or {}).get("containers") or []
    return [c for c in containers if isinstance(c, Mapping)]


def _pick_container(deployment: Mapping[str, Any], name: str | None) -> Mapping[str, Any]:
    containers = _containers(deployment)
    if not containers:
        raise AnnotationError("", "the pod template has no containers")
    if name is None:
        return containers[0]
    for c in containers:
        if c.get("name") == name:
            return c
    names = ", ".join(str(c.get("name")) for c in containers)
    raise AnnotationError(
        CONTAINER, f"no container {json.dumps(name)} in the pod template ({names})"
    )


def _list(annotation: str, value: str) -> list[str]:
    items = [item.strip() for item in value.split(",")]
    items = [item for item in items if item]
    if not items:
        raise AnnotationError(annotation, "is empty; remove it to use the default")
    # Order kept, repeats dropped.
    return list(dict.fromkeys(items))


def _paths(value: str) -> tuple[str, ...]:
    paths = _list(PATHS, value)
    for p in paths:
        if not p.startswith("/"):
            raise AnnotationError(PATHS, f'{json.dumps(p)} must start with "/"')
        if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in p):
            raise AnnotationError(PATHS, f"{json.dumps(p)} contains whitespace or control chars")
        # CloudFront's rule, the strictest of the CDNs: a wildcard only as the last character.
        if "*" in p[:-1]:
            raise AnnotationError(PATHS, f'{json.dumps(p)}: "*" is allowed only at the end')
    if len(paths) > MAX_PATHS:
        raise AnnotationError(PATHS, f"{len(paths)} paths; at most {MAX_PATHS} per purge")
    return tuple(paths)


def _bool(annotation: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered == "true":
        return True
    if lowered == "false":
        return False
    raise AnnotationError(annotation, f'expected "true" or "false"; got {json.dumps(value)}')


def _cloudflare(ann: Mapping[str, str], provider: str) -> tuple[str | None, tuple[str, ...]]:
    """`cloudflare-purge` and `cloudflare-tags`: tags alone mean `tags`; `tags` needs tags."""
    for key in (CLOUDFLARE_PURGE, CLOUDFLARE_TAGS):
        if key in ann and provider != "cloudflare":
            raise AnnotationError(
                key,
                f'applies only to provider "cloudflare" (this app\'s is "{provider}"; set '
                f"{PROVIDER}: cloudflare)",
            )
    mode = None
    if CLOUDFLARE_PURGE in ann:
        mode = ann[CLOUDFLARE_PURGE].strip().lower()
        if mode not in CLOUDFLARE_PURGE_MODES:
            raise AnnotationError(
                CLOUDFLARE_PURGE,
                f"{json.dumps(ann[CLOUDFLARE_PURGE])} is not one of "
                f"{', '.join(CLOUDFLARE_PURGE_MODES)}",
            )
    tags: tuple[str, ...] = ()
    if CLOUDFLARE_TAGS in ann:
        try:
            tags = tuple(
                dict.fromkeys(
                    parse_cache_tag(t) for t in _list(CLOUDFLARE_TAGS, ann[CLOUDFLARE_TAGS])
                )
            )
        except AnnotationError:
            raise
        except ValueError as e:
            raise AnnotationError(CLOUDFLARE_TAGS, str(e)) from None
        if mode is None:
            mode = "tags"
        elif mode != "tags":
            raise AnnotationError(
                CLOUDFLARE_TAGS, f'applies only with {CLOUDFLARE_PURGE}: tags (it is "{mode}")'
            )
    if mode == "tags" and not tags:
        raise AnnotationError(
            CLOUDFLARE_PURGE, f'"tags" needs the tags to purge in {CLOUDFLARE_TAGS}'
        )
    return mode, tags


def app_config(deployment: Mapping[str, Any]) -> AppConfig:
    """Validate a Deployment's annotations. Raises AnnotationError for the first bad one."""
    ref = _deployment_ref(deployment)
    try:
        return _app_config(deployment)
    except AnnotationError as e:
        raise e.for_deployment(ref) from None


def _app_config(deployment: Mapping[str, Any]) -> AppConfig:
    meta = deployment.get("metadata") or {}
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        raise AnnotationError("", "the Deployment has no name")
    namespace = meta.get("namespace") or "default"
    raw = _annotations(deployment)
    ann: dict[str, str] = {}
    for key, value in raw.items():
        if isinstance(key, str) and key.startswith(PREFIX):
            if not isinstance(value, str):
                raise AnnotationError(key, "expected a string value")
            ann[key] = value

    app = name
    if NAME in ann:
        app = ann[NAME].strip()
        if not (app and is_label_value(app)):
            raise AnnotationError(NAME, f"{json.dumps(ann[NAME])} must be {LABEL_VALUE_HINT}")

    domains: tuple[str, ...] = ()
    if DOMAINS in ann:
        try:
            domains = tuple(dict.fromkeys(parse_domain(d) for d in _list(DOMAINS, ann[DOMAINS])))
        except ValueError as e:
            if isinstance(e, AnnotationError):
                raise
            raise AnnotationError(DOMAINS, str(e)) from None

    paths = _paths(ann[PATHS]) if PATHS in ann else DEFAULT_PATHS

    provider = DEFAULT_PROVIDER
    if PROVIDER in ann:
        provider = ann[PROVIDER].strip().lower()
        if provider not in PROVIDERS:
            raise AnnotationError(
                PROVIDER, f"{json.dumps(ann[PROVIDER])} is not one of {', '.join(PROVIDERS)}"
            )

    distribution_id = None
    if DISTRIBUTION_ID in ann:
        distribution_id = ann[DISTRIBUTION_ID].strip()
        if not is_distribution_id(distribution_id):
            raise AnnotationError(
                DISTRIBUTION_ID,
                f"{json.dumps(ann[DISTRIBUTION_ID])} is not a CloudFront distribution id "
                f"({DISTRIBUTION_ID_HINT})",
            )

    zone = None
    if ZONE in ann:
        try:
            zone = parse_zone_id(ann[ZONE])
        except ValueError as e:
            raise AnnotationError(ZONE, f"{json.dumps(ann[ZONE])} {e}") from None

    cloudflare_purge, cloudflare_tags = _cloudflare(ann, provider)

    container_name = ann[CONTAINER].strip() if CONTAINER in ann else None
    if container_name == "":
        raise AnnotationError(CONTAINER, "is empty; remove it to watch the first container")
    container = _pick_container(deployment, container_name)
    image = container.get("image")
    cname = container.get("name")
    if not isinstance(image, str) or not image or not isinstance(cname, str):
        raise AnnotationError("", f"container {cname} has no image")
    try:
        parse_image(image)
    except ImageRefError as e:
        # Reported once as the app's configuration error (docs/architecture.md, guarantee 5).
        raise AnnotationError("", f"container {cname}: {e}") from None

    webhooks: tuple[str, ...] = ()
    if WEBHOOKS in ann:
        names = _list(WEBHOOKS, ann[WEBHOOKS])
        if any(n.lower() == NO_WEBHOOKS for n in names):
            if len(names) > 1:
                raise AnnotationError(WEBHOOKS, f'"{NO_WEBHOOKS}" cannot be combined with names')
            webhooks = (NO_WEBHOOKS,)
        else:
            for n in names:
                if not _HOOK_NAME.match(n):
                    raise AnnotationError(WEBHOOKS, f"{json.dumps(n)} is not a webhook name")
            webhooks = tuple(names)

    purge_on_rollback = (
        _bool(PURGE_ON_ROLLBACK, ann[PURGE_ON_ROLLBACK]) if PURGE_ON_ROLLBACK in ann else False
    )

    wait_for_old_pods = (
        _bool(WAIT_FOR_OLD_PODS, ann[WAIT_FOR_OLD_PODS]) if WAIT_FOR_OLD_PODS in ann else False
    )
    old_pods_timeout = DEFAULT_OLD_PODS_TIMEOUT
    if OLD_PODS_TIMEOUT in ann:
        try:
            old_pods_timeout = parse_duration(ann[OLD_PODS_TIMEOUT])
        except ValueError:
            raise AnnotationError(
                OLD_PODS_TIMEOUT, f"{json.dumps(ann[OLD_PODS_TIMEOUT])} is not {DURATION_HINT}"
            ) from None

    template_ann = _annotations((deployment.get("spec") or {}).get("template"))
    probe = None
    if isinstance(template_ann.get(PROBE), str):
        try:
            probe = parse_probe(template_ann[PROBE])
        except ValueError as e:
            raise AnnotationError(f"{PROBE} (pod template)", str(e)) from None
    version_url = None
    if isinstance(template_ann.get(VERSION_URL), str):
        try:
            if parse_version_url(template_ann[VERSION_URL]) is not None:
                version_url = template_ann[VERSION_URL].strip()
        except ValueError as e:
            raise AnnotationError(f"{VERSION_URL} (pod template)", str(e)) from None

    known = set(DEPLOYMENT_ANNOTATIONS)
    unknown = tuple(sorted(k for k in ann if k not in known))

    return AppConfig(
        namespace=namespace,
        deployment=name,
        app=app,
        container=cname,
        image=image,
        domains=domains,
        paths=paths,
        provider=provider,
        distribution_id=distribution_id,
        zone=zone,
        cloudflare_purge=cloudflare_purge,
        cloudflare_tags=cloudflare_tags,
        webhooks=webhooks,
        purge_on_rollback=purge_on_rollback,
        wait_for_old_pods=wait_for_old_pods,
        old_pods_timeout=old_pods_timeout,
        probe=probe,
        version_url=version_url,
        unknown_annotations=unknown,
    )
