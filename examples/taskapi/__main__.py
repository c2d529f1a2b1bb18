"""``python -m examples.taskapi``: serve the task API and say how to try it (``make demo``)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

__all__ = ["banner", "first_commands", "main"]


def first_commands(base_url: str) -> list[str]:
    """The first lines of the README's curl session, for this server's URL."""
    return [
        f"API={base_url}",
        "curl -s -X POST $API/api/v1/auth/register -H 'Content-Type: application/json' \\",
        """  -d '{"email": "ada@example.com", "username": "ada", """
        """"password": "correct horse battery staple"}'""",
    ]


def banner(base_url: str, *, embedded: str | None) -> str:
    """What ``make demo`` prints before serving."""
    where = (
        f"SQLite files in {embedded}/, in-memory cache and rate limits"
        if embedded
        else "the databases and Redis of the SCALEKIT_* variables"
    )
    lines = [
        f"scalekit example task API on {base_url} ({where})",
        f"API docs: {base_url}/docs",
        "Try the curl session in README.md; it starts with:",
        "",
        *("    " + line for line in first_commands(base_url)),
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    """Build the app from the environment, print the banner, serve with uvicorn."""
    parser = argparse.ArgumentParser(prog="python -m examples.taskapi", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)

    import uvicorn

    from . import app as app_module

    app = app_module.app  # built now, so a configuration error stops us before the banner
    data_dir = app.state.taskapi.config.data_dir
    print(banner(f"http://{args.host}:{args.port}", embedded=str(data_dir) if data_dir else None))
    # log_config=None keeps configure_logging()'s setup; scalekit resolves client
    # IPs behind proxies itself (SCALEKIT_TRUSTED_PROXIES), so uvicorn must not.
    uvicorn.run(app, host=args.host, port=args.port, log_config=None, proxy_headers=False)


if __name__ == "__main__":
    main()
