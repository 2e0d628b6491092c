"""Run a Pod template's containers as local processes, the way the kubelet would start them:
the environment from `envFrom` then `env` (later entries win), `$(VAR)` expanded in `env`
values, `command` and `args`, init containers first. Only what the Job manifests use is
modelled; anything else raises, so a manifest that needs more fails loudly instead of running
with a wrong environment.

The expansion follows the kubelet's (third_party/forked/golang/expansion in kubernetes): a
defined `$(VAR)` is replaced, an undefined one stays literal, `$$` is one `$` (so `$$(VAR)` is
the literal `$(VAR)`), and a `$` before anything else, or an unclosed `$(`, stays as written.
https://kubernetes.io/docs/tasks/inject-data-application/define-command-argument-container/
"""

from __future__ import annotations

import base64
import re
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

Obj = dict[str, Any]

# What the kubelet accepts as a variable name from envFrom (the C-identifier-like rule; the
# RelaxedEnvironmentVariableValidation gate of newer releases accepts more); other keys are
# skipped, with an InvalidEnvironmentVariableNames event.
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")


def expand(text: str, env: Mapping[str, str]) -> str:
    """`text` with its `$(VAR)` references expanded from `env`, as the kubelet does."""
    out: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch != "$" or i + 1 == len(text):
            out.append(ch)
            i += 1
            continue
        nxt = text[i + 1]
        if nxt == "$":  # escaped operator
            out.append("$")
            i += 2
        elif nxt == "(":
            close = text.find(")", i + 2)
            if close == -1:  # incomplete reference: kept, scanning resumes after "$("
                out.append("$(")
                i += 2
                continue
            name = text[i + 2 : close]
            out.append(env.get(name, f"$({name})"))
            i = close + 1
        else:
            out.append("$" + nxt)
            i += 2
    return "".join(out)


@dataclass(frozen=True)
class Pod:
    """What a container's environment is resolved from: the Pod's identity and the
    ConfigMaps and Secrets of its namespace, as rendered manifests."""

    namespace: str
    name: str
    configmaps: Mapping[str, Obj] = field(default_factory=dict)
    secrets: Mapping[str, Obj] = field(default_factory=dict)

    def configmap_data(self, name: str) -> dict[str, str] | None:
        obj = self.configmaps.get(name)
        return None if obj is None else {k: str(v) for k, v in (obj.get("data") or {}).items()}

    def secret_data(self, name: str) -> dict[str, str] | None:
        obj = self.secrets.get(name)
        if obj is None:
            return None
        data = {k: base64.b64decode(v).decode() for k, v in (obj.get("data") or {}).items()}
        # The API server folds stringData into data, stringData winning.
        data.update({k: str(v) for k, v in (obj.get("stringData") or {}).items()})
        return data

    def field_value(self, path: str) -> str:
        if path == "metadata.namespace":
            return self.namespace
        if path == "metadata.name":
            return self.name
        raise ValueError(f"fieldRef {path!r} is not modelled by pod_runner")


def _source(pod: Pod, kind: str, ref: Mapping[str, Any]) -> dict[str, str] | None:
    name = ref.get("name", "")
    data = pod.configmap_data(name) if kind == "configMap" else pod.secret_data(name)
    if data is None and not ref.get("optional", False):
        # The kubelet does not start the container (CreateContainerConfigError).
        raise LookupError(f"{kind} {pod.namespace}/{name} not found")
    return data


def container_env(container: Mapping[str, Any], pod: Pod) -> dict[str, str]:
    """The container's variables as the kubelet computes them (no service links: the Job
    sets enableServiceLinks false)."""
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        prefix = source.get("prefix", "")
        if "configMapRef" in source:
            data = _source(pod, "configMap", source["configMapRef"])
        elif "secretRef" in source:
            data = _source(pod, "secret", source["secretRef"])
        else:
            raise ValueError(f"envFrom source {source!r} is not modelled by pod_runner")
        for key, value in (data or {}).items():
            if _ENV_NAME.match(prefix + key):
                env[prefix + key] = value
    for var in container.get("env") or []:
        name = var["name"]
        if var.get("value"):
            # Expanded from the variables defined before it, envFrom's included.
            env[name] = expand(var["value"], env)
            continue
        source = var.get("valueFrom")
        if not source:
            env[name] = ""
        elif "fieldRef" in source:
            env[name] = pod.field_value(source["fieldRef"]["fieldPath"])
        elif "configMapKeyRef" in source or "secretKeyRef" in source:
            kind = "configMap" if "configMapKeyRef" in source else "secret"
            ref = source[f"{kind}KeyRef"]
            data = _source(pod, kind, ref) or {}
            if ref["key"] in data:
                env[name] = data[ref["key"]]
            elif not ref.get("optional", False):
                raise LookupError(f"{kind} {ref.get('name')} has no key {ref['key']!r}")
        else:
            raise ValueError(f"valueFrom {source!r} is not modelled by pod_runner")
    return env


def container_argv(container: Mapping[str, Any], env: Mapping[str, str]) -> list[str]:
    """`command + args`, each expanded. The image's entrypoint is not known here."""
    command = container.get("command")
    if not command:
        raise ValueError(f"container {container.get('name')!r} has no command")
    return [expand(str(a), env) for a in [*command, *(container.get("args") or [])]]


@dataclass(frozen=True)
class Run:
    container: str
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str
    seconds: float


def run_container(
    container: Mapping[str, Any],
    pod: Pod,
    *,
    extra_env: Mapping[str, str],
    timeout: float,
) -> Run:
    """Run one container to its exit. `extra_env` stands for what the node and the image add
    (PATH, HOME, ...); the Pod's own variables win over it, as they do over the image's ENV."""
    env = container_env(container, pod)
    argv = container_argv(container, env)
    started = time.monotonic()
    proc = subprocess.run(
        argv,
        env={**extra_env, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    return Run(
        container=str(container.get("name")),
        argv=argv,
        returncode=proc.returncode,
        stdout=proc.stdout,
        stderr=proc.stderr,
        seconds=time.monotonic() - started,
    )
