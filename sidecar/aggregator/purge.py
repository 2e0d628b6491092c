"""The purge runner: one thread per purge, fenced by leadership, retried with the one backoff
policy, settled in the ledger, then its webhooks delivered.

Error classes: a provider's `PurgeError` that is retryable (throttled past the deadline, a
network error) and any unexpected exception are retried with `PURGE_RETRY`; an app with no
domain at all has nothing to purge and settles SKIPPED (warned once per app); the others need a
person (access denied, no distribution for the domain, unknown provider) and settle the rollout
FAILED, reported once. A purge stopped or deposed mid-way is neither: its PURGING intent stays
in the ledger and whoever leads next resumes it with the same idempotency key
(docs/architecture.md, guarantees 2 and 3).

Replays (docs/architecture.md, guarantees 3 and 10): before the first CDN call the runner
records the purge's plan (targets, paths or their digest) in the PURGING intent, and each CDN
request id as soon as it is known; a resumed purge sends that plan, never what the annotations
say by then, so the CDN sees the same request and answers with the earlier one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import redis

from sidecar.aggregator.claim import ClaimLease, ClaimState, acquire
from sidecar.aggregator.events import LogEvent
from sidecar.aggregator.metrics import Metrics
from sidecar.aggregator.notifier import Notifier
from sidecar.aggregator.peers import GroupMembers, read_link
from sidecar.core.annotations import AppConfig
from sidecar.core.backoff import PURGE_RETRY, Backoff
from sidecar.core.decision import after_failed_purge, after_purge, after_skipped, fold
from sidecar.core.domains import app_domains
from sidecar.core.group import (
    PEERS_UNREACHABLE,
    ChainLink,
    ClaimKind,
    InFlight,
    claim_key,
    holder_cluster,
)
from sidecar.core.guard import NOT_ALLOWED, Guard
from sidecar.core.records import (
    AppRecord,
    Intent,
    IntentState,
    PurgeDetail,
    PurgePlan,
    Settled,
    WebhookState,
    idempotency_key,
)
from sidecar.kube.ledger import Ledger
from sidecar.kube.reflector import read_json
from sidecar.logs import get_logger
from sidecar.providers.base import (
    NO_DOMAINS,
    PlannedCall,
    Provider,
    PurgeError,
    PurgeRequest,
    PurgeResult,
)
from sidecar.providers.cloudflare import NAME as CLOUDFLARE
from sidecar.providers.cloudflare import UNAVAILABLE_HINT as CLOUDFLARE_HINT

log = get_logger("aggregator")

Obj = dict[str, Any]
Mark = Callable[[str, float | None], None]  # re-evaluate a Deployment (at a time, or now)
Settle = Callable[[AppRecord, Intent, float, PurgeDetail], AppRecord]

NO_DOMAIN = (
    "no cache-buster.io/domains annotation, no Ingress named like the Deployment and no "
    "Ingress routing to its Service"
)


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


class Flights:
    """The one worker thread per Deployment (its purge, or its owed webhooks)."""

    def __init__(self) -> None:
        self._threads: dict[str, threading.Thread] = {}

    def busy(self, name: str) -> bool:
        thread = self._threads.get(name)
        return thread is not None and thread.is_alive()

    def run(self, name: str, thread_name: str, target: Callable[[], None]) -> None:
        thread = threading.Thread(target=target, name=thread_name, daemon=True)
        self._threads[name] = thread
        thread.start()

    def join(self, timeout: float) -> None:
        for thread in list(self._threads.values()):
            thread.join(timeout=timeout)


class DomainSource:
    """The domains of an app whose annotations name none: its Ingresses and Services."""

    def __init__(self, networking_api: Any, core_api: Any, namespace: str) -> None:
        self._net = networking_api
        self._core = core_api
        self._namespace = namespace

    def __call__(self, dep: Obj, cfg: AppConfig) -> list[str]:
        if cfg.domains or cfg.distribution_id or cfg.zone:
            return list(cfg.domains)
        ns = self._namespace
        ingresses = read_json(
            self._net.list_namespaced_ingress(ns, _preload_content=False, _request_timeout=10)
        ).get("items", [])
        services = read_json(
            self._core.list_namespaced_service(ns, _preload_content=False, _request_timeout=10)
        ).get("items", [])
        return app_domains(dep, (), ingresses, services)


@dataclass(frozen=True)
class GroupRole:
    """What the purge runner needs in a cluster group: the members (claim place, mirrors),
    this holder's claim value, and the claim's lease."""

    members: GroupMembers
    group: str
    holder: str
    lease: float


@dataclass(frozen=True)
class GroupClaim:
    """What the evaluator asks of the purge runner in a group: take the claim of `kind` for
    `intent` (derived from the chain head of sequence `derived_from_seq`), then act on it."""

    kind: ClaimKind
    intent: Intent
    completed_at: float | None  # when this cluster first saw the rollout complete
    derived_from_seq: int
    reason: str  # the agreement, for the log


@dataclass
class _Retries:
    backoff: Backoff = field(default_factory=lambda: Backoff(PURGE_RETRY))
    retry_at: float = 0.0  # no new attempt before this


class PurgeRunner:
    def __init__(
        self,
        *,
        namespace: str,
        cluster: str,
        providers: Mapping[str, Provider],
        domains: Callable[[Obj, AppConfig], list[str]],
        ledger: Ledger,
        notifier: Notifier,
        metrics: Metrics,
        mark: Mark,
        leading_for: Callable[[], float],
        stop: threading.Event,
        clock: Callable[[], float],
        invalidation_timeout: float,
        retry_max: float,
        renew_deadline: float,
        retry_period: float,
        group: GroupRole | None = None,
        guard: Guard | None = None,
    ) -> None:
        self._group = group
        self._guard = guard or Guard()
        self._namespace = namespace
        self._cluster = cluster
        self._providers = providers
        self._domains = domains
        self._ledger = ledger
        self._notifier = notifier
        self._metrics = metrics
        self._mark = mark
        self._leading_for = leading_for
        self._stop = stop
        self._clock = clock
        self._invalidation_timeout = invalidation_timeout
        self._retry_max = retry_max
        # Stop a purge this much before leadership could lapse (see _WhileLeading).
        self._margin = min(1.0, renew_deadline / 10)
        self._retry_period = retry_period
        self._retries: dict[str, _Retries] = {}
        self._warned_skip: set[str] = set()  # apps already warned that they cannot purge
        # claim key -> since when (monotonic) another cluster's in-flight purge has been seen
        # without its claim
        self._patience: dict[str, float] = {}
        self._claim_wait: dict[str, float] = {}  # Deployment -> no claim attempt before
        self.flights = Flights()

    def forget(self, name: str) -> None:
        self._retries.pop(name, None)

    def start(
        self, name: str, dep: Obj, cfg: AppConfig, intent: Intent, completed_at: float | None
    ) -> None:
        """Purge in a thread of its own, unless one runs for this Deployment or it backs off."""
        if self._busy_or_backing_off(name):
            return
        self.flights.run(
            name, f"purge-{name}", lambda: self._purge(name, dep, cfg, intent, completed_at)
        )

    def claim(self, name: str, dep: Obj, cfg: AppConfig, claim: GroupClaim) -> None:
        """Cluster groups: take the group's claim for `intent`, then purge (or skip) as its
        winner, in a thread of its own (the claim place may be slow: no other app waits)."""
        if self._busy_or_backing_off(name):
            return
        wait = self._claim_wait.pop(name, 0.0)
        if wait > self._clock():
            # The claim is held elsewhere: asked again half a lease later, not on every
            # re-evaluation (the holder's outcome arrives through the mirrors meanwhile).
            self._claim_wait[name] = wait
            self._mark(name, wait)
            return
        self.flights.run(name, f"claim-{name}", lambda: self._claim_then(name, dep, cfg, claim))

    def run_now(self, name: str, dep: Obj, cfg: AppConfig, intent: Intent) -> None:
        """Job mode (`cache-buster purge`): purge `intent` (PURGING in the ledger) in the
        caller's thread, settle it and deliver its webhooks, exactly as a purge thread
        does. A retryable failure leaves the intent PURGING; `retry_in` says when to try
        again."""
        halt = _WhileLeading(self._stop, self._leading_for, self._margin)
        self._purge_once(name, dep, cfg, intent, halt, None)

    def claim_now(self, name: str, dep: Obj, cfg: AppConfig, claim: GroupClaim) -> None:
        """Job mode in a group: take the group's claim and act on it as its winner (purge or
        skip), in the caller's thread; not won, nothing is done (the winner's outcome
        arrives through the mirrors)."""
        self._claim_then(name, dep, cfg, claim)

    def retry_in(self, name: str) -> float | None:
        """Seconds until the backoff allows the next attempt (None: no retry is scheduled)."""
        retries = self._retries.get(name)
        if retries is None or retries.retry_at == 0.0:
            return None
        return max(0.0, retries.retry_at - self._clock())

    def _busy_or_backing_off(self, name: str) -> bool:
        """A worker runs for this Deployment, or its purge backs off (then re-evaluations
        wait for the retry too)."""
        if self.flights.busy(name):
            return True
        retries = self._retries.get(name)
        if retries is not None and retries.retry_at > self._clock():
            self._mark(name, retries.retry_at)
            return True
        return False

    def confirm_or_fold(self, name: str, dep: Obj, cfg: AppConfig, intent: Intent) -> None:
        """A completed rollout's purge, found while a newer rollout of the app is under way,
        with no CDN request on record (decision rule 11): if the CDN has the request, wait for
        it and settle; if it was never made, fold the rollout into the newer one."""
        if self.flights.busy(name):
            return
        self.flights.run(name, f"confirm-{name}", lambda: self._confirm_or_fold(name, cfg, intent))

    def resume_webhooks(self, name: str, cfg: AppConfig, settled: Settled) -> None:
        """Deliver webhooks a previous leader (or attempt) left pending."""
        if self.flights.busy(name):
            return
        self.flights.run(
            name, f"webhooks-{name}", lambda: self._notifier.deliver_then_mark(name, cfg, settled)
        )

    def _purge(
        self, name: str, dep: Obj, cfg: AppConfig, intent: Intent, completed_at: float | None
    ) -> None:
        # Leadership lost mid-purge stops it like a shutdown does: the intent stays PURGING.
        halt = _WhileLeading(self._stop, self._leading_for, self._margin)
        try:
            self._purge_once(name, dep, cfg, intent, halt, completed_at)
        finally:
            # Re-evaluate: the image may have changed meanwhile. A lapsing leadership is looked
            # at again a retry period later (the elector renews or steps down), not in a loop.
            self._mark(name, self._clock() + self._retry_period if halt.is_set() else None)

    def _provider(self, name: str) -> Provider:
        provider = self._providers.get(name)
        if provider is None:
            hint = f": {CLOUDFLARE_HINT}" if name == CLOUDFLARE else ""
            raise PurgeError(
                "ProviderUnavailable",
                f"provider {name!r} is not configured in this aggregator{hint}",
                retryable=False,
            )
        return provider

    def preview(self, dep: Obj, cfg: AppConfig, intent: Intent) -> tuple[PlannedCall, ...]:
        """`--dry-run`: the CDN calls purging `intent` would make. The targets are looked up
        as `plan()` does (reads only); nothing is written anywhere."""
        provider, request = self._request(dep, cfg, intent)
        if not request.targets:
            request = replace(request, targets=self._plan(provider, request))
        return provider.preview(request)

    def _request(
        self, dep: Obj | None, cfg: AppConfig, intent: Intent
    ) -> tuple[Provider, PurgeRequest]:
        """The request for this intent: its recorded plan when it has one (a replay), else
        what the app's annotations and Ingresses say now."""
        plan = intent.plan
        if plan is not None:
            provider = self._provider(plan.provider or cfg.provider)
            paths = plan.paths
            if paths is None:
                # Only the digest was kept: today's paths when they are the same list; else the
                # CDN's lookup finds the earlier request by its key (the provider's job).
                paths = tuple(cfg.paths)
            return provider, PurgeRequest(
                app=cfg.app,
                namespace=self._namespace,
                rollout_id=intent.rollout_id,
                idempotency_key=idempotency_key(intent.rollout_id),
                domains=(),
                paths=paths,
                targets=plan.targets,
                known_requests=tuple(sorted(plan.requests.items())),
                not_before=intent.started_at,
                purge_mode=cfg.cloudflare_purge,
                tags=cfg.cloudflare_tags,
            )
        provider = self._provider(cfg.provider)
        domains = self._domains(dep, cfg) if dep is not None else list(cfg.domains)
        if not domains and not cfg.distribution_id and not cfg.zone:
            raise PurgeError(NO_DOMAINS, NO_DOMAIN, retryable=False)
        # The guard, on what the app names: domains derived from its Ingresses are known only
        # here (the evaluator refused annotated ones already); in Job mode this is the check.
        problem = self._guard.check_app(cfg, domains)
        if problem is not None:
            raise PurgeError(NOT_ALLOWED, problem, retryable=False)
        return provider, PurgeRequest(
            app=cfg.app,
            namespace=self._namespace,
            rollout_id=intent.rollout_id,
            idempotency_key=idempotency_key(intent.rollout_id),
            domains=tuple(domains),
            paths=tuple(cfg.paths),
            distribution_id=cfg.distribution_id,
            zone=cfg.zone,
            not_before=intent.started_at,
            purge_mode=cfg.cloudflare_purge,
            tags=cfg.cloudflare_tags,
        )

    def _record_plan(
        self, cfg: AppConfig, intent: Intent, provider: Provider, request: PurgeRequest
    ) -> tuple[Intent, PurgeRequest] | None:
        """Resolve the targets and write the plan into the PURGING intent before any CDN call
        (None: the ledger moved on, this purge is not ours to make)."""
        targets = self._plan(provider, request)
        plan = PurgePlan.of(provider.name, targets, request.paths)
        planned = replace(intent, plan=plan)
        if not self._update_intent(cfg, intent, planned):
            return None
        self._mirror_plan(cfg, planned)  # a group's successor claimer resumes this request
        return planned, replace(request, targets=targets, domains=())

    def _plan(self, provider: Provider, request: PurgeRequest) -> tuple[str, ...]:
        """The provider's targets, refused when the guard does not allow one: a distribution
        found by alias, a zone found by lookup. Every new plan passes here before it is
        recorded; a replay sends a plan that passed when it was made."""
        targets = provider.plan(request)
        problem = self._guard.check_targets(provider.name, targets)
        if problem is not None:
            raise PurgeError(NOT_ALLOWED, problem, retryable=False)
        return targets

    def _update_intent(self, cfg: AppConfig, intent: Intent, new: Intent) -> bool:
        """Compare-and-set the app's intent (same rollout, still PURGING) to `new`."""
        for _ in range(5):
            current = self._ledger.get(cfg.app)
            cur = current.intent
            if cur is None or cur.rollout_id != intent.rollout_id:
                return False
            if cur.state is not IntentState.PURGING:
                return False
            merged = new
            if cur.plan is not None and new.plan is not None:
                # Request ids learned meanwhile are kept.
                merged = replace(
                    new, plan=replace(new.plan, requests={**cur.plan.requests, **new.plan.requests})
                )
            if self._ledger.compare_and_set(cfg.app, current, replace(current, intent=merged)):
                return True
            self._ledger.load()
        return False

    def _purge_once(
        self,
        name: str,
        dep: Obj,
        cfg: AppConfig,
        intent: Intent,
        halt: threading.Event,
        completed_at: float | None,
        fence: Callable[[], bool] | None = None,
    ) -> None:
        """`fence`: in a group, the claim confirmed at the claim place right before the CDN
        call (False: the claim was lost, the purge is not ours to make)."""
        fields = {
            "app": cfg.app,
            "image": intent.image,
            "cluster": self._cluster,
            "rollout": intent.rollout_id,
            "provider": cfg.provider,
        }
        try:
            if halt.is_set():
                # The ledger holds the PURGING intent: whoever leads next finishes it.
                log.info("purge.not_leader", **fields)
                return
            provider, request = self._request(dep, cfg, intent)
            replay = intent.plan is not None
            if not replay:
                planned = self._record_plan(cfg, intent, provider, request)
                if planned is None:
                    log.info("purge.superseded_in_ledger", **fields)
                    return
                intent, request = planned
            if halt.is_set() or (fence is not None and not fence()):
                # Re-checked right before the CDN call.
                log.info("purge.not_leader", **fields)
                return
            log.info(
                LogEvent.PURGE_REQUESTED,
                domains=list(request.domains),
                targets=list(request.targets),
                paths=list(request.paths),
                replay=replay,
                attempt=intent.attempt,
                note=intent.note,
                **fields,
            )
            if completed_at is not None:
                self._metrics.purge_latency.labels(app=cfg.app).set(self._clock() - completed_at)
            result = provider.purge(
                request,
                timeout=self._invalidation_timeout,
                stop=halt,
                on_requested=self._on_requested(cfg, intent),
            )
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
                delay = self._back_off(name)
                log.warning(
                    LogEvent.PURGE_RETRY,
                    error=exc.code,
                    message=exc.message,
                    retry_in=delay,
                    **fields,
                )
                self._count(cfg, "retry")
                return
            if exc.code == NO_DOMAINS:
                self._skip(name, cfg, intent, exc, fields)
                return
            log.error(LogEvent.PURGE_FAILED, error=exc.code, message=exc.message, **fields)
            self._count(cfg, "failed")
            if exc.code == NOT_ALLOWED:
                # The guard's refusal is the app's configuration error too (one per rollout).
                self._metrics.config_errors.labels(app=name).inc()
            detail = PurgeDetail(error=exc.code, message=exc.message[:300])
            self._settle(cfg, intent, after_failed_purge, detail)
            self._notifier.purge_failed(name, cfg, intent, f"{exc.code}: {exc.message}")
            return
        except Exception as exc:
            delay = self._back_off(name)
            log.exception("purge.error", error=str(exc)[:300], retry_in=delay, **fields)
            return
        self._done(name, cfg, intent, result, fields)

    def _done(
        self, name: str, cfg: AppConfig, intent: Intent, result: PurgeResult, fields: dict[str, Any]
    ) -> None:
        self._retries.pop(name, None)
        self._count(cfg, result.status)
        self._metrics.rollouts.labels(app=cfg.app, result="purged").inc()
        if result.reused:
            # The CDN answered with the request an earlier attempt (or leader) made.
            log.info(
                LogEvent.PURGE_REUSED, target=result.target, request_id=result.request_id, **fields
            )
        log.info(
            LogEvent.PURGE_DONE,
            target=result.target,
            request_id=result.request_id,
            status=result.status,
            reused=result.reused,
            seconds=round(result.finished_at - result.requested_at, 3),
            **fields,
        )
        settled = self._settle(cfg, intent, after_purge, purge_detail(result, intent))
        if settled is not None:
            self._notifier.deliver_then_mark(name, cfg, settled)

    def _on_requested(self, cfg: AppConfig, intent: Intent) -> Callable[[str, str], None]:
        """Record each CDN request id in the intent's plan as soon as the CDN answers, so a
        successor confirms it instead of searching for it."""

        def record(target: str, request_id: str) -> None:
            current = self._ledger.get(cfg.app).intent
            if current is None or current.plan is None:
                return
            if current.plan.requests.get(target) == request_id:
                return
            updated = replace(current, plan=current.plan.with_request(target, request_id))
            if self._update_intent(cfg, intent, updated):
                self._mirror_plan(cfg, updated)

        return record

    def _skip(
        self, name: str, cfg: AppConfig, intent: Intent, exc: PurgeError, fields: dict[str, Any]
    ) -> None:
        """Nothing to purge for this app: settled SKIPPED (not a failure), warned once per app;
        only hooks subscribed to `skipped` hear of it."""
        self._retries.pop(name, None)
        first = cfg.app not in self._warned_skip
        self._warned_skip.add(cfg.app)
        (log.warning if first else log.info)(
            LogEvent.PURGE_SKIPPED, reason=exc.code, message=exc.message, **fields
        )
        self._count(cfg, "skipped")
        self._metrics.rollouts.labels(app=cfg.app, result="skipped").inc()
        detail = PurgeDetail(
            error=exc.code,
            message=exc.message[:300],
            from_image=intent.from_image or "",
            webhooks=WebhookState.PENDING,
        )
        settled = self._settle(cfg, intent, after_skipped, detail)
        if settled is not None:
            self._notifier.deliver_then_mark(name, cfg, settled)

    def _confirm_or_fold(self, name: str, cfg: AppConfig, intent: Intent) -> None:
        fields = {
            "app": cfg.app,
            "image": intent.image,
            "cluster": self._cluster,
            "rollout": intent.rollout_id,
            "attempt": intent.attempt,
        }
        halt = _WhileLeading(self._stop, self._leading_for, self._margin)
        try:
            if halt.is_set():
                return
            if intent.plan is None:
                # The purge never got as far as its plan: no CDN call was made.
                result = None
            else:
                provider, request = self._request(None, cfg, intent)
                result = provider.find(request, timeout=self._invalidation_timeout, stop=halt)
            if halt.is_set():
                return
            if result is not None:
                self._done(name, cfg, intent, result, fields)
                return
            for _ in range(5):
                current = self._ledger.get(cfg.app)
                if current.intent is None or current.intent.rollout_id != intent.rollout_id:
                    return
                if self._ledger.compare_and_set(cfg.app, current, fold(current, current.intent)):
                    log.info(LogEvent.ROLLOUT_FOLDED, **fields)
                    return
                self._ledger.load()
        except PurgeError as exc:
            delay = self._back_off(name)
            log.warning(
                LogEvent.PURGE_RETRY, error=exc.code, message=exc.message, retry_in=delay, **fields
            )
        except Exception as exc:
            delay = self._back_off(name)
            log.exception("purge.error", error=str(exc)[:300], retry_in=delay, **fields)
        finally:
            self._mark(name, None)

    # -- cluster groups: the claim ---------------------------------------------------------
    def _claim_then(self, name: str, dep: Obj, cfg: AppConfig, claim: GroupClaim) -> None:
        """The claim winner alone writes PURGING and calls the CDN (docs/architecture.md,
        "Cluster groups", the claim). Not won: held by another (its outcome arrives through
        the mirrors; re-checked after half a lease, in case the holder died), settled at the
        claim place already, or stale (the chain moved): re-evaluate, which adopts the head."""
        kind, intent, completed_at = claim.kind, claim.intent, claim.completed_at
        derived_from_seq, reason = claim.derived_from_seq, claim.reason
        group = self._group
        assert group is not None
        fields = {
            "app": cfg.app,
            "image": intent.image,
            "cluster": self._cluster,
            "rollout": intent.rollout_id,
            "kind": str(kind),
        }
        retry: float | None = None
        halt = _WhileLeading(self._stop, self._leading_for, self._margin)
        try:
            if halt.is_set():
                return
            place = group.members.view(cfg.app).claim_place()
            client = group.members.client_of(place.name) if place and place.name else None
            if place is None or client is None:
                log.info(LogEvent.GROUP_CLAIM_UNREACHABLE, reason="member names unknown", **fields)
                retry = 1.0
                return
            try:
                result = acquire(
                    client,
                    group=group.group,
                    app=cfg.app,
                    rollout=intent.rollout_id,
                    kind=kind,
                    holder=group.holder,
                    lease=group.lease,
                    derived_from_seq=derived_from_seq,
                    probe=self._other_holder_flying(cfg.app, intent, kind),
                )
                if result.state is ClaimState.ABSENT:
                    # Another cluster's purge is in flight and its claim is gone: wait a
                    # whole lease for its holder to re-create it (_other_holder_flying).
                    key = claim_key(group.group, cfg.app, intent.rollout_id, kind)
                    self._patience.setdefault(key, time.monotonic())
                    log.info(
                        LogEvent.GROUP_CLAIM_NOT_WON,
                        place=place.name,
                        state="absent",
                        holder="",
                        **fields,
                    )
                    retry = group.lease / 3
                    return
            except redis.RedisError as exc:
                # While the claim place does not answer nobody purges.
                log.warning(
                    LogEvent.GROUP_CLAIM_UNREACHABLE,
                    place=place.name,
                    error=str(exc)[:200],
                    **fields,
                )
                retry = 1.0
                return
            if result.state is not ClaimState.WON:
                log.info(
                    LogEvent.GROUP_CLAIM_NOT_WON,
                    place=place.name,
                    state=str(result.state),
                    holder=result.holder,
                    **fields,
                )
                if result.state is ClaimState.HELD:
                    self._patience.pop(
                        claim_key(group.group, cfg.app, intent.rollout_id, kind), None
                    )
                    retry = group.lease / 2
                    self._claim_wait[name] = self._clock() + retry
                else:
                    self._note_place_link(client, cfg.app, place.name or "")
                return
            log.info(LogEvent.GROUP_CLAIM_WON, place=place.name, reason=reason, **fields)
            lease = ClaimLease(
                client,
                claim_key(group.group, cfg.app, intent.rollout_id, kind),
                group.holder,
                group.lease,
                margin=self._margin,
            ).start()
            settled = False
            try:
                held = _WhileLeading(
                    self._stop,
                    lambda: min(self._leading_for(), lease.valid_for()),
                    self._margin,
                )
                if kind is ClaimKind.SKIP:
                    settled = self._group_skip(name, cfg, intent, reason, fields)
                    return
                # Announce the claim to every member at once (its plan follows before the CDN
                # call): a member that finds the claim gone (its Redis wiped) then waits for
                # this holder to re-create it instead of taking over.
                if group.members.inflight(cfg.app, intent.rollout_id) is None:
                    self._mirror_claim(cfg, intent)
                purging = self._to_purging(cfg, intent)
                if purging is None:
                    log.info("purge.superseded_in_ledger", **fields)
                    return
                self._purge_once(name, dep, cfg, purging, held, completed_at, lease.confirm)
                current = self._ledger.get(cfg.app).settled
                settled = current is not None and current.rollout_id == intent.rollout_id
            finally:
                # Released once the outcome is mirrored (a later claim finds the rollout
                # settled at the claim place); otherwise kept until its lease ends.
                if settled:
                    lease.release()
                else:
                    lease.stop()
        finally:
            self._mark(name, None if retry is None else self._clock() + retry)

    def _other_holder_flying(self, app: str, intent: Intent, kind: ClaimKind) -> bool:
        """Whether to only probe the claim: another cluster's in-flight purge of this rollout
        is on record (announced to every member when it won) and its claim has not been
        seen absent for a whole lease yet. Its claim expired, or the claim place lost it
        (wiped, restarted): a live holder re-creates a lost claim at its next renewal, so the
        claim is taken over only after a whole lease without it, on this cluster's monotonic
        clock; then the holder's request is resumed (same key, same plan). Raises
        redis.RedisError (reading this cluster's own Redis)."""
        group = self._group
        assert group is not None
        key = claim_key(group.group, app, intent.rollout_id, kind)
        if kind is not ClaimKind.PURGE:
            return False
        flight = group.members.inflight(app, intent.rollout_id) or group.members.read_inflight(
            app, intent.rollout_id
        )
        if flight is None or not flight.holder or holder_cluster(flight.holder) == self._cluster:
            self._patience.pop(key, None)
            return False  # none, or ours: this cluster's leader election fences its pods
        first = self._patience.get(key)
        if first is not None and time.monotonic() - first >= group.lease:
            self._patience.pop(key, None)
            log.info(
                "group.inflight_taken_over",
                cluster=self._cluster,
                app=app,
                rollout=intent.rollout_id,
                holder=flight.holder,
            )
            return False
        return True

    def _note_place_link(self, client: redis.Redis, app: str, place: str) -> None:
        """Our caches lag the claim place's chain head: take it from there now."""
        group = self._group
        assert group is not None
        try:
            link = read_link(client, group.group, app)
        except redis.RedisError:
            return
        if link is not None:
            group.members.note_link(place, link)

    def _to_purging(self, cfg: AppConfig, intent: Intent) -> Intent | None:
        """The winner's intent becomes PURGING (with the plan of a predecessor's in-flight
        purge, mirrored by it, when there is one: the same request, the same key)."""
        group = self._group
        assert group is not None
        for _ in range(5):
            current = self._ledger.get(cfg.app)
            cur = current.intent
            if cur is None or cur.rollout_id != intent.rollout_id:
                return None
            if cur.state is IntentState.PURGING:
                return cur
            new = replace(cur, state=IntentState.PURGING)
            flight = group.members.inflight(cfg.app, intent.rollout_id)
            if flight is not None and flight.plan and new.plan is None:
                new = replace(new, plan=PurgePlan.from_dict(flight.plan))
                log.info(
                    "group.inflight_resumed",
                    app=cfg.app,
                    rollout=intent.rollout_id,
                    started_by=flight.cluster,
                )
            if self._ledger.compare_and_set(cfg.app, current, replace(current, intent=new)):
                return new
            self._ledger.load()
        return None

    def _mirror_claim(self, cfg: AppConfig, intent: Intent) -> None:
        group = self._group
        assert group is not None
        plan = intent.plan.to_dict() if intent.plan is not None else {}
        flight = InFlight(
            cfg.app, intent.rollout_id, self._cluster, plan, self._clock(), holder=group.holder
        )
        missed = group.members.mirror_inflight(flight)
        log.info(
            "group.claim_announced",
            app=cfg.app,
            cluster=self._cluster,
            rollout=intent.rollout_id,
            missed=missed,
        )

    def _mirror_plan(self, cfg: AppConfig, intent: Intent) -> None:
        if self._group is None or intent.plan is None:
            return
        flight = InFlight(
            cfg.app,
            intent.rollout_id,
            self._cluster,
            intent.plan.to_dict(),
            self._clock(),
            holder=self._group.holder,
        )
        self._group.members.mirror_inflight(flight)

    def _group_skip(
        self, name: str, cfg: AppConfig, intent: Intent, reason: str, fields: dict[str, Any]
    ) -> bool:
        """A peer unreachable past GROUP_TIMEOUT (ON_PEER_TIMEOUT=skip): the rollout settles
        SKIPPED for the group, decided once here and mirrored; `skipped` is sent from here.
        A returning peer that completes it reopens it (decision rule 6)."""
        log.warning(LogEvent.GROUP_SKIPPED, reason=reason, **fields)
        self._metrics.rollouts.labels(app=cfg.app, result="skipped").inc()
        detail = PurgeDetail(
            error=PEERS_UNREACHABLE,
            message=reason[:300],
            from_image=intent.from_image or "",
            webhooks=WebhookState.PENDING,
        )
        settled = self._settle(cfg, intent, after_skipped, detail)
        if settled is None:
            return False
        self._notifier.deliver_then_mark(name, cfg, settled)
        return True

    def _count(self, cfg: AppConfig, outcome: str) -> None:
        self._metrics.purges.labels(app=cfg.app, provider=cfg.provider, outcome=outcome).inc()

    def _back_off(self, name: str) -> float:
        """Schedule the next attempt (PURGE_RETRY, capped by the options); the delay."""
        retries = self._retries.setdefault(name, _Retries())
        delay = min(self._retry_max, retries.backoff.next())
        retries.retry_at = self._clock() + delay
        self._mark(name, retries.retry_at)
        return delay

    def _settle(
        self, cfg: AppConfig, intent: Intent, outcome: Settle, detail: PurgeDetail
    ) -> Settled | None:
        """Record the rollout's outcome, unless somebody else settled it first."""
        for _ in range(5):
            current = self._ledger.get(cfg.app)
            if current.intent is None or current.intent.rollout_id != intent.rollout_id:
                return None
            new = outcome(current, intent, self._clock(), detail)
            if self._ledger.compare_and_set(cfg.app, current, new):
                if self._group is not None and new.settled is not None:
                    # A group decision: its outcome to the claim place and every member.
                    self._group.members.mirror_link(
                        ChainLink.of(cfg.app, new.settled, self._cluster)
                    )
                return new.settled
            self._ledger.load()
        log.error("ledger.settle_failed", app=cfg.app, rollout=intent.rollout_id)
        return None


def purge_detail(result: PurgeResult, intent: Intent) -> PurgeDetail:
    """What a settled purge records; its webhooks are owed until marked delivered."""
    return PurgeDetail(
        reused=result.reused,
        note=intent.note,
        provider=result.provider,
        target=result.target,
        request_id=result.request_id,
        status=result.status,
        paths=tuple(result.paths),
        from_image=intent.from_image or "",
        requested_at=result.requested_at,
        finished_at=result.finished_at,
        webhooks=WebhookState.PENDING,
    )
