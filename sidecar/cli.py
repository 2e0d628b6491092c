"""The typer app behind every command except `report` (see sidecar.entry)."""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Annotated, Literal, NoReturn

import typer

app = typer.Typer(
    name="cache-buster",
    help="Purge a CDN exactly once after a Kubernetes rollout completes.",
    no_args_is_help=True,
    add_completion=False,
    # Plain tracebacks: rich's would print local variables, which can hold secrets.
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """cache-buster: one CDN purge per successful rollout, per cluster group."""


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()

    def handler(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop


@app.command()
def aggregate(
    kubeconfig: str | None = typer.Option(
        None, help="kubeconfig file (default: in-cluster, then KUBECONFIG)"
    ),
) -> None:
    """Watch Deployments, purge the CDN once per completed rollout, call webhooks.

    Configured by environment variables (README: configuration reference). Exits with
    status 2 and one line naming the setting when the configuration is invalid.
    """
    from sidecar import logs
    from sidecar.config import ConfigError, Settings

    try:
        settings = Settings.from_env(os.environ)
    except ConfigError as err:
        _fail(f"invalid configuration: {err}", 2)
    # Everything that can be checked before acting is, before the first log line, so a bad
    # setting gives exactly one line on stderr.
    from sidecar.aggregator.metrics import Metrics
    from sidecar.aggregator.wiring import (
        StartupError,
        build_aggregator,
        kubernetes_client,
        serve_metrics,
    )

    metrics = Metrics()
    try:
        api_client = kubernetes_client(kubeconfig)
        serve_metrics(metrics, settings.metrics_port)
    except ConfigError as err:
        _fail(f"invalid configuration: {err}", 2)
    logs.setup(settings.log_level)
    log = logs.get_logger("cli")
    log.info("aggregate.config", **settings.describe())

    stop = _stop_on_signals()
    try:
        aggregator = build_aggregator(settings, api_client, metrics=metrics)
    except StartupError as err:
        log.error("aggregate.startup_failed", error=str(err))
        raise typer.Exit(1) from None
    aggregator.start()
    stop.wait()
    aggregator.stop()


def _fail(message: str, code: int) -> NoReturn:
    print(f"cache-buster aggregate: {message}", file=sys.stderr)
    raise typer.Exit(code)


@app.command()
def sim(
    kubeconfig: Annotated[
        str, typer.Option(help="where to write the kubeconfig for the emulated cluster")
    ] = "sim.kubeconfig",
    ready_after: Annotated[
        float, typer.Option(help="wall-clock seconds after which a started pod turns ready")
    ] = 2.0,
    time_scale: Annotated[
        float,
        typer.Option(
            help="multiplier for durations read from objects (deadlines, minReadySeconds)"
        ),
    ] = 1.0,
    distribution: Annotated[
        list[str] | None,
        typer.Option(help="preload a CloudFront distribution: ALIAS[,ALIAS] (repeatable)"),
    ] = None,
    redis: Annotated[bool, typer.Option("--redis", help="also serve an in-process Redis")] = False,
    json_output: Annotated[
        bool, typer.Option("--json", help="print the endpoints as one JSON line (for scripts)")
    ] = False,
) -> None:
    """Run the emulated world in the foreground: Kubernetes API, CloudFront, Redis.

    Prints the endpoints and the environment to reach them, then serves until Ctrl-C or SIGTERM
    (exit 0).
    """
    from sidecar import logs
    from sidecar.sim.cli_sim import SimUsageError, options_from_cli, serve

    try:
        options = options_from_cli(
            kubeconfig=kubeconfig,
            ready_after=ready_after,
            time_scale=time_scale,
            distributions=distribution or [],
            redis=redis,
            json_output=json_output,
        )
        # Emulator chatter stays off the console unless LOGLEVEL asks for it.
        logs.setup(os.environ.get("LOGLEVEL") or "warning")
        code = serve(options, _stop_on_signals(), sys.stdout)
    except SimUsageError as err:
        print(f"cache-buster sim: {err}", file=sys.stderr)
        raise typer.Exit(2) from None
    raise typer.Exit(code)


@app.command()
def demo(
    scenario: Annotated[
        Literal[
            "happy",
            "failed-rollout",
            "rollback",
            "leader-failover",
            "return-to-earlier",
            "slow-cluster",
            "peer-down",
            "peer-timeout",
            "split-leaders",
            "late-joiner",
        ],
        typer.Option(
            help="One cluster: happy: 1.0 -> 1.1, one purge. failed-rollout: 1.1 never gets "
            "ready, no purge. rollback: 1.1 partly rolled out, then undone, no purge. "
            "leader-failover: the leading aggregator crashes mid-rollout, one purge. "
            "return-to-earlier: 1.0 -> 1.1 -> 1.0, two purges. A group (--clusters 2 or "
            "more): happy: one purge once every cluster finished. slow-cluster: the purge "
            "waits for the last one. peer-down: a peer's Redis down mid-rollout, back before "
            "GROUP_TIMEOUT, one purge. peer-timeout: not back, no purge, one skipped event. "
            "split-leaders: the claim winner's leader crashes mid-purge, one purge. "
            "late-joiner: a cluster with an empty ledger joins, one purge."
        ),
    ] = "happy",
    clusters: Annotated[
        int,
        typer.Option(
            min=1,
            max=5,
            help="1: one cluster (fakeredis, nothing else to install). 2 to 5: a cluster "
            "group, each cluster with its own API, real redis-server and aggregator.",
        ),
    ] = 1,
    mode: Annotated[
        Literal["sidecar", "watcher"],
        typer.Option(
            help="sidecar: pods report readiness through Redis (the main mode); watcher: the "
            "aggregator alone reads readiness from the API (as the Go worker does)."
        ),
    ] = "sidecar",
    json_output: Annotated[
        bool,
        typer.Option(
            "--json",
            help='end with one JSON line: {"scenario", "clusters", "rollouts", '
            '"invalidations", "webhooks_delivered", "purge_latency_ms"}; a group adds '
            '"expected_invalidations", "senders", "purged_by", "skipped", '
            '"expected_skipped" and "ok"',
        ),
    ] = False,
    verbose: Annotated[
        bool,
        typer.Option("--verbose", "-v", help="also write the raw JSON log lines to stderr"),
    ] = False,
) -> None:
    """Run cache-buster end to end in this process: nothing else to install.

    Emulated Kubernetes API, CloudFront, webhook receiver and Redis (fakeredis);
    the real reporter and two aggregator replicas; compressed timescales.
    With --clusters N (2 to 5), a cluster group: one emulated API, real
    redis-server and aggregator per cluster, the rollout reaching them in turn.

    Prints a timeline: leader election, pods getting ready, the purge after the
    last one, the webhook. Exits 0 when the scenario made the CloudFront
    invalidations it should (1, 0, 0, 1, 2 for the single-cluster scenarios in
    --scenario order; 1, and 0 for peer-timeout, in a group), else 1 and why.
    """
    import importlib.util
    import shutil

    # The image installs no extras: say what is missing instead of an ImportError.
    if clusters == 1 and importlib.util.find_spec("fakeredis") is None:
        print(
            "cache-buster demo: needs the demo extra (fakeredis): pip install "
            "'cache-buster[demo]', or `make demo` from a checkout; the container image ships "
            "without it (`cache-buster sim` runs the emulators there)",
            file=sys.stderr,
        )
        raise typer.Exit(2)
    if clusters > 1 and shutil.which("redis-server") is None:
        print(
            "cache-buster demo: --clusters 2 or more runs one real redis-server per cluster; "
            "none is on PATH (Debian: apt-get install redis-server)",
            file=sys.stderr,
        )
        raise typer.Exit(2)
    from sidecar.sim.demo import SCENARIOS

    if clusters == 1:
        if scenario not in SCENARIOS:
            raise typer.BadParameter(
                f"{scenario!r} needs a cluster group: add --clusters 2 (or more)",
                param_hint="--scenario",
            )
        from sidecar.sim.demo import run as run_demo

        raise typer.Exit(run_demo(scenario, mode=mode, json_output=json_output, verbose=verbose))
    from sidecar.sim.demo_group import GROUP_SCENARIOS, run_group

    if scenario not in GROUP_SCENARIOS:
        raise typer.BadParameter(
            f"{scenario!r} runs in one cluster (without --clusters); a group runs "
            + ", ".join(GROUP_SCENARIOS),
            param_hint="--scenario",
        )
    code = run_group(
        scenario, clusters=clusters, mode=mode, json_output=json_output, verbose=verbose
    )
    raise typer.Exit(code)


@app.command()
def status(
    app_name: Annotated[
        str | None, typer.Argument(metavar="[APP]", help="one app (default: every app found)")
    ] = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="print one JSON document (for scripts)")
    ] = False,
    kubeconfig: Annotated[
        str | None,
        typer.Option(help="kubeconfig for the ledger (default: in-cluster, then KUBECONFIG)"),
    ] = None,
    redis_url: Annotated[
        str | None,
        typer.Option("--redis", metavar="URL", help="the local Redis (default: REDIS_URL, ...)"),
    ] = None,
    peer: Annotated[
        list[str] | None,
        typer.Option(
            "--peer", metavar="URL", help="a peer's Redis, repeatable (default: REMOTE_REDIS_HOSTS)"
        ),
    ] = None,
    namespace: Annotated[
        str | None, typer.Option(help="namespace of the ledger (default: NAMESPACE)")
    ] = None,
    group: Annotated[
        str | None, typer.Option(help="cluster group (default: CLUSTER_GROUP)")
    ] = None,
) -> None:
    """Show what the cluster group knows of its apps; read-only.

    Per app and member: reachability, image, phase, readiness, rollout id and when the member
    last wrote its state; then the claim, the purge in flight and the last settled rollout.
    Every member's Redis is read with a 2 s timeout (an unreachable one is shown as such); the
    ledger through the Kubernetes API when it answers. Defaults come from the environment, as
    for `aggregate`. Exit status: 0, 1 when APP has no records, 2 for a bad setting or flag.
    """
    from sidecar.aggregator.status import run as run_status

    raise typer.Exit(
        run_status(
            app_name,
            env=os.environ,
            out=sys.stdout,
            err=sys.stderr,
            json_output=json_output,
            kubeconfig=kubeconfig,
            redis_url=redis_url,
            peers=peer,
            namespace=namespace,
            group=group,
        )
    )


@app.command()
def wait(
    deployment: Annotated[
        str | None, typer.Option(metavar="NAME", help="the Deployment to wait for (required)")
    ] = None,
    namespace: Annotated[
        str | None,
        typer.Option(
            metavar="NS",
            help="its namespace (default: NAMESPACE, else the service account's, else default)",
        ),
    ] = None,
    container: Annotated[
        str | None,
        typer.Option(
            metavar="NAME",
            help="the container whose image counts (default: the Deployment's "
            "cache-buster.io/container annotation, else its first container)",
        ),
    ] = None,
    image: Annotated[
        str | None,
        typer.Option(
            metavar="REF",
            help="the image to wait for (default: APP_IMAGE; neither: the rollout of whatever "
            "the Deployment runs)",
        ),
    ] = None,
    match: Annotated[
        str,
        typer.Option(
            metavar="exact|normalized",
            help="exact: the same string (as the Flux Job pattern compared); normalized: the "
            "same image (nginx:1.27 is docker.io/library/nginx:1.27)",
        ),
    ] = "exact",
    timeout: Annotated[
        str,
        typer.Option(
            metavar="DURATION",
            help="bounds the whole wait, the wait for the image included (90s, 15m; 0: none)",
        ),
    ] = "30m",
    kubeconfig: Annotated[
        str | None, typer.Option(help="kubeconfig file (default: in-cluster, then KUBECONFIG)")
    ] = None,
    group: Annotated[
        bool,
        typer.Option(
            "--group",
            help="then publish this cluster's completion to the cluster group (CLUSTER_NAME, "
            "REDIS_URL, REMOTE_REDIS_HOSTS) and wait until every member completed the rollout",
        ),
    ] = False,
) -> None:
    """Job mode: wait until the Deployment runs the image, then until its rollout completes.

    One watch, no polling: progress lines on stdout, once per change; the reason on stderr.

    Exit status: 0 rolled out, 1 API error (after retries) or SIGTERM/SIGINT, 2 bad flag,
    3 rolled back, 4 superseded, 5 stalled (ProgressDeadlineExceeded) at the timeout, 6 timed out.
    """
    import math
    import time

    from initwait.command import main as wait_main

    started = time.monotonic()
    code = wait_main(
        deployment=deployment,
        namespace=namespace,
        container=container,
        image=image,
        match=match,
        timeout=timeout,
        kubeconfig=kubeconfig,
        env=os.environ,
        out=sys.stdout,
        err=sys.stderr,
    )
    if code != 0 or not group or deployment is None:
        raise typer.Exit(code)
    from sidecar.aggregator.job import main as job_main
    from sidecar.core.grammar import parse_duration

    # The timeout bounds the whole wait: the group gets what the rollout left of it.
    total = 0.0 if timeout.strip() in ("0", "0s") else parse_duration(timeout)
    left = "0" if total == 0 else f"{max(1, math.ceil(total - (time.monotonic() - started)))}s"
    raise typer.Exit(
        job_main(
            deployment=deployment,
            namespace=namespace,
            image=image,
            overrides={"container": container},
            timeout=left,
            strict=False,
            dry_run=False,
            kubeconfig=kubeconfig,
            env=os.environ,
            out=sys.stdout,
            err=sys.stderr,
            stop=_stop_on_signals(),
            group=True,
            prog="wait",
        )
    )


@app.command()
def purge(
    deployment: Annotated[
        str, typer.Option(metavar="NAME", help="the app's Deployment (its annotations apply)")
    ],
    namespace: Annotated[
        str | None, typer.Option(metavar="NS", help="its namespace (default: NAMESPACE)")
    ] = None,
    image: Annotated[
        str | None,
        typer.Option(
            metavar="REF",
            help="the image the rollout was for (default: APP_IMAGE, else what it runs)",
        ),
    ] = None,
    provider: Annotated[
        str | None,
        typer.Option(
            metavar="NAME",
            help="cloudfront or cloudflare (default: the cache-buster.io/provider annotation; "
            "cloudflare when ZONE_ID is set; else cloudfront)",
        ),
    ] = None,
    domains: Annotated[
        str | None,
        typer.Option(metavar="A,B", help="hosts to purge (default: annotation, then routing)"),
    ] = None,
    paths: Annotated[
        str | None, typer.Option(metavar="P,Q", help="paths, /x/* for a prefix (default /*)")
    ] = None,
    zone: Annotated[
        str | None, typer.Option(metavar="ID", help="Cloudflare zone id (default: ZONE_ID)")
    ] = None,
    distribution_id: Annotated[
        str | None, typer.Option(metavar="ID", help="CloudFront distribution id")
    ] = None,
    container: Annotated[
        str | None, typer.Option(metavar="NAME", help="the watched container")
    ] = None,
    webhooks: Annotated[
        str | None, typer.Option(metavar="A,B", help="extra hook names, or none")
    ] = None,
    cloudflare_purge: Annotated[
        str | None,
        typer.Option(metavar="MODE", help="files, prefixes, hosts, tags or everything"),
    ] = None,
    cloudflare_tags: Annotated[
        str | None, typer.Option(metavar="T,U", help="Cloudflare cache tags")
    ] = None,
    timeout: Annotated[
        str, typer.Option(metavar="DURATION", help="bounds the purge and its retries (0: none)")
    ] = "10m",
    strict: Annotated[
        bool, typer.Option("--strict", help="exit 8 when the rollout was purged before")
    ] = False,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="print the requests it would send (secrets masked)"),
    ] = False,
    group: Annotated[
        bool,
        typer.Option(
            "--group",
            help="purge once for the cluster group (CLUSTER_NAME, REDIS_URL, "
            "REMOTE_REDIS_HOSTS): take the group's claim, or wait for its winner's outcome",
        ),
    ] = False,
    kubeconfig: Annotated[
        str | None, typer.Option(help="kubeconfig file (default: in-cluster, then KUBECONFIG)")
    ] = None,
) -> None:
    """Job mode: purge the app's CDN once for its rollout, then call its webhooks.

    Reads the ledger first: a rollout purged before sends nothing (Argo CD runs PostSync hooks
    after every sync, Helm on every upgrade) and exits 0 saying so. Flags stand for the
    per-app annotations of the same name. Exit status: 0 purged or already purged, 1 API or
    network error, 2 bad flag or setting, 3 rolled back, 4 superseded, 6 timeout, 7 purge
    failed (the CDN refused it), 8 already purged with --strict.
    """
    from sidecar.aggregator.job import main as purge_main

    raise typer.Exit(
        purge_main(
            deployment=deployment,
            namespace=namespace,
            image=image,
            overrides={
                "provider": provider,
                "domains": domains,
                "paths": paths,
                "zone": zone,
                "distribution_id": distribution_id,
                "container": container,
                "webhooks": webhooks,
                "cloudflare_purge": cloudflare_purge,
                "cloudflare_tags": cloudflare_tags,
            },
            timeout=timeout,
            strict=strict,
            dry_run=dry_run,
            kubeconfig=kubeconfig,
            env=os.environ,
            out=sys.stdout,
            err=sys.stderr,
            stop=_stop_on_signals(),
            group=group,
        )
    )


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)
def report(ctx: typer.Context) -> None:
    """The per-pod reporter (sidecar mode): `cache-buster report --help` for its options.

    The console script hands `report` to the stdlib reporter before this app is imported, so
    the pod's sidecar never loads typer; this entry lists it in the help and hands direct
    callers of `run()` to the same reporter.
    """
    from sidecar.reporter.main import main as report_main

    raise typer.Exit(report_main(list(ctx.args)))


def run(args: list[str]) -> int:
    """Run the typer app and return its exit code (click exits through SystemExit)."""
    try:
        app(args=args, prog_name="cache-buster")
    except SystemExit as stop:
        code = stop.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    return 0
