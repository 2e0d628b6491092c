"""The aggregator: watches Deployments and ReplicaSets (and, in sidecar mode, the pods'
reports), and executes what `sidecar.core.decision.decide` says, for one namespace.

A thin facade: it builds the collaborators, each with what it needs, and runs their threads
(docs/architecture.md, "Threads and state ownership"). One reflector per resource and the
report subscriber keep caches current and only mark apps dirty (`OwnershipIndex` maps what
changed to its Deployment); one evaluator thread decides and writes the ledger (`Evaluator`);
every purge runs in a thread of its own (`PurgeRunner`), so one app's waits (CloudFront
`Completed`, throttling backoff) never delay another app; `Notifier` sends the webhooks. All
replicas watch (a standby's caches are warm); only the leader decides, and a purge re-checks
leadership right before the CDN call.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import redis
from kubernetes import client as k8s

from sidecar.aggregator.evaluator import Evaluator, WorkQueue
from sidecar.aggregator.events import LogEvent
from sidecar.aggregator.index import OwnershipIndex
from sidecar.aggregator.metrics import Metrics
from sidecar.aggregator.notifier import Notifier
from sidecar.aggregator.options import AggregatorOptions
from sidecar.aggregator.peers import GroupMembers
from sidecar.aggregator.purge import DomainSource, GroupRole, PurgeRunner
from sidecar.aggregator.reports import ReportCache
from sidecar.config import MODES
from sidecar.core.annotations import AppConfig
from sidecar.core.annotations import app_config as default_app_config
from sidecar.core.group import CLAIM_LEASES, claim_holder
from sidecar.kube.leader import LeaderElector
from sidecar.kube.ledger import Ledger
from sidecar.kube.reflector import Reflector, trim_deployment, trim_pod, trim_replicaset
from sidecar.logs import get_logger
from sidecar.providers.base import Provider
from sidecar.webhooks.sender import WebhookSender

log = get_logger("aggregator")

Obj = dict[str, Any]

# The ledger annotation that keeps the group's learned member names (endpoint -> name).
MEMBERS_ANNOTATION = "cache-buster.io/group-members"


def _known_names(ledger: Ledger) -> dict[str, str]:
    try:
        ledger.load()
        doc = json.loads(ledger.annotation(MEMBERS_ANNOTATION) or "{}")
    except Exception as exc:  # unreadable: learned again from the peers' heartbeats
        log.warning("group.names_unreadable", error=str(exc)[:200])
        return {}
    return {str(k): str(v) for k, v in doc.items()} if isinstance(doc, dict) else {}


class Aggregator:
    def __init__(
        self,
        options: AggregatorOptions,
        api_client: k8s.ApiClient,
        *,
        providers: Mapping[str, Provider],
        app_config: Callable[[Obj], AppConfig] = default_app_config,
        webhooks: WebhookSender | None = None,
        redis_client: redis.Redis | None = None,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
        peers: Sequence[tuple[str, redis.Redis]] = (),
        local_endpoint: str = "local",
    ) -> None:
        """`peers`: the cluster group's other members, (endpoint as shown, client); empty:
        single-cluster mode. A group needs `redis_client` (this cluster's Redis) in either
        mode, as the Go worker did."""
        if options.mode not in MODES:
            raise ValueError(f"unknown mode {options.mode!r}")
        if options.mode == "sidecar" and redis_client is None:
            raise ValueError("sidecar mode needs the cluster's Redis for the pods' reports")
        if peers and redis_client is None:
            raise ValueError("a cluster group needs this cluster's Redis (REDIS_HOST)")
        self.options = options
        self.metrics = metrics or Metrics()
        ns = options.namespace
        apps_api = k8s.AppsV1Api(api_client)
        core_api = k8s.CoreV1Api(api_client)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._queue = WorkQueue(self._stop, clock)
        self._index = OwnershipIndex()
        self.ledger = Ledger(core_api, ns, options.ledger_name)
        self.deployments = Reflector(
            "deployments",
            apps_api.list_namespaced_deployment,
            ns,
            trim=trim_deployment,
            on_event=self._on_deployment,
            label_selector=options.label_selector,
            watch_timeout=options.watch_timeout,
        )
        # ReplicaSets carry the template's labels, not the Deployment's opt-in label, so they
        # are watched namespace-wide and matched to Deployments by owner uid.
        self.replicasets = Reflector(
            "replicasets",
            apps_api.list_namespaced_replica_set,
            ns,
            trim=trim_replicaset,
            on_event=self._on_replicaset,
            watch_timeout=options.watch_timeout,
        )
        # Pods bind reports to real pods (sidecar mode) and show old pods draining (the
        # `wait-for-old-pods` opt-in): watched namespace-wide, trimmed to name, uid, template
        # hash and deletion timestamp. In watcher mode only once an app opts in.
        self.pods = Reflector(
            "pods",
            core_api.list_namespaced_pod,
            ns,
            trim=trim_pod,
            on_event=self._on_pod,
            watch_timeout=options.watch_timeout,
        )
        self._pods_started = threading.Lock()
        self._pods_running = False
        self.reports: ReportCache | None = None
        if options.mode == "sidecar" and redis_client is not None:
            self.reports = ReportCache(redis_client, ns, self._on_report)
        self.elector = LeaderElector(
            k8s.CoordinationV1Api(api_client),
            ns,
            options.lease_name,
            options.identity,
            lease_duration=options.lease_duration,
            renew_deadline=options.renew_deadline,
            retry_period=options.retry_period,
            on_started_leading=self._on_started_leading,
            on_stopped_leading=self._on_stopped_leading,
        )
        self.group: GroupMembers | None = None
        group_role: GroupRole | None = None
        if peers and redis_client is not None:
            self.group = GroupMembers(
                group=options.group,
                cluster=options.cluster,
                instance=options.instance,
                namespace=ns,
                local=(local_endpoint, redis_client),
                peers=peers,
                on_change=self._on_group_change,
                known_names=_known_names(self.ledger),
                on_learned=self._keep_names,
                clock=clock,
                claim_lease=CLAIM_LEASES * options.lease_duration,
            )
            group_role = GroupRole(
                members=self.group,
                group=options.group,
                holder=claim_holder(options.cluster, options.instance),
                # Longer than a leader hand-over inside the cluster (a lease, then a retry):
                # the successor continues its predecessor's claim (same holder) before
                # another cluster may take it over.
                lease=CLAIM_LEASES * options.lease_duration,
            )
        notifier = Notifier(
            webhooks,
            namespace=ns,
            cluster=options.cluster,
            group=options.group,
            ledger=self.ledger,
            metrics=self.metrics,
            stop=self._stop,
        )
        self._runner = PurgeRunner(
            namespace=ns,
            cluster=options.cluster,
            providers=providers,
            domains=DomainSource(k8s.NetworkingV1Api(api_client), core_api, ns),
            ledger=self.ledger,
            notifier=notifier,
            metrics=self.metrics,
            mark=self._queue.mark,
            leading_for=self.elector.leading_for,
            stop=self._stop,
            clock=clock,
            invalidation_timeout=options.invalidation_timeout,
            retry_max=options.purge_retry_max,
            renew_deadline=options.renew_deadline,
            retry_period=options.retry_period,
            group=group_role,
            guard=options.guard,
        )
        self._evaluator = Evaluator(
            options,
            queue=self._queue,
            index=self._index,
            deployments=self.deployments,
            replicasets=self.replicasets,
            pods=self._pods_view,
            reports=self.reports,
            ledger=self.ledger,
            app_config=app_config,
            runner=self._runner,
            notifier=notifier,
            metrics=self.metrics,
            is_leader=self.is_leader,
            wait_synced=self.wait_synced,
            stop=self._stop,
            clock=clock,
            group=self.group,
        )

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> Aggregator:
        log.info(
            LogEvent.STARTING,
            namespace=self.options.namespace,
            mode=self.options.mode,
            cluster=self.options.cluster,
            group=self.options.group,
            identity=self.options.identity,
            selector=self.options.label_selector,
        )
        self.deployments.start()
        self.replicasets.start()
        if self.options.mode == "sidecar":
            self._start_pod_watch()
        if self.reports is not None:
            self.reports.start()
        if self.group is not None:
            self.group.start()
        for target, name in ((self._evaluator.run, "evaluator"), (self._elect, "elector")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self, *, release: bool = True) -> None:
        """Stop acting, release the lease (a standby takes over at once), stop watching.
        `release=False` leaves the lease to expire, as a crashed process would."""
        self.elector.release_on_stop = release
        self._stop.set()
        self._queue.wake()
        for thread in self._threads:
            thread.join(timeout=10)
        self._runner.flights.join(timeout=10)
        self.deployments.stop()
        self.replicasets.stop()
        self.pods.stop()
        if self.reports is not None:
            self.reports.stop()
        if self.group is not None:
            self.group.stop()
        log.info(LogEvent.STOPPED, namespace=self.options.namespace)

    def _start_pod_watch(self) -> None:
        with self._pods_started:
            if not self._pods_running and not self._stop.is_set():
                self._pods_running = True
                log.info("pods.watch_started", namespace=self.options.namespace)
                self.pods.start()

    def _pods_view(self, hashes: set[str]) -> list[Any] | None:
        """The pods of these template hashes; None until the pod watch has listed them
        (started here on first need in watcher mode)."""
        if not self._pods_running:
            self._start_pod_watch()
        if not self.pods.synced.is_set():
            return None
        return self._index.pods_of(hashes)

    def _elect(self) -> None:
        self.elector.run(self._stop)

    def is_leader(self) -> bool:
        return self.elector.is_leader()

    def wait_synced(self, timeout: float = 10.0) -> bool:
        return self.deployments.synced.wait(timeout) and self.replicasets.synced.wait(timeout)

    # -- event handlers (reflector threads: quick, no I/O) ----------------------------------
    def _on_deployment(self, kind: str, obj: Obj) -> None:
        for name in self._index.deployment_event(kind, obj):
            self._queue.mark(name)

    def _on_pod(self, kind: str, obj: Obj) -> None:
        name = self._index.pod_event(kind, obj)
        if name:
            self._queue.mark(name)

    def _on_replicaset(self, kind: str, obj: Obj) -> None:
        name = self._index.replicaset_event(kind, obj)
        if name:
            self._queue.mark(name)

    def _on_report(self, template_hash: str) -> None:
        name = self._index.deployment_of_hash(template_hash)
        if name:
            self._queue.mark(name)

    def _on_group_change(self, app: str | None) -> None:
        """A member's record of `app` changed (None: anything may have): re-evaluate."""
        names = (
            self._index.deployments_of_key(app)
            if app is not None
            else [d["metadata"]["name"] for d in self.deployments.items()]
        )
        for name in names:
            self._queue.mark(name)

    def _keep_names(self, names: dict[str, str]) -> None:
        """Learned member names go to the ledger: the claim place stays known while a peer
        is down, across restarts."""
        if not self.is_leader():
            return
        try:
            self.ledger.set_annotation(MEMBERS_ANNOTATION, json.dumps(names, sort_keys=True))
        except Exception as exc:
            log.warning("group.names_not_kept", error=str(exc)[:200])

    def _on_started_leading(self) -> None:
        self.metrics.leader.set(1)
        self._queue.request_reload()

    def _on_stopped_leading(self) -> None:
        self.metrics.leader.set(0)
