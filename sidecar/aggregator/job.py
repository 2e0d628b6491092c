"""Job mode's purge (`cache-buster purge`): one app, one rollout, in the caller's thread.

The Job's main container, after `cache-buster wait` (its init container) saw the rollout
complete; also usable by hand or from CI. Nothing here decides or purges in its own way:
`sidecar.core.decision.decide_for_job` says whether this rollout still needs its purge
(docs/architecture.md, "Job mode", rules J1-J3), the aggregator's `PurgeRunner` makes it
(plan recorded before the CDN call, the one retry policy, settle, webhooks) and the ledger
ConfigMap is the same one the aggregator keeps, so a re-run (Argo CD's PostSync after every
sync, Helm's hook on every upgrade) sends nothing.

Exit statuses are `sidecar.core.exits.JobExit`; each ends with one line saying why.
"""

from __future__ import annotations

import copy
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import IO, Any

from sidecar.aggregator.job_group import JOB_CLAIM_LEASE, GroupUsageError, JobGroup
from sidecar.aggregator.metrics import Metrics
from sidecar.aggregator.notifier import Notifier, owes_webhooks
from sidecar.aggregator.purge import DomainSource, GroupClaim, GroupRole, PurgeRunner
from sidecar.config import Settings
from sidecar.core import annotations as ann
from sidecar.core.annotations import AnnotationError, AppConfig, app_config
from sidecar.core.decision import JobDecision, JobVerdict, decide_for_job
from sidecar.core.exits import JobExit
from sidecar.core.group import Accord, ChainLink, ClaimKind, adopt, claim_holder
from sidecar.core.images import same_image
from sidecar.core.records import AppRecord, Intent, IntentState, Outcome, Settled
from sidecar.core.rollout import container_image, previous_image, rollout_status
from sidecar.kube.ledger import Ledger, LedgerError
from sidecar.kube.reflector import read_json
from sidecar.logs import get_logger
from sidecar.providers.base import Provider, PurgeError
from sidecar.webhooks.sender import WebhookSender

log = get_logger("job")

Obj = dict[str, Any]

# The flags that stand for a per-app annotation: each is validated by the annotation's own
# grammar (`app_config` on the Deployment with the flag's value in place of the annotation).
FLAG_ANNOTATIONS: dict[str, str] = {
    "provider": ann.PROVIDER,
    "domains": ann.DOMAINS,
    "paths": ann.PATHS,
    "zone": ann.ZONE,
    "distribution_id": ann.DISTRIBUTION_ID,
    "container": ann.CONTAINER,
    "webhooks": ann.WEBHOOKS,
    "cloudflare_purge": ann.CLOUDFLARE_PURGE,
    "cloudflare_tags": ann.CLOUDFLARE_TAGS,
}


class JobUsageError(Exception):
    """A bad flag, setting or annotation, or a Deployment that does not exist: one line."""


@dataclass(frozen=True)
class PurgeJob:
    deployment: str
    namespace: str
    # The image the rollout was for (--image, else APP_IMAGE); None: what the Deployment runs.
    image: str | None = None
    # flag name (FLAG_ANNOTATIONS) -> value, set only for flags given.
    overrides: Mapping[str, str] = field(default_factory=dict)
    timeout: float = 600.0  # 0: none
    strict: bool = False
    dry_run: bool = False
    # Cluster groups: purge once for the group, through its claim (sidecar.aggregator.job_group).
    group: bool = False


@dataclass
class _Context:
    job: PurgeJob
    settings: Settings
    dep: Obj
    cfg: AppConfig
    image: str
    out: IO[str]
    err: IO[str]
    fields: dict[str, Any]

    def say(self, line: str) -> None:
        print(line, file=self.out, flush=True)

    def fail(self, code: JobExit, line: str) -> JobExit:
        print(f"cache-buster purge: {line}", file=self.err, flush=True)
        return code


def effective_config(dep: Obj, overrides: Mapping[str, str], settings: Settings) -> AppConfig:
    """The app's settings: its annotations with the flags in their place. The Flux Job
    pattern's `ZONE_ID` is the zone when neither names one, and picks Cloudflare when no
    provider is named (that pattern purged Cloudflare). Raises JobUsageError."""
    patched = copy.deepcopy(dep)
    meta = patched.setdefault("metadata", {})
    notes = meta.get("annotations") or {}
    notes = dict(notes)
    for flag, value in overrides.items():
        notes[FLAG_ANNOTATIONS[flag]] = value
    if settings.zone_id and ann.ZONE not in notes and ann.DISTRIBUTION_ID not in notes:
        notes[ann.ZONE] = settings.zone_id
        notes.setdefault(ann.PROVIDER, "cloudflare")
    meta["annotations"] = notes
    try:
        return app_config(patched)
    except AnnotationError as err:
        given = [f for f, a in FLAG_ANNOTATIONS.items() if a in str(err) and f in overrides]
        hint = f" (--{given[0].replace('_', '-')})" if given else ""
        raise JobUsageError(f"{err}{hint}") from None


class JobPurge:
    """Runs one `PurgeJob` against the API (apps, core, networking clients of one
    ApiClient), with `providers` (name -> Provider) and the webhooks of `settings`."""

    def __init__(
        self,
        job: PurgeJob,
        settings: Settings,
        api_client: Any,
        providers: Mapping[str, Provider],
        *,
        out: IO[str],
        err: IO[str],
        stop: threading.Event | None = None,
        clock: Callable[[], float] = time.monotonic,
        cluster: str | None = None,
    ) -> None:
        from kubernetes import client

        self.job = job
        self.settings = settings
        self.providers = providers
        self.out = out
        self.err = err
        self.stop = stop or threading.Event()
        self.clock = clock
        self.cluster = cluster or settings.cluster_name or "local"
        self.apps = client.AppsV1Api(api_client)
        self.core = client.CoreV1Api(api_client)
        self.net = client.NetworkingV1Api(api_client)
        self.ledger = Ledger(self.core, job.namespace, settings.ledger_configmap)
        self.metrics = Metrics()

    # -- reading the cluster ------------------------------------------------------------------
    def _deployment(self) -> Obj:
        from kubernetes.client.exceptions import ApiException

        try:
            dep: Obj = read_json(
                self.apps.read_namespaced_deployment(
                    self.job.deployment,
                    self.job.namespace,
                    _preload_content=False,
                    _request_timeout=10,
                )
            )
        except ApiException as exc:
            if exc.status == 404:
                raise JobUsageError(
                    f"deployment {self.job.namespace}/{self.job.deployment} not found"
                ) from None
            raise
        return dep

    def _replicasets(self, dep: Obj) -> list[Obj]:
        selector = (dep.get("spec") or {}).get("selector", {}).get("matchLabels") or {}
        labels = ",".join(f"{k}={v}" for k, v in sorted(selector.items()))
        items: list[Obj] = read_json(
            self.apps.list_namespaced_replica_set(
                self.job.namespace,
                label_selector=labels,
                _preload_content=False,
                _request_timeout=10,
            )
        ).get("items", [])
        return items

    # -- the run ------------------------------------------------------------------------------
    def run(self) -> JobExit:
        deadline = math.inf if self.job.timeout <= 0 else self.clock() + self.job.timeout
        try:
            ctx = self._context()
        except JobUsageError as exc:
            print(f"cache-buster purge: {exc}", file=self.err, flush=True)
            return JobExit.USAGE
        try:
            return self._run(ctx, deadline)
        except JobUsageError as exc:
            return ctx.fail(JobExit.USAGE, str(exc))
        except LedgerError as exc:
            log.error("job.ledger_error", error=str(exc)[:300], **ctx.fields)
            return ctx.fail(JobExit.ERROR, f"the ledger could not be written: {exc}")

    def _context(self) -> _Context:
        dep = self._deployment()
        cfg = effective_config(dep, self.job.overrides, self.settings)
        template = (dep.get("spec") or {}).get("template", {}).get("spec") or {}
        running = container_image(template, cfg.container)
        image = self.job.image or self.settings.app_image or running
        if image is None:
            raise JobUsageError(f"container {cfg.container!r} not found in {cfg.key}")
        fields = {
            "app": cfg.app,
            "image": image,
            "cluster": self.cluster,
            "deployment": cfg.key,
            "provider": cfg.provider,
        }
        return _Context(self.job, self.settings, dep, cfg, image, self.out, self.err, fields)

    def _run(self, ctx: _Context, deadline: float) -> JobExit:
        cfg, dep = ctx.cfg, ctx.dep
        template = (dep.get("spec") or {}).get("template", {}).get("spec") or {}
        running = container_image(template, cfg.container) or ""
        self.ledger.load()
        record = self.ledger.get(cfg.app)
        if not same_image(running, ctx.image):
            # The Deployment left the rollout's image: that rollout never purges (rule 5/6).
            settled = record.settled
            back = settled is not None and same_image(running, settled.image)
            code = JobExit.ROLLED_BACK if back else JobExit.SUPERSEDED
            what = "rolled back" if back else "superseded"
            log.warning("job.not_running_image", running=running, verdict=what, **ctx.fields)
            return ctx.fail(
                code, f"{cfg.key} runs {running}, not {ctx.image}: {what}, nothing purged"
            )
        status = rollout_status(dep)
        if not status.complete:
            log.warning("job.rollout_not_complete", reason=status.message, **ctx.fields)
            return ctx.fail(
                JobExit.ERROR,
                f"the rollout of {ctx.image} in {cfg.key} is not complete ({status.message}); "
                "`cache-buster wait` waits for it (the Job's init container)",
            )
        from_image = previous_image(dep, self._replicasets(dep), cfg.container)
        if self.job.group:
            return self._run_group(ctx, deadline, from_image)
        for _ in range(5):
            decision = decide_for_job(
                group=self.settings.cluster_group,
                app=cfg.app,
                image=ctx.image,
                from_image=from_image,
                record=record,
                now=time.time(),
            )
            if decision.verdict in (JobVerdict.ALREADY_PURGED, JobVerdict.ALREADY_SKIPPED):
                return self._already(ctx, decision)
            if self.job.dry_run:
                return self._dry_run(ctx, decision)
            self._check_domains(ctx, decision)
            if decision.record is None or self.ledger.compare_and_set(
                cfg.app, record, decision.record
            ):
                assert decision.intent is not None
                log.info(
                    "job.purge_started",
                    verdict=str(decision.verdict),
                    rollout=decision.intent.rollout_id,
                    attempt=decision.intent.attempt,
                    **ctx.fields,
                )
                return self._purge(ctx, decision.intent, deadline)
            # Another writer (a second run of this Job, the aggregator) changed the entry.
            self.ledger.load()
            record = self.ledger.get(cfg.app)
        return ctx.fail(JobExit.ERROR, f"the ledger entry of {cfg.app} kept changing; try again")

    def _check_domains(self, ctx: _Context, decision: JobDecision) -> None:
        intent = decision.intent
        if intent is not None and intent.plan is not None:
            return  # a resumed purge sends its recorded plan
        cfg = ctx.cfg
        if cfg.domains or cfg.distribution_id or cfg.zone:
            return
        if not DomainSource(self.net, self.core, self.job.namespace)(ctx.dep, cfg):
            raise JobUsageError(
                f"nothing to purge for {cfg.key}: no domain (--domains or the "
                f"{ann.DOMAINS} annotation), no zone, no distribution, and no Ingress routes "
                "to it"
            )

    def _already(self, ctx: _Context, decision: JobDecision, by: str | None = None) -> JobExit:
        settled = decision.settled
        assert settled is not None
        what = "already purged" if settled.outcome is Outcome.PURGED else "already skipped"
        if by and by != self.cluster:
            what += f" (by cluster {by})"
        log.info(
            "job.already_done",
            outcome=str(settled.outcome),
            rollout=settled.rollout_id,
            request_id=settled.detail.request_id,
            **ctx.fields,
        )
        if owes_webhooks(settled) and not self.job.dry_run:
            # An earlier run settled it but did not deliver every webhook: those are owed.
            self._notifier(ctx).deliver_then_mark(ctx.cfg.deployment, ctx.cfg, settled)
        ctx.say(
            f"{what}: {ctx.cfg.app} {settled.image} (rollout {settled.rollout_id}"
            + (f", request {settled.detail.request_id}" if settled.detail.request_id else "")
            + "); nothing sent"
        )
        if self.job.strict:
            return ctx.fail(JobExit.ALREADY_PURGED, f"{what} (--strict)")
        return JobExit.OK

    def _notifier(self, ctx: _Context) -> Notifier:
        s = self.settings
        sender = WebhookSender(
            s.webhooks, default_timeout=s.webhook_timeout, default_retries=s.webhook_retries
        )
        return Notifier(
            sender,
            namespace=self.job.namespace,
            cluster=self.cluster,
            group=s.cluster_group,
            ledger=self.ledger,
            metrics=self.metrics,
            stop=self.stop,
        )

    def _runner(self, ctx: _Context, timeout: float, group: GroupRole | None = None) -> PurgeRunner:
        s = self.settings
        return PurgeRunner(
            namespace=self.job.namespace,
            cluster=self.cluster,
            providers=self.providers,
            domains=DomainSource(self.net, self.core, self.job.namespace),
            ledger=self.ledger,
            notifier=self._notifier(ctx),
            metrics=self.metrics,
            mark=lambda name, when: None,  # nothing re-evaluates: this loop retries
            # The Job holds no lease: it is the only one acting for this rollout (a second
            # run meets its PURGING intent and resumes it with the same key).
            leading_for=lambda: math.inf,
            stop=self.stop,
            clock=self.clock,
            invalidation_timeout=timeout,
            retry_max=60.0,
            renew_deadline=10.0,
            retry_period=s.lease_retry_period,
            group=group,
            # Honoured when set, but no security boundary here: the app team sets the Job's env.
            guard=s.guard,
        )

    def _purge(self, ctx: _Context, intent: Intent, deadline: float) -> JobExit:
        cfg = ctx.cfg
        rid = intent.rollout_id
        left = deadline - self.clock()
        # One runner for every attempt: its backoff (the one retry policy) spans them.
        runner = self._runner(ctx, min(self.settings.invalidation_timeout, max(1.0, left)))
        while True:
            runner.run_now(cfg.deployment, ctx.dep, cfg, intent)
            record = self.ledger.get(cfg.app)
            settled = record.settled
            if settled is not None and settled.rollout_id == rid:
                return self._settled(ctx, settled)
            current = record.intent
            if current is None or current.rollout_id != rid:
                return ctx.fail(
                    JobExit.ERROR, f"the ledger entry of {cfg.app} moved on during the purge"
                )
            wait = runner.retry_in(cfg.deployment)
            if self.stop.is_set() or wait is None:
                return ctx.fail(JobExit.ERROR, "stopped; a re-run resumes this purge")
            if self.clock() + wait >= deadline:
                log.warning("job.timeout", rollout=rid, **ctx.fields)
                return ctx.fail(
                    JobExit.TIMEOUT,
                    f"timeout: the purge of {cfg.app} {ctx.image} was not made within "
                    f"{self.job.timeout:g}s (rollout {rid} stays in flight; a re-run resumes "
                    "it with the same key)",
                )
            if self.stop.wait(wait):
                return ctx.fail(JobExit.ERROR, "stopped; a re-run resumes this purge")
            intent = current

    def _settled(self, ctx: _Context, settled: Settled, by: str | None = None) -> JobExit:
        d = settled.detail
        who = f", by cluster {by}" if by and by != self.cluster else ""
        if settled.outcome is Outcome.PURGED:
            ctx.say(
                f"purged: {ctx.cfg.app} {settled.image} via {d.provider} {d.target} "
                f"(request {d.request_id}, {d.status}, rollout {settled.rollout_id}{who})"
            )
            return JobExit.OK
        if settled.outcome is Outcome.SKIPPED:
            ctx.say(f"skipped: {ctx.cfg.app} {settled.image}: {d.error}: {d.message}{who}")
            return JobExit.OK
        return ctx.fail(JobExit.PURGE_FAILED, f"purge failed: {d.error}: {d.message}{who}")

    # -- cluster groups -----------------------------------------------------------------------
    def _write(self, app: str, expected: AppRecord, new: AppRecord) -> AppRecord:
        """Compare-and-set the app's entry; the entry as it is after (ours, or a newer one a
        concurrent writer made: the caller re-reads and decides again)."""
        if new != expected and not self.ledger.compare_and_set(app, expected, new):
            self.ledger.load()
            return self.ledger.get(app)
        return new

    def _group_decision(
        self, ctx: _Context, grp: JobGroup, from_image: str | None
    ) -> tuple[JobDecision, ChainLink | None, AppRecord]:
        """The group's head adopted into this cluster's ledger, then the Job's rules."""
        record = self.ledger.get(ctx.cfg.app)
        head = grp.head(record)
        adopted = adopt(
            record, head, group=self.settings.cluster_group, app=ctx.cfg.app, owe_webhooks=False
        )
        decision = decide_for_job(
            group=self.settings.cluster_group,
            app=ctx.cfg.app,
            image=ctx.image,
            from_image=from_image,
            record=adopted,
            now=time.time(),
        )
        return decision, head, self._write(ctx.cfg.app, record, adopted)

    def _run_group(self, ctx: _Context, deadline: float, from_image: str | None) -> JobExit:
        cfg = ctx.cfg
        try:
            grp = JobGroup(
                self.settings,
                namespace=self.job.namespace,
                app=cfg.app,
                out=ctx.out,
                stop=self.stop,
                clock=self.clock,
            )
        except GroupUsageError as exc:
            return ctx.fail(JobExit.USAGE, str(exc))
        self.cluster = grp.cluster
        ctx.fields["cluster"] = grp.cluster
        with grp:
            decision, head, record = self._group_decision(ctx, grp, from_image)
            if decision.verdict in (JobVerdict.ALREADY_PURGED, JobVerdict.ALREADY_SKIPPED):
                return self._already(ctx, decision, by=head.cluster if head else None)
            intent = decision.intent
            assert intent is not None
            if self.job.dry_run:
                return self._dry_run(ctx, decision)
            self._check_domains(ctx, decision)
            if decision.verdict is JobVerdict.PURGE:
                # In a group the claim's winner alone makes the intent PURGING.
                intent = replace(intent, state=IntentState.FOLLOWING)
                wanted = replace(record, intent=intent).with_attempt(
                    intent.rollout_id, intent.attempt
                )
                if self._write(cfg.app, record, wanted) != wanted:
                    return ctx.fail(JobExit.ERROR, f"the ledger entry of {cfg.app} changed; retry")
            return self._claim_loop(ctx, grp, head, intent, deadline)

    def _claim_loop(
        self,
        ctx: _Context,
        grp: JobGroup,
        head: ChainLink | None,
        intent: Intent,
        deadline: float,
    ) -> JobExit:
        cfg = ctx.cfg
        rid = intent.rollout_id
        me = grp.complete(ctx.image, rid, head, ctx.dep)
        since = self.clock()
        role = GroupRole(
            grp.members,
            self.settings.cluster_group,
            claim_holder(grp.cluster, grp.instance),
            JOB_CLAIM_LEASE,
        )
        left = deadline - self.clock()
        runner = self._runner(ctx, min(self.settings.invalidation_timeout, max(1.0, left)), role)
        while True:
            agreement = grp.wait_for_agreement(me, deadline, since)
            if agreement.accord is Accord.WAIT:
                return ctx.fail(
                    JobExit.TIMEOUT,
                    f"timeout: the group did not agree on rollout {rid}: {agreement.reason}",
                )
            kind = ClaimKind.PURGE if agreement.accord is Accord.PURGE else ClaimKind.SKIP
            record = self.ledger.get(cfg.app)
            current = record.intent if record.intent is not None else intent
            seq = record.settled.seq if record.settled is not None else -1
            claim = GroupClaim(kind, current, since, seq, agreement.reason)
            runner.claim_now(cfg.deployment, ctx.dep, cfg, claim)
            record = self.ledger.get(cfg.app)
            if record.settled is not None and record.settled.rollout_id == rid:
                return self._settled(ctx, record.settled)
            # Not ours (held by another member), or ours and backing off: wait for the
            # winner's outcome, or our retry, or half a lease (the holder may have died).
            pause = runner.retry_in(cfg.deployment)
            wake = self.clock() + (pause if pause is not None else JOB_CLAIM_LEASE / 2)
            while self.clock() < min(wake, deadline):
                link = grp.outcome_of(rid)
                if link is not None:
                    return self._adopt_outcome(ctx, link)
                grp.changed.wait(min(1.0, max(0.0, min(wake, deadline) - self.clock())))
                grp.changed.clear()
                if self.stop.is_set():
                    return ctx.fail(JobExit.ERROR, "stopped; a re-run resumes this purge")
            if self.clock() >= deadline:
                return ctx.fail(
                    JobExit.TIMEOUT,
                    f"timeout: no outcome for rollout {rid} from the group's claim holder",
                )

    def _adopt_outcome(self, ctx: _Context, link: ChainLink) -> JobExit:
        """Another member settled the rollout: this cluster's ledger takes the outcome, and
        the Job exits as the winner's did."""
        app = ctx.cfg.app
        for _ in range(5):
            record = self.ledger.get(app)
            adopted = adopt(
                record, link, group=self.settings.cluster_group, app=app, owe_webhooks=False
            )
            if self._write(app, record, adopted) == adopted:
                break
        log.info("job.group_outcome", outcome=str(link.outcome), by=link.cluster, **ctx.fields)
        return self._settled(ctx, link.settled(owe_webhooks=False), by=link.cluster)

    # -- `wait --group` -----------------------------------------------------------------------
    def group_wait(self) -> JobExit:
        """After `wait` saw the rollout complete here: publish it, then wait until every
        member completed the same rollout (docs/architecture.md, "Job mode")."""
        deadline = math.inf if self.job.timeout <= 0 else self.clock() + self.job.timeout
        try:
            ctx = self._context()
        except JobUsageError as exc:
            print(f"cache-buster wait: {exc}", file=self.err, flush=True)
            return JobExit.USAGE
        try:
            grp = JobGroup(
                self.settings,
                namespace=self.job.namespace,
                app=ctx.cfg.app,
                out=ctx.out,
                stop=self.stop,
                clock=self.clock,
            )
        except GroupUsageError as exc:
            print(f"cache-buster wait: {exc}", file=self.err, flush=True)
            return JobExit.USAGE
        self.ledger.load()
        from_image = previous_image(ctx.dep, self._replicasets(ctx.dep), ctx.cfg.container)
        with grp:
            decision, head, _ = self._group_decision(ctx, grp, from_image)
            if decision.intent is None:
                assert decision.settled is not None
                ctx.say(f"group: rollout {decision.settled.rollout_id} was settled before")
                return JobExit.OK
            rid = decision.intent.rollout_id
            me = grp.complete(ctx.image, rid, head, ctx.dep)
            agreement = grp.wait_for_agreement(me, deadline, self.clock())
            if agreement.accord is Accord.WAIT:
                print(
                    f"cache-buster wait: timeout: the group did not complete rollout {rid}: "
                    f"{agreement.reason}",
                    file=self.err,
                    flush=True,
                )
                return JobExit.TIMEOUT
            ctx.say(f"group: {agreement.reason} (rollout {rid}, {agreement.accord})")
            return JobExit.OK

    # -- --dry-run ----------------------------------------------------------------------------
    def _dry_run(self, ctx: _Context, decision: JobDecision) -> JobExit:
        intent = decision.intent
        assert intent is not None
        self._check_domains(ctx, decision)
        runner = self._runner(ctx, 30.0)
        try:
            calls = runner.preview(ctx.dep, ctx.cfg, intent)
        except PurgeError as exc:
            return ctx.fail(JobExit.PURGE_FAILED, f"{exc.code}: {exc.message}")
        ctx.say(
            f"dry run: {decision.reason} ({decision.verdict!s}), rollout {intent.rollout_id}; "
            f"{len(calls)} request(s) would be sent, none is:"
        )
        for call in calls:
            ctx.say(call.render())
        return JobExit.OK


def main(
    *,
    deployment: str,
    namespace: str | None,
    image: str | None,
    overrides: Mapping[str, str | None],
    timeout: str,
    strict: bool,
    dry_run: bool,
    kubeconfig: str | None,
    env: Mapping[str, str],
    out: IO[str],
    err: IO[str],
    stop: threading.Event | None = None,
    providers: Mapping[str, Provider] | None = None,
    group: bool = False,
    prog: str = "purge",
) -> int:
    """`cache-buster purge`: settings from the environment (as `aggregate`), flags on top;
    returns a JobExit. Bad settings or flags: one line naming them, status 2. `prog="wait"`
    runs `wait --group`'s part after the rollout completed here (`JobPurge.group_wait`)."""
    from sidecar import logs
    from sidecar.aggregator import wiring
    from sidecar.config import ConfigError
    from sidecar.core.grammar import parse_duration

    def usage(line: str) -> int:
        print(f"cache-buster {prog}: {line}", file=err, flush=True)
        return int(JobExit.USAGE)

    try:
        settings = Settings.from_env(env)
    except ConfigError as exc:
        return usage(f"invalid configuration: {exc}")
    try:
        seconds = 0.0 if timeout.strip() in ("0", "0s") else parse_duration(timeout)
    except ValueError as exc:
        return usage(f"--timeout: {exc}")
    try:
        api_client = wiring.kubernetes_client(kubeconfig)
    except ConfigError as exc:
        return usage(f"invalid configuration: {exc}")
    logs.setup(settings.log_level)
    job = PurgeJob(
        deployment=deployment,
        namespace=namespace or settings.namespace,
        image=image,
        overrides={k: v for k, v in overrides.items() if v is not None},
        timeout=seconds,
        strict=strict,
        dry_run=dry_run,
        group=group,
    )
    chosen = providers if providers is not None else wiring.providers(settings)
    try:
        runner = JobPurge(job, settings, api_client, chosen, out=out, err=err, stop=stop)
        return int(runner.group_wait() if prog == "wait" else runner.run())
    except Exception as exc:  # an API or network failure: status 1, worth a new Pod
        log.error("job.error", error=_one_line(exc), deployment=deployment)
        print(f"cache-buster {prog}: {_one_line(exc)}", file=err, flush=True)
        return int(JobExit.ERROR)
    finally:
        api_client.close()


def _one_line(exc: BaseException) -> str:
    from kubernetes.client.exceptions import ApiException

    if isinstance(exc, ApiException):
        hint = ""
        if exc.status == 403:
            hint = " (RBAC: see the README's Job mode permissions)"
        return f"Kubernetes API: {exc.status} {exc.reason}{hint}"
    return " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
