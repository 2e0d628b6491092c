"""The aggregator: watches Deployments and ReplicaSets (and, in sidecar mode, the pods'
reports), and executes what `sidecar.core.decision.decide` says, for one namespace.

Threads: one reflector per resource and the report subscriber keep caches current and only
mark apps dirty; one evaluator thread decides (quick: caches, one ledger write at most); every
purge runs in a thread of its own, so one app's waits (CloudFront `Completed`, throttling
backoff) never delay another app. All replicas watch (a standby's caches are warm); only the
leader decides, and a purge re-checks leadership right before the CDN call.
"""

from __future__ import annotations

import heapq
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import redis
from kubernetes import client as k8s

from sidecar.aggregator.metrics import Metrics
from sidecar.aggregator.reports import ReportCache
from sidecar.core.annotations import AppConfig
from sidecar.core.annotations import app_config as default_app_config
from sidecar.core.decision import Decision, after_failed_purge, after_purge, decide
from sidecar.core.domains import app_domains
from sidecar.core.records import PURGED, AppRecord, Failure, Intent, Settled, idempotency_key
from sidecar.core.rollout import Observation, Phase, Report, observe
from sidecar.kube.leader import LeaderElector
from sidecar.kube.ledger import Ledger
from sidecar.kube.reflector import Reflector, read_json, trim_deployment, trim_replicaset
from sidecar.logs import get_logger
from sidecar.providers.base import Provider, PurgeError, PurgeRequest, PurgeResult
from sidecar.webhooks.sender import WebhookEvent, WebhookSender

log = get_logger("aggregator")

Obj = dict[str, Any]
WEBHOOKS_PENDING = "pending"
WEBHOOKS_DELIVERED = "delivered"


@dataclass(frozen=True)
class AggregatorOptions:
    namespace: str
    mode: str = "watcher"  # "watcher" | "sidecar"
    label_selector: str | None = None
    group: str = "default"
    cluster: str = "local"
    identity: str = "aggregator"
    lease_name: str = "cache-buster-leader"
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0
    ledger_name: str = "cache-buster-ledger"
    invalidation_timeout: float = 600.0
    rollout_timeout: float = 600.0
    report_recheck: float = 5.0  # while a rollout waits only on reports (Redis wiped, ...)
    report_stale_after: float = 15.0  # a report whose last heartbeat is older is ignored
    purge_retry_max: float = 60.0
    watch_timeout: int = 300


@dataclass
class _AppState:
    """Per-Deployment bookkeeping of the evaluator (not durable: the ledger is)."""

    last_reason: str = ""
    config_error: str | None = None
    warned: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())
    timeout_reported: str | None = None  # rollout id whose slowness was reported
    purge_attempts: int = 0
    retry_at: float = 0.0  # no new purge attempt before this (backoff after a retryable error)
    completed_at: dict[str, float] = field(default_factory=dict)  # rollout id -> when seen


@dataclass(frozen=True)
class _Pending:
    """A decision taken for one Deployment, waiting for its ledger write."""

    name: str
    dep: Obj
    cfg: AppConfig
    obs: Observation
    record: AppRecord  # the record the decision was taken on (compare-and-set's expectation)
    decision: Decision
    state: _AppState
    now: float


class _WhileLeading(threading.Event):
    """The `stop` handed to a provider: set once the aggregator stops *or* its leadership
    lapses, so a deposed leader's purge leaves its backoff and polling and makes no further CDN
    call (the successor resumes with the same key). Judged on the elector's clock at every
    wait, not when the elector notices (a retry period or an API timeout later), and `margin`
    early, so a call begun just before the deadline is answered before it."""

    def __init__(self, stop: threading.Event, leading_for: Callable[[], float], margin: float):
        super().__init__()
        self._halt = stop
        self._leading_for = leading_for
        self._margin = margin

    def _lead_left(self) -> float:
        return self._leading_for() - self._margin

    def is_set(self) -> bool:
        return self._halt.is_set() or self._lead_left() <= 0

    def wait(self, timeout: float | None = None) -> bool:
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            lead = self._lead_left()
            if self._halt.is_set() or lead <= 0:
                return True
            left = lead if end is None else min(lead, end - time.monotonic())
            if left <= 0:
                return False
            self._halt.wait(left)


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
    ) -> None:
        if options.mode not in ("watcher", "sidecar"):
            raise ValueError(f"unknown mode {options.mode!r}")
        if options.mode == "sidecar" and redis_client is None:
            raise ValueError("sidecar mode needs the cluster's Redis for the pods' reports")
        self.options = options
        self._providers = providers
        self._app_config = app_config
        self._webhooks = webhooks
        self._clock = clock
        self.metrics = metrics or Metrics()
        self._apps_api = k8s.AppsV1Api(api_client)
        self._core_api = k8s.CoreV1Api(api_client)
        self._net_api = k8s.NetworkingV1Api(api_client)
        ns = options.namespace
        self.ledger = Ledger(self._core_api, ns, options.ledger_name)
        self.deployments = Reflector(
            "deployments",
            self._apps_api.list_namespaced_deployment,
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
            self._apps_api.list_namespaced_replica_set,
            ns,
            trim=trim_replicaset,
            on_event=self._on_replicaset,
            watch_timeout=options.watch_timeout,
        )
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
        self._cond = threading.Condition()
        self._dirty: set[str] = set()
        self._timers: list[tuple[float, str]] = []
        self._reload_ledger = False
        self._apps: dict[str, _AppState] = {}
        self._rs_owner: dict[str, str] = {}  # rs name -> owner deployment uid
        self._rs_by_owner: dict[str, set[str]] = {}  # owner deployment uid -> rs names
        self._by_uid: dict[str, str] = {}  # deployment uid -> name
        self._hash_owner: dict[str, str] = {}  # pod-template-hash -> owner deployment uid
        self._in_flight: dict[str, threading.Thread] = {}  # deployment name -> purge/webhooks
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> Aggregator:
        log.info(
            "aggregator.starting",
            namespace=self.options.namespace,
            mode=self.options.mode,
            cluster=self.options.cluster,
            group=self.options.group,
            identity=self.options.identity,
            selector=self.options.label_selector,
        )
        self.deployments.start()
        self.replicasets.start()
        if self.reports is not None:
            self.reports.start()
        for target, name in ((self._evaluate_loop, "evaluator"), (self._elect, "elector")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self, *, release: bool = True) -> None:
        """Stop acting, release the lease (a standby takes over at once), stop watching.
        `release=False` leaves the lease to expire, as a crashed process would."""
        self.elector.release_on_stop = release
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout=10)
        for thread in list(self._in_flight.values()):
            thread.join(timeout=10)
        self.deployments.stop()
        self.replicasets.stop()
        if self.reports is not None:
            self.reports.stop()
        log.info("aggregator.stopped", namespace=self.options.namespace)

    def _elect(self) -> None:
        self.elector.run(self._stop)

    def is_leader(self) -> bool:
        return self.elector.is_leader()

    def wait_synced(self, timeout: float = 10.0) -> bool:
        return self.deployments.synced.wait(timeout) and self.replicasets.synced.wait(timeout)

    # -- event handlers (reflector threads: quick, no I/O) ----------------------------------
    def _mark(self, name: str, when: float | None = None) -> None:
        with self._cond:
            if when is None:
                self._dirty.add(name)
            else:
                heapq.heappush(self._timers, (when, name))
            self._cond.notify()

    def _on_deployment(self, kind: str, obj: Obj) -> None:
        meta = obj["metadata"]
        if kind == "DELETED":
            self._by_uid.pop(meta.get("uid"), None)
        else:
            self._by_uid[meta.get("uid")] = meta["name"]
        self._mark(meta["name"])

    def _on_replicaset(self, kind: str, obj: Obj) -> None:
        meta = obj["metadata"]
        owner = next(
            (r["uid"] for r in meta.get("ownerReferences") or [] if r.get("controller")), None
        )
        template_hash = (meta.get("labels") or {}).get("pod-template-hash")
        if kind == "DELETED":
            gone = self._rs_owner.pop(meta["name"], None)
            if gone is not None:
                self._rs_by_owner.get(gone, set()).discard(meta["name"])
        elif owner:
            self._rs_owner[meta["name"]] = owner
            self._rs_by_owner.setdefault(owner, set()).add(meta["name"])
            if template_hash:
                self._hash_owner[template_hash] = owner
        name = self._by_uid.get(owner or "")
        if name:
            self._mark(name)

    def _on_report(self, template_hash: str) -> None:
        name = self._by_uid.get(self._hash_owner.get(template_hash, ""))
        if name:
            self._mark(name)

    def _on_started_leading(self) -> None:
        self.metrics.leader.set(1)
        with self._cond:
            self._reload_ledger = True
            self._cond.notify()

    def _on_stopped_leading(self) -> None:
        self.metrics.leader.set(0)

    # -- evaluator --------------------------------------------------------------------------
    def _next_batch(self) -> tuple[set[str], bool]:
        with self._cond:
            while not self._stop.is_set():
                now = self._clock()
                while self._timers and self._timers[0][0] <= now:
                    self._dirty.add(heapq.heappop(self._timers)[1])
                if self._dirty or self._reload_ledger:
                    batch, self._dirty = self._dirty, set()
                    reload, self._reload_ledger = self._reload_ledger, False
                    return batch, reload
                wait = self._timers[0][0] - now if self._timers else None
                self._cond.wait(timeout=wait)
            return set(), False

    def _evaluate_loop(self) -> None:
        while not self._stop.is_set():
            batch, reload = self._next_batch()
            if not self.is_leader():
                continue  # leadership gained later reloads the ledger and re-evaluates all
            if reload:
                try:
                    self.ledger.load()
                except Exception as exc:
                    log.error("ledger.load_failed", error=str(exc)[:300])
                    with self._cond:
                        self._reload_ledger = True
                    self._stop.wait(1.0)
                    continue
                self.wait_synced(timeout=30)
                batch |= {d["metadata"]["name"] for d in self.deployments.items()}
            self._evaluate_batch(batch)

    def _evaluate_batch(self, names: set[str]) -> None:
        """Decide for every dirty app, write all ledger changes in one update, then act on the
        decisions whose record was written (a purge starts only once its intent is durable)."""
        pending: list[_Pending] = []
        apps: set[str] = set()
        for name in sorted(names):
            try:
                item = self._decide(name)
            except Exception as exc:  # one app's bug or API error must not stop the others
                log.exception("app.evaluation_failed", deployment=name, error=str(exc)[:300])
                self._mark(name, self._clock() + 2.0)
                continue
            if item is None:
                continue
            if item.cfg.app in apps:  # two Deployments with one app key: one at a time
                self._mark(name, self._clock() + 0.5)
                continue
            apps.add(item.cfg.app)
            pending.append(item)
        changes = {
            p.cfg.app: (p.record, p.decision.record)
            for p in pending
            if p.decision.record is not None
        }
        try:
            written = self.ledger.compare_and_set_many(changes) if changes else set()
        except Exception as exc:
            log.error("ledger.write_failed", apps=len(changes), error=str(exc)[:300])
            for p in pending:
                self._mark(p.name, self._clock() + 2.0)
            return
        for p in pending:
            if p.decision.record is not None and p.cfg.app not in written:
                log.info("ledger.conflict", app=p.cfg.app, deployment=p.name)
                self._mark(p.name)
                continue
            try:
                self._act(p)
            except Exception as exc:
                log.exception("app.action_failed", deployment=p.name, error=str(exc)[:300])
                self._mark(p.name, self._clock() + 2.0)

    def _reports_for(self, obs: Observation) -> list[Report] | None:
        if self.reports is None:
            return None
        if obs.new_rs_hash is None:
            return []
        try:
            return self.reports.fresh(obs.new_rs_hash, self.options.report_stale_after)
        except redis.RedisError as exc:
            log.warning("reports.unavailable", error=str(exc)[:200])
            return []

    def _decide(self, name: str) -> _Pending | None:
        """What the decision says for one Deployment now (reads caches; Redis in sidecar mode)."""
        dep = self.deployments.get(name)
        state = self._apps.setdefault(name, _AppState())
        if dep is None:
            self._apps.pop(name, None)
            return None
        try:
            cfg = self._app_config(dep)
        except ValueError as exc:  # AnnotationError: one clear error, once, for this app only
            message = str(exc)
            if state.config_error != message:
                state.config_error = message
                log.error("app.config_error", deployment=name, error=message)
                self.metrics.config_errors.labels(app=name).inc()
            return None
        if state.config_error is not None:
            log.info("app.config_fixed", deployment=name)
            state.config_error = None
        self._warn_once(name, cfg, state)

        owned = tuple(self._rs_by_owner.get(dep["metadata"]["uid"], ()))
        rss = [rs for rs in map(self.replicasets.get, owned) if rs is not None]
        obs = observe(dep, rss, container=cfg.container)
        if self.reports is not None and obs.status.complete and obs.desired > 0:
            obs = observe(dep, rss, container=cfg.container, reports=self._reports_for(obs))
        record = self.ledger.get(cfg.app)
        now = self._clock()
        decision = decide(
            group=self.options.group,
            app=cfg.app,
            observation=obs,
            record=record,
            purge_on_rollback=cfg.purge_on_rollback,
            now=now,
        )
        self._log_decision(name, cfg, obs, decision, state)
        return _Pending(name, dep, cfg, obs, record, decision, state, now)

    def _act(self, p: _Pending) -> None:
        """Execute a decision whose ledger record (if any) is written."""
        decision = p.decision
        current = decision.record or p.record
        if decision.failed is not None:
            self._rollout_failed(p.name, p.dep, p.cfg, decision.failed)
        if decision.purge is not None:
            p.state.completed_at.setdefault(decision.purge.rollout_id, p.now)
            self._start_purge(p.name, p.dep, p.cfg, decision.purge)
        elif current.intent is not None:
            self._watch_slow_rollout(p.name, p.dep, p.cfg, current.intent, p.obs, p.state, p.now)
        elif (
            current.settled is not None
            and current.settled.detail.get("webhooks") == WEBHOOKS_PENDING
        ):
            self._start_webhooks(p.name, p.dep, p.cfg, current.settled)

    def _warn_once(self, name: str, cfg: AppConfig, state: _AppState) -> None:
        """Likely typos: unknown `cache-buster.io/*` annotations, hook names not in the file."""
        unknown_hooks = (
            self._webhooks.config.unknown_names(cfg.webhooks) if self._webhooks is not None else []
        )
        warning = (tuple(cfg.unknown_annotations), tuple(unknown_hooks))
        if warning != state.warned and any(warning):
            log.warning(
                "app.config_warning",
                app=cfg.app,
                deployment=name,
                unknown_annotations=list(cfg.unknown_annotations),
                unknown_webhooks=unknown_hooks,
            )
        state.warned = warning

    def _log_decision(
        self, name: str, cfg: AppConfig, obs: Observation, decision: Decision, state: _AppState
    ) -> None:
        if decision.reason == state.last_reason:
            return
        state.last_reason = decision.reason
        intent = (decision.record.intent if decision.record else None) or decision.purge
        log.info(
            "app.evaluated",
            app=cfg.app,
            deployment=name,
            image=obs.image,
            cluster=self.options.cluster,
            rollout=intent.rollout_id if intent else None,
            phase=obs.status.phase.value,
            reason=decision.reason,
        )
        if (
            decision.record is not None
            and decision.record.settled is not None
            and (decision.record.settled.outcome == "baseline")
        ):
            self.metrics.rollouts.labels(app=cfg.app, result="baseline").inc()

    def _watch_slow_rollout(
        self,
        name: str,
        dep: Obj,
        cfg: AppConfig,
        intent: Intent,
        obs: Observation,
        state: _AppState,
        now: float,
    ) -> None:
        deadline = intent.started_at + self.options.rollout_timeout
        if now >= deadline and state.timeout_reported != intent.rollout_id:
            # Reported, never final: the rollout may still complete and then it purges.
            state.timeout_reported = intent.rollout_id
            log.warning(
                "rollout.slow",
                app=cfg.app,
                image=intent.image,
                cluster=self.options.cluster,
                rollout=intent.rollout_id,
                waiting_for=obs.status.message,
                seconds=round(now - intent.started_at, 1),
            )
            self._send_async(
                name,
                self._event(
                    "timeout",
                    name,
                    cfg,
                    intent.image,
                    intent.rollout_id,
                    previous_image=intent.from_image,
                    status="rollout-timeout",
                    reason=obs.status.message,
                ),
                cfg,
            )
        elif now < deadline:
            self._mark(name, deadline)
        if (
            self.reports is not None
            and obs.status.phase is Phase.WAITING
            and obs.status.message.startswith("waiting for pod reports")
        ):
            # Reports can be lost (Redis wiped, pub/sub dropped while disconnected): re-read.
            self._mark(name, now + self.options.report_recheck)

    # -- failed rollouts --------------------------------------------------------------------
    def _rollout_failed(self, name: str, dep: Obj, cfg: AppConfig, failure: Failure) -> None:
        result = "rolled_back" if failure.reason == "rolled back" else "superseded"
        self.metrics.rollouts.labels(app=cfg.app, result=result).inc()
        log.info(
            "rollout.failed",
            app=cfg.app,
            image=failure.image,
            cluster=self.options.cluster,
            rollout=failure.rollout_id,
            reason=failure.reason,
        )
        self._send_async(
            name,
            self._event(
                "failed",
                name,
                cfg,
                failure.image,
                failure.rollout_id,
                status=result,
                reason=failure.reason,
            ),
            cfg,
        )

    def _event(
        self, kind: str, name: str, cfg: AppConfig, image: str, rollout: str, **fields: Any
    ) -> WebhookEvent:
        """A webhook event with what every event of this aggregator carries."""
        return WebhookEvent(
            event=kind,
            app=cfg.app,
            rollout_id=rollout,
            namespace=self.options.namespace,
            deployment=name,
            image=image,
            cluster=self.options.cluster,
            group=self.options.group,
            **fields,
        )

    def _send_async(self, name: str, event: WebhookEvent, cfg: AppConfig) -> None:
        if self._webhooks is None:
            return
        sender = self._webhooks
        thread = threading.Thread(
            target=lambda: self._deliver(sender, event, cfg),
            name=f"webhook-{name}",
            daemon=True,
        )
        thread.start()

    def _deliver(self, sender: WebhookSender, event: WebhookEvent, cfg: AppConfig) -> None:
        for delivery in sender.send(event, extra_names=cfg.webhooks, stop=self._stop):
            self.metrics.webhooks.labels(
                app=cfg.app, hook=delivery.hook, result="ok" if delivery.ok else "failed"
            ).inc()

    # -- purges -----------------------------------------------------------------------------
    def _start_purge(self, name: str, dep: Obj, cfg: AppConfig, intent: Intent) -> None:
        if name in self._in_flight and self._in_flight[name].is_alive():
            return
        state = self._apps.get(name)
        if state is not None and state.retry_at > self._clock():
            self._mark(name, state.retry_at)  # still backing off: any re-evaluation waits too
            return
        thread = threading.Thread(
            target=self._purge, args=(name, dep, cfg, intent), name=f"purge-{name}", daemon=True
        )
        self._in_flight[name] = thread
        thread.start()

    def _resolve_domains(self, dep: Obj, cfg: AppConfig) -> list[str]:
        if cfg.domains or cfg.distribution_id or cfg.zone:
            return list(cfg.domains)
        ns = self.options.namespace
        ingresses = read_json(
            self._net_api.list_namespaced_ingress(ns, _preload_content=False, _request_timeout=10)
        ).get("items", [])
        services = read_json(
            self._core_api.list_namespaced_service(ns, _preload_content=False, _request_timeout=10)
        ).get("items", [])
        return app_domains(dep, (), ingresses, services)

    def _purge(self, name: str, dep: Obj, cfg: AppConfig, intent: Intent) -> None:
        # Leadership lost mid-purge stops it like a shutdown does: the intent stays PURGING.
        halt = _WhileLeading(
            self._stop, self.elector.leading_for, min(1.0, self.options.renew_deadline / 10)
        )
        try:
            self._purge_once(name, dep, cfg, intent, halt)
        finally:
            # Re-evaluate: the image may have changed meanwhile. A lapsing leadership is looked
            # at again a retry period later (the elector renews or steps down), not in a loop.
            self._mark(name, self._clock() + self.options.retry_period if halt.is_set() else None)

    def _purge_once(
        self, name: str, dep: Obj, cfg: AppConfig, intent: Intent, halt: threading.Event
    ) -> None:
        state = self._apps.setdefault(name, _AppState())
        fields = {
            "app": cfg.app,
            "image": intent.image,
            "cluster": self.options.cluster,
            "rollout": intent.rollout_id,
            "provider": cfg.provider,
        }
        try:
            if halt.is_set():
                # The ledger holds the PURGING intent: whoever leads next finishes it.
                log.info("purge.not_leader", **fields)
                return
            provider = self._providers.get(cfg.provider)
            if provider is None:
                raise PurgeError(
                    "ProviderUnavailable",
                    f"provider {cfg.provider!r} is not configured in this aggregator",
                    retryable=False,
                )
            domains = self._resolve_domains(dep, cfg)
            if not domains and not cfg.distribution_id and not cfg.zone:
                raise PurgeError(
                    "NoDomain",
                    "no cache-buster.io/domains annotation, no Ingress named like the "
                    "Deployment and no Ingress routing to its Service",
                    retryable=False,
                )
            request = PurgeRequest(
                app=cfg.app,
                namespace=self.options.namespace,
                rollout_id=intent.rollout_id,
                idempotency_key=idempotency_key(intent.rollout_id),
                domains=tuple(domains),
                paths=tuple(cfg.paths),
                distribution_id=cfg.distribution_id,
                zone=cfg.zone,
            )
            if halt.is_set():  # re-checked right before the CDN call
                log.info("purge.not_leader", **fields)
                return
            seen = state.completed_at.get(intent.rollout_id)
            log.info("purge.requested", domains=list(domains), paths=list(cfg.paths), **fields)
            if seen is not None:
                self.metrics.purge_latency.labels(app=cfg.app).set(self._clock() - seen)
            result = provider.purge(request, timeout=self.options.invalidation_timeout, stop=halt)
            if halt.is_set():
                # Shutting down mid-wait: the PURGING intent stays in the ledger and the next
                # leader resumes with the same key (CloudFront returns this invalidation).
                log.info("purge.handed_over", request_id=result.request_id, **fields)
                return
        except PurgeError as exc:
            if exc.retryable and halt.is_set():
                # Stopped or deposed mid-backoff: not a failed purge (settling it FAILED would
                # lose the rollout); whoever leads next resumes it with the same key.
                log.info("purge.handed_over", error=exc.code, **fields)
                return
            if exc.retryable:
                state.purge_attempts += 1
                delay = min(self.options.purge_retry_max, 2.0 ** min(state.purge_attempts, 6))
                state.retry_at = self._clock() + delay
                log.warning(
                    "purge.retry", error=exc.code, message=exc.message, retry_in=delay, **fields
                )
                self.metrics.purges.labels(
                    app=cfg.app, provider=cfg.provider, outcome="retry"
                ).inc()
                self._mark(name, self._clock() + delay)
                return
            log.error("purge.failed", error=exc.code, message=exc.message, **fields)
            self.metrics.purges.labels(app=cfg.app, provider=cfg.provider, outcome="failed").inc()
            self._settle(
                cfg, intent, after_failed_purge, {"error": exc.code, "message": exc.message[:300]}
            )
            self._send_async(
                name,
                self._event(
                    "failed",
                    name,
                    cfg,
                    intent.image,
                    intent.rollout_id,
                    previous_image=intent.from_image,
                    provider=cfg.provider,
                    status="purge-failed",
                    reason=f"{exc.code}: {exc.message}",
                ),
                cfg,
            )
            return
        except Exception as exc:
            state.purge_attempts += 1
            delay = min(self.options.purge_retry_max, 2.0 ** min(state.purge_attempts, 6))
            state.retry_at = self._clock() + delay
            log.exception("purge.error", error=str(exc)[:300], retry_in=delay, **fields)
            self._mark(name, self._clock() + delay)
            return
        state.purge_attempts, state.retry_at = 0, 0.0
        self.metrics.purges.labels(app=cfg.app, provider=cfg.provider, outcome=result.status).inc()
        self.metrics.rollouts.labels(app=cfg.app, result="purged").inc()
        log.info(
            "purge.done",
            target=result.target,
            request_id=result.request_id,
            status=result.status,
            reused=result.reused,
            seconds=round(result.finished_at - result.requested_at, 3),
            **fields,
        )
        settled = self._settle(cfg, intent, after_purge, _detail(result, intent, cfg))
        if settled is not None:
            self._start_webhooks(name, dep, cfg, settled, join_current=True)

    def _settle(
        self,
        cfg: AppConfig,
        intent: Intent,
        outcome: Callable[[AppRecord, Intent, float, dict[str, str]], AppRecord],
        detail: dict[str, str],
    ) -> Settled | None:
        """Record the rollout's outcome, unless somebody else settled it first."""
        for _ in range(5):
            current = self.ledger.get(cfg.app)
            if current.intent is None or current.intent.rollout_id != intent.rollout_id:
                return None
            new = outcome(current, intent, self._clock(), detail)
            if self.ledger.compare_and_set(cfg.app, current, new):
                return new.settled
            self.ledger.load()
        log.error("ledger.settle_failed", app=cfg.app, rollout=intent.rollout_id)
        return None

    # -- webhooks after a purge -------------------------------------------------------------
    def _start_webhooks(
        self, name: str, dep: Obj, cfg: AppConfig, settled: Settled, join_current: bool = False
    ) -> None:
        """Deliver the purge's webhooks, then mark them delivered in the ledger. A leader that
        dies in between leaves them `pending`; the next one delivers them (receivers drop
        repeats by the idempotency id)."""
        if settled.outcome != PURGED or settled.detail.get("webhooks") != WEBHOOKS_PENDING:
            return
        if join_current:
            self._webhooks_then_mark(name, cfg, settled)
            return
        if name in self._in_flight and self._in_flight[name].is_alive():
            return
        thread = threading.Thread(
            target=self._webhooks_then_mark,
            args=(name, cfg, settled),
            name=f"webhooks-{name}",
            daemon=True,
        )
        self._in_flight[name] = thread
        thread.start()

    def _webhooks_then_mark(self, name: str, cfg: AppConfig, settled: Settled) -> None:
        d = settled.detail
        if self._webhooks is not None:
            event = self._event(
                "completed" if d.get("status") == "completed" else "timeout",
                name,
                cfg,
                settled.image,
                settled.rollout_id,
                previous_image=d.get("from_image") or None,
                provider=d.get("provider"),
                distribution=d.get("target"),
                invalidation_id=d.get("request_id"),
                paths=tuple(p for p in d.get("paths", "").split(",") if p),
                status=d.get("status"),
                timings={
                    "purge_requested_at": float(d.get("requested_at", 0) or 0),
                    "purge_finished_at": float(d.get("finished_at", 0) or 0),
                },
            )
            self._deliver(self._webhooks, event, cfg)
        for _ in range(5):
            current = self.ledger.get(cfg.app)
            if current.settled is None or current.settled.rollout_id != settled.rollout_id:
                return
            done = replace(
                current.settled, detail={**current.settled.detail, "webhooks": WEBHOOKS_DELIVERED}
            )
            if self.ledger.compare_and_set(cfg.app, current, replace(current, settled=done)):
                return
            self.ledger.load()


def _detail(result: PurgeResult, intent: Intent, cfg: AppConfig) -> dict[str, str]:
    return {
        "provider": result.provider,
        "target": result.target,
        "request_id": result.request_id,
        "status": result.status,
        "paths": ",".join(result.paths),
        "from_image": intent.from_image or "",
        "requested_at": f"{result.requested_at:.3f}",
        "finished_at": f"{result.finished_at:.3f}",
        "webhooks": WEBHOOKS_PENDING,
    }
