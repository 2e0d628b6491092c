"""The `cache-buster` console script: a stdlib-only dispatcher.

`cache-buster report` runs in every pod of an opted-in app, so its import path must stay
tiny: no typer, no Kubernetes client, no prometheus. Every other command goes to the typer app.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "report":
        from sidecar.reporter.main import main as report

        return report(args[1:])
    from sidecar.cli import run

    return run(args)


if __name__ == "__main__":
    sys.exit(main())
