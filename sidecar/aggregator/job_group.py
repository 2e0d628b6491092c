"""Job mode in a cluster group (`wait --group`, `purge --group`; docs/architecture.md, "Job
mode", "Cluster groups").

Each cluster's Job joins the group for as long as it runs, through the aggregator's own
`GroupMembers` (a subscriber per member, this cluster's publisher and heartbeat, mode `job`):
- the rollout id derives from the group's chain head (G1), so every cluster's Job names the
  same rollout;
- `wait --group` publishes this cluster's completion (its state record) and waits until
  `group.agree` says every member completed that rollout (or gave up on an unreachable one
  past GROUP_TIMEOUT, per ON_PEER_TIMEOUT);
- `purge --group` takes the group's claim through the purge runner's claim path: the winner
  alone calls the CDN and mirrors the outcome to every member; a Job that loses waits for
  that outcome and exits as the winner did.

Every Job of one cluster and namespace writes as one instance (`job-{namespace}`): the Jobs
of several apps run side by side, and a Job's init and main containers follow each other, so
a per-Pod instance would look like two writers sharing one cluster name.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import IO, Any

from sidecar.aggregator.peers import GroupMembers, peer_client_options
from sidecar.config import Settings
from sidecar.core.group import (
    CLAIM_LEASES,
    Accord,
    Agreement,
    ChainLink,
    GroupPhase,
    MemberState,
    agree,
    chain_head,
)
from sidecar.core.records import AppRecord
from sidecar.logs import get_logger

log = get_logger("job")

# The Job holds no Lease; its claim is renewed by the purge runner's ClaimLease like an
# aggregator's, with the lease an aggregator with the default LEASE_DURATION uses.
JOB_LEASE_DURATION = 15.0
JOB_CLAIM_LEASE = CLAIM_LEASES * JOB_LEASE_DURATION


class GroupUsageError(Exception):
    """`--group` without what a group needs (CLUSTER_NAME, REMOTE_REDIS_HOSTS)."""


def job_instance(namespace: str) -> str:
    return f"job-{namespace}"


def check_group_settings(settings: Settings) -> str:
    """The cluster's name; raises GroupUsageError when the group cannot be joined."""
    if not settings.remote_redis:
        raise GroupUsageError("--group needs REMOTE_REDIS_HOSTS (the other members' Redis)")
    if not settings.cluster_name:
        # An aggregator generates and keeps a name in a ConfigMap; a Job is too short-lived
        # to own one, and a name that changes per Job would be a new member every time.
        raise GroupUsageError("--group needs CLUSTER_NAME (this cluster's name in the group)")
    return settings.cluster_name


class JobGroup:
    """This cluster's Job in its group, for one app."""

    def __init__(
        self,
        settings: Settings,
        *,
        namespace: str,
        app: str,
        out: IO[str],
        stop: threading.Event,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        from sidecar.aggregator.wiring import redis_client

        self.settings = settings
        self.cluster = check_group_settings(settings)
        self.namespace = namespace
        self.app = app
        self.instance = job_instance(namespace)
        self.out = out
        self.stop = stop
        self.clock = clock
        self.changed = threading.Event()
        peers = [
            (p.display_url, redis_client(p, **peer_client_options())) for p in settings.remote_redis
        ]
        self.members = GroupMembers(
            group=settings.cluster_group,
            cluster=self.cluster,
            instance=self.instance,
            namespace=namespace,
            local=(settings.redis.display_url, redis_client(settings.redis)),
            peers=peers,
            on_change=self._on_change,
            mode="job",
            claim_lease=JOB_CLAIM_LEASE,
        )

    def _on_change(self, app: str | None) -> None:
        if app is None or app == self.app:
            self.changed.set()

    def __enter__(self) -> JobGroup:
        self.members.start()
        # The members' records are read once (or found unreachable) before anything is
        # decided from them.
        self.members.synced.wait(5.0)
        deadline = self.clock() + 2 * 2.0
        while self.clock() < deadline and any(
            m.name is None and m.reach.value != "down" for m in self.members.view(self.app).members
        ):
            self.changed.wait(0.1)
            self.changed.clear()
        return self

    def __exit__(self, *exc: object) -> None:
        self.members.stop()

    # -- the chain ----------------------------------------------------------------------------
    def head(self, record: AppRecord) -> ChainLink | None:
        """The group's chain head for the app: every reachable member's mirror and this
        cluster's ledger (G1)."""
        links: list[ChainLink | None] = list(self.members.view(self.app).links())
        if record.settled is not None:
            links.append(ChainLink.of(self.app, record.settled, self.cluster))
        return chain_head(links)

    def outcome_of(self, rollout: str) -> ChainLink | None:
        """The group's settled outcome of `rollout`, once a member mirrored it."""
        for link in self.members.view(self.app).links():
            if link.rollout_id == rollout:
                return link
        return None

    # -- this cluster's word --------------------------------------------------------------------
    def complete(self, image: str, rollout: str, head: ChainLink | None, dep: Any) -> MemberState:
        status = dep.get("status") or {}
        desired = int((dep.get("spec") or {}).get("replicas", 1) or 0)
        state = MemberState(
            cluster=self.cluster,
            instance=self.instance,
            app=self.app,
            image=image,
            rollout_id=rollout,
            phase=GroupPhase.COMPLETE,
            ready=int(status.get("readyReplicas") or 0),
            desired=desired,
            at=time.time(),
            head=head.rollout_id if head is not None else None,
        )
        self.members.publish_state(state)
        return state

    def wait_for_agreement(
        self, me: MemberState, deadline: float, complete_since: float
    ) -> Agreement:
        """`agree` until it says purge or skip, or the deadline passes (the last WAIT is
        returned). One progress line per change of what the group waits for."""
        shown = ""
        while True:
            self.changed.clear()
            agreement = agree(
                me,
                self.members.view(self.app),
                group_timeout=self.settings.group_timeout,
                complete_for=self.clock() - complete_since,
                on_peer_timeout=self.settings.on_peer_timeout,
            )
            if agreement.accord is not Accord.WAIT:
                return agreement
            line = f"group: waiting for {', '.join(agreement.waiting_for) or 'the group'}"
            line += f" ({agreement.reason})"
            if line != shown:
                print(line, file=self.out, flush=True)
                log.info(
                    "job.group_waiting",
                    app=self.app,
                    cluster=self.cluster,
                    rollout=me.rollout_id,
                    waiting_for=list(agreement.waiting_for),
                    reason=agreement.reason,
                )
                shown = line
            left = deadline - self.clock()
            if left <= 0 or self.stop.is_set():
                return agreement
            # Woken by any change a member publishes; the 1 s re-check is for reachability,
            # which changes with this cluster's clock, not with a message.
            self.changed.wait(min(1.0, left))

    @staticmethod
    def deadline_of(timeout: float, clock: Callable[[], float] = time.monotonic) -> float:
        return math.inf if timeout <= 0 else clock() + timeout
