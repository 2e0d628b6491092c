"""The evaluator: one thread that takes the dirty Deployments in batches, decides for each
(`sidecar.core.decision.decide`: caches only, Redis in sidecar mode), writes every ledger change
of the batch in one update, then acts on the decisions whose record was written: a purge
starts only once its intent is durable (docs/architecture.md, "Threads and state ownership").
"""

from __future__ import annotations

import heapq
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis

from sidecar.aggregator.events import LogEvent
from sidecar.aggregator.index import OwnershipIndex
from sidecar.aggregator.metrics import Metrics
from sidecar.aggregator.notifier import Notifier, owes_webhooks
from sidecar.aggregator.options import AggregatorOptions
from sidecar.aggregator.peers import GroupMembers
from sidecar.aggregator.purge import GroupClaim, PurgeRunner
from sidecar.aggregator.reports import ReportCache
from sidecar.core.annotations import AppConfig
from sidecar.core.decision import Decision, GroupDecision, Verdict, decide, decide_in_group
from sidecar.core.group import PEER_CHECK_EVERY
from sidecar.core.records import AppRecord, Failure, FailureReason, Intent, Outcome
from sidecar.core.rollout import Observation, Pod, Waiting, observe
from sidecar.core.wire import Report
from sidecar.kube.ledger import Ledger
from sidecar.kube.reflector import Reflector
from sidecar.logs import get_logger

log = get_logger("aggregator")

Obj = dict[str, Any]
RETRY_AFTER_ERROR = 2.0  # seconds before an app whose evaluation or write failed is retried
SAME_APP_DELAY = 0.5  # seconds between two Deployments sharing one app key

# The rollouts metric's result for a rollout that failed, by why.
_FAILED_RESULT = {FailureReason.ROLLED_BACK: "rolled_back", FailureReason.SUPERSEDED: "superseded"}


class WorkQueue:
    """Dirty Deployment names, timers that make them dirty later, and the ledger-reload flag;
    marked from any thread, drained by the evaluator."""

    def __init__(self, stop: threading.Event, clock: Callable[[], float]) -> None:
        self._stop = stop
        self._clock = clock
        self._cond = threading.Condition()
        self._dirty: set[str] = set()
        self._timers: list[tuple[float, str]] = []
        self._reload = False

    def mark(self, name: str, when: float | None = None) -> None:
        with self._cond:
            if when is None:
                self._dirty.add(name)
            else:
                heapq.heappush(self._timers, (when, name))
            self._cond.notify()

    def request_reload(self) -> None:
        """Reload the ledger and re-evaluate every Deployment (leadership was gained)."""
        with self._cond:
            self._reload = True
            self._cond.notify()

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def next_batch(self) -> tuple[set[str], bool]:
        with self._cond:
            while not self._stop.is_set():
                now = self._clock()
                while self._timers and self._timers[0][0] <= now:
                    self._dirty.add(heapq.heappop(self._timers)[1])
                if self._dirty or self._reload:
                    batch, self._dirty = self._dirty, set()
                    reload, self._reload = self._reload, False
                    return batch, reload
                wait = self._timers[0][0] - now if self._timers else None
                self._cond.wait(timeout=wait)
            return set(), False


@dataclass
class _AppState:
    """Per-Deployment bookkeeping of the evaluator (not durable: the ledger is)."""

    last_reason: tuple[str, Waiting | None] = ("", None)  # what app.evaluated said last
    config_error: str | None = None
    warned: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())
    # (rollout id, attempt) whose slowness was reported: once per attempt
    timeout_reported: tuple[str, int] | None = None
    completed_at: dict[str, float] = field(default_factory=dict)  # rollout id -> when seen
    # image -> when kubectl's verdict first said complete (the `old-pods-timeout` clock)
    complete_since: dict[str, float] = field(default_factory=dict)
    overdue_reported: str | None = None  # rollout id whose lagging peers were reported


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
    group: GroupDecision | None = None  # cluster groups: what to publish, whether to claim


class Evaluator:
    def __init__(
        self,
        options: AggregatorOptions,
        *,
        queue: WorkQueue,
        index: OwnershipIndex,
        deployments: Reflector,
        replicasets: Reflector,
        pods: Callable[[set[str]], list[Pod] | None],
        reports: ReportCache | None,
        ledger: Ledger,
        app_config: Callable[[Obj], AppConfig],
        runner: PurgeRunner,
        notifier: Notifier,
        metrics: Metrics,
        is_leader: Callable[[], bool],
        wait_synced: Callable[[float], bool],
        stop: threading.Event,
        clock: Callable[[], float],
        group: GroupMembers | None = None,
    ) -> None:
        self._group = group
        self._options = options
        self._queue = queue
        self._index = index
        self._deployments = deployments
        self._replicasets = replicasets
        self._pods = pods
        self._reports = reports
        self._ledger = ledger
        self._app_config = app_config
        self._runner = runner
        self._notifier = notifier
        self._metrics = metrics
        self._is_leader = is_leader
        self._wait_synced = wait_synced
        self._stop = stop
        self._clock = clock
        self._apps: dict[str, _AppState] = {}

    def run(self) -> None:
        while not self._stop.is_set():
            batch, reload = self._queue.next_batch()
            if not self._is_leader():
                continue  # leadership gained later reloads the ledger and re-evaluates all
            if reload:
                try:
                    self._ledger.load()
                except Exception as exc:
                    log.error("ledger.load_failed", error=str(exc)[:300])
                    self._queue.request_reload()
                    self._stop.wait(1.0)
                    continue
                self._wait_synced(30)
                batch |= {d["metadata"]["name"] for d in self._deployments.items()}
            self.evaluate(batch)

    def _retry_later(self, name: str, delay: float = RETRY_AFTER_ERROR) -> None:
        self._queue.mark(name, self._clock() + delay)

    def evaluate(self, names: set[str]) -> None:
        """Decide for every dirty app, write all ledger changes in one update, then act on the
        decisions whose record was written (a purge starts only once its intent is durable)."""
        pending: list[_Pending] = []
        apps: set[str] = set()
        for name in sorted(names):
            try:
                item = self._decide(name)
            except Exception as exc:  # one app's bug or API error must not stop the others
                log.exception("app.evaluation_failed", deployment=name, error=str(exc)[:300])
                self._retry_later(name)
                continue
            if item is None:
                continue
            if item.cfg.app in apps:  # two Deployments with one app key: one at a time
                self._retry_later(name, SAME_APP_DELAY)
                continue
            apps.add(item.cfg.app)
            pending.append(item)
        changes = {
            p.cfg.app: (p.record, p.decision.record)
            for p in pending
            if p.decision.record is not None
        }
        try:
            written = self._ledger.compare_and_set_many(changes) if changes else set()
        except Exception as exc:
            log.error("ledger.write_failed", apps=len(changes), error=str(exc)[:300])
            for p in pending:
                self._retry_later(p.name)
            return
        for p in pending:
            if p.decision.record is not None and p.cfg.app not in written:
                log.info("ledger.conflict", app=p.cfg.app, deployment=p.name)
                self._queue.mark(p.name)
                continue
            try:
                self._act(p)
            except Exception as exc:
                log.exception("app.action_failed", deployment=p.name, error=str(exc)[:300])
                self._retry_later(p.name)

    def _reports_for(self, obs: Observation) -> list[Report] | None:
        if self._reports is None:
            return None
        if obs.new_rs_hash is None:
            return []
        try:
            return self._reports.fresh(obs.new_rs_hash, self._options.report_stale_after)
        except redis.RedisError as exc:
            log.warning("reports.unavailable", error=str(exc)[:200])
            return []

    def _decide(self, name: str) -> _Pending | None:
        """What the decision says for one Deployment now (reads caches; Redis in sidecar mode)."""
        dep = self._deployments.get(name)
        state = self._apps.setdefault(name, _AppState())
        if dep is None:
            self._apps.pop(name, None)
            self._runner.forget(name)
            return None
        try:
            cfg = self._app_config(dep)
        except ValueError as exc:  # AnnotationError: one clear error, once, for this app only
            self._config_error(name, state, str(exc))
            return None
        owner = self._index.app_owner(cfg.app)
        if owner is not None and owner.deployment != name:
            self._config_error(
                name, state, duplicate_key_message(name, cfg, owner.deployment, owner.why)
            )
            return None
        # The platform team's guard on what the annotations name (sidecar.core.guard): outside
        # it, one config error and no purge. Domains derived from Ingresses are judged by the
        # purge runner, the only one that reads them.
        problem = self._options.guard.check_app(cfg, cfg.domains)
        if problem is not None:
            self._config_error(name, state, f"deployment {cfg.key}: {problem}")
            return None
        if state.config_error is not None:
            log.info("app.config_fixed", deployment=name)
            state.config_error = None
        self._warn_once(name, cfg, state)

        owned = self._index.replicasets_of(dep["metadata"]["uid"])
        rss = [rs for rs in map(self._replicasets.get, owned) if rs is not None]
        now = self._clock()
        obs = observe(dep, rss, container=cfg.container)  # kubectl's verdict alone
        if obs.status.complete and obs.image is not None:
            since = state.complete_since.setdefault(obs.image, now)
            state.complete_since = {obs.image: since}
            sidecar = self._reports is not None and obs.desired > 0
            if sidecar or cfg.wait_for_old_pods:
                hashes = {h for h in (_hash(rs) for rs in rss) if h}
                obs = observe(
                    dep,
                    rss,
                    container=cfg.container,
                    reports=self._reports_for(obs) if sidecar else None,
                    pods=self._pods(hashes),
                    wait_for_old_pods=cfg.wait_for_old_pods,
                    complete_for=now - since,
                    old_pods_timeout=cfg.old_pods_timeout,
                )
                if obs.status.waiting_for is Waiting.OLD_PODS:
                    self._queue.mark(name, since + cfg.old_pods_timeout)
        else:
            state.complete_since.clear()
        record = self._ledger.get(cfg.app)
        if self._group is not None:
            since = state.complete_since.get(obs.image or "", now)
            gd = decide_in_group(
                group=self._options.group,
                app=cfg.app,
                cluster=self._options.cluster,
                instance=self._options.instance,
                observation=obs,
                record=record,
                view=self._group.view(cfg.app),
                purge_on_rollback=cfg.purge_on_rollback,
                now=now,
                complete_for=now - since,
                group_timeout=self._options.group_timeout,
                on_peer_timeout=self._options.on_peer_timeout,
                owe_webhooks=self._notifier.per_cluster,
                rollout_timeout=self._options.rollout_timeout,
            )
            self._log_decision(name, cfg, obs, record, gd.decision, state, gd)
            return _Pending(name, dep, cfg, obs, record, gd.decision, state, now, gd)
        decision = decide(
            group=self._options.group,
            app=cfg.app,
            observation=obs,
            record=record,
            purge_on_rollback=cfg.purge_on_rollback,
            now=now,
            rollout_timeout=self._options.rollout_timeout,
        )
        self._log_decision(name, cfg, obs, record, decision, state)
        return _Pending(name, dep, cfg, obs, record, decision, state, now)

    def _config_error(self, name: str, state: _AppState, message: str) -> None:
        if state.config_error != message:
            state.config_error = message
            log.error("app.config_error", deployment=name, error=message)
            self._metrics.config_errors.labels(app=name).inc()

    def _act(self, p: _Pending) -> None:
        """Execute a decision whose ledger record (if any) is written."""
        decision = p.decision
        current = decision.record or p.record
        if decision.failed is not None:
            self._rollout_failed(p.name, p.cfg, decision.failed, decision.failed_intent)
        gd = p.group
        if gd is not None and self._group is not None:
            self._group.publish_state(gd.state)
            if gd.link is not None:
                self._group.publish_link(gd.link)
        if decision.verdict is Verdict.RESUMING_SUPERSEDED and decision.purge is not None:
            self._runner.confirm_or_fold(p.name, p.dep, p.cfg, decision.purge)
        elif gd is not None and gd.claim is not None and gd.claim_for is not None:
            rollout = gd.claim_for.rollout_id
            seen = p.state.completed_at.setdefault(rollout, p.now)
            settled = current.settled
            claim = GroupClaim(
                gd.claim,
                gd.claim_for,
                seen,
                settled.seq if settled is not None else -1,
                decision.reason,
            )
            self._runner.claim(p.name, p.dep, p.cfg, claim)
        elif gd is not None and decision.verdict is Verdict.WAITING_FOR_GROUP:
            self._waiting_for_group(p, gd)
        elif decision.purge is not None:
            rollout = decision.purge.rollout_id
            seen = p.state.completed_at.setdefault(rollout, p.now)
            self._runner.start(p.name, p.dep, p.cfg, decision.purge, seen)
        elif current.intent is not None:
            self._watch_slow_rollout(p.name, p.cfg, current.intent, p.obs, p.state, p.now)
        elif current.settled is not None and owes_webhooks(current.settled):
            self._runner.resume_webhooks(p.name, p.cfg, current.settled)
        if p.obs.status.waiting_for in _RECHECK:
            # Reports can be lost (Redis wiped, pub/sub dropped while disconnected), and a pod
            # list that arrives before the ReplicaSets names no Deployment: re-read. With or
            # without an intent (a first sight mid-rollout has none).
            self._queue.mark(p.name, p.now + self._options.report_recheck_every)

    def _waiting_for_group(self, p: _Pending, gd: GroupDecision) -> None:
        """Complete here, waiting for the group: peers that lag past GROUP_TIMEOUT are
        reported once per rollout (never skipped: they may still finish); unreachable ones
        are looked at again soon (the give-up at GROUP_TIMEOUT needs an evaluation)."""
        agreement = gd.agreement
        rollout = gd.state.rollout_id
        if agreement is not None and agreement.overdue and p.state.overdue_reported != rollout:
            p.state.overdue_reported = rollout
            log.warning(
                LogEvent.GROUP_WAITING_OVERDUE,
                app=p.cfg.app,
                image=p.obs.image,
                cluster=self._options.cluster,
                rollout=rollout,
                waiting_for=list(agreement.overdue),
                reason=agreement.reason,
                members=dict(agreement.states),
            )
            intent = (p.decision.record or p.record).intent
            if intent is not None:
                self._notifier.rollout_slow(
                    p.name, p.cfg, intent, f"waiting for peers: {agreement.reason}"
                )
        self._queue.mark(p.name, p.now + PEER_CHECK_EVERY)

    def _warn_once(self, name: str, cfg: AppConfig, state: _AppState) -> None:
        """Likely typos: unknown `cache-buster.io/*` annotations, hook names not in the file."""
        unknown_hooks = self._notifier.unknown_hooks(cfg.webhooks)
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
        self,
        name: str,
        cfg: AppConfig,
        obs: Observation,
        record: AppRecord,
        decision: Decision,
        state: _AppState,
        group: GroupDecision | None = None,
    ) -> None:
        said = (decision.reason, obs.status.waiting_for)
        if said == state.last_reason:
            return
        state.last_reason = said
        # The rollout this line is about: in flight, else the one settled (never null once
        # the ledger knows the app).
        current = decision.record or record
        intent = decision.purge or current.intent
        rollout = intent.rollout_id if intent else None
        if rollout is None and current.settled is not None:
            rollout = current.settled.rollout_id
        log.info(
            LogEvent.APP_EVALUATED,
            app=cfg.app,
            deployment=name,
            image=obs.image,
            cluster=self._options.cluster,
            rollout=rollout,
            attempt=intent.attempt if intent else None,
            phase=obs.status.phase.value,
            waiting_for=obs.status.waiting_for.value if obs.status.waiting_for else None,
            reason=decision.reason,
            verdict=decision.verdict.value,
            # In a group, the member states the decision was based on.
            **({"members": dict(group.agreement.states)} if group and group.agreement else {}),
        )
        settled = decision.record.settled if decision.record is not None else None
        if settled is not None and settled.outcome is Outcome.BASELINE:
            self._metrics.rollouts.labels(app=cfg.app, result="baseline").inc()

    def _watch_slow_rollout(
        self,
        name: str,
        cfg: AppConfig,
        intent: Intent,
        obs: Observation,
        state: _AppState,
        now: float,
    ) -> None:
        deadline = intent.started_at + self._options.rollout_timeout
        attempt = (intent.rollout_id, intent.attempt)
        if now >= deadline and state.timeout_reported != attempt:
            # Reported once per attempt, never final: the rollout may still complete and then
            # it purges.
            state.timeout_reported = attempt
            log.warning(
                LogEvent.ROLLOUT_SLOW,
                app=cfg.app,
                image=intent.image,
                cluster=self._options.cluster,
                rollout=intent.rollout_id,
                attempt=intent.attempt,
                waiting_for=obs.status.message,
                seconds=round(now - intent.started_at, 1),
            )
            self._notifier.rollout_slow(name, cfg, intent, obs.status.message)
        elif now < deadline:
            self._queue.mark(name, deadline)

    def _rollout_failed(
        self, name: str, cfg: AppConfig, failure: Failure, intent: Intent | None
    ) -> None:
        result = _FAILED_RESULT[failure.reason]
        self._metrics.rollouts.labels(app=cfg.app, result=result).inc()
        log.info(
            LogEvent.ROLLOUT_FAILED,
            app=cfg.app,
            image=failure.image,
            cluster=self._options.cluster,
            rollout=failure.rollout_id,
            attempt=intent.attempt if intent else None,
            reason=str(failure.reason),
        )
        self._notifier.rollout_failed(name, cfg, failure, intent, status=result)


_RECHECK = (Waiting.POD_REPORTS, Waiting.PODS, Waiting.OLD_PODS)


def _hash(replicaset: Obj) -> str | None:
    return ((replicaset.get("metadata") or {}).get("labels") or {}).get("pod-template-hash")


def duplicate_key_message(name: str, cfg: AppConfig, owner: str, why: str) -> str:
    """Two Deployments with one app key would share one ledger entry and purge on each
    other's events: the one that does not hold the key is a configuration error."""
    return (
        f"deployment {cfg.namespace}/{name}: app key {cfg.app!r} (cache-buster.io/name) is "
        f"held by deployment {cfg.namespace}/{owner}, because {why}; this Deployment is "
        "not watched until it has a key of its own. A blue/green or canary pair needs one "
        "key per Deployment (cache-buster.io/name: web-blue, web-green): each then purges "
        "when its own rollout completes."
    )
