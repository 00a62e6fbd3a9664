"""``tlwork serve``: the same Textual workbench in a web browser, through textual-serve.

For a GPU box reached over SSH: ``tlwork serve`` there, ``ssh -L 8000:127.0.0.1:8000 HOST``
here, then http://127.0.0.1:8000 in a browser. textual-serve (an optional extra:
``pip install 'tlwork[serve]'``) serves the page and, for every browser that connects to its
websocket, starts one ``tlwork`` app process (``python -m tui.cli`` with no command, in the
folder ``serve`` was started in, so runs land in the same ``runs/``) and relays its terminal.
It listens on 127.0.0.1 unless told otherwise: anyone who can reach the port can use the
workbench and start runs as this user, so another ``--host`` is allowed with a warning.
"""

from __future__ import annotations

import ipaddress
import shlex
import sys
from typing import Optional

import typer

from core.errors import EXIT_USAGE

LOCAL_HOSTS = ("localhost",)


def is_local(host: str) -> bool:
    """Whether ``host`` is a loopback name or address (reachable from this machine only)."""
    if host in LOCAL_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def app_command() -> str:
    """The shell command textual-serve runs for each browser: this interpreter opening the app."""
    return f"{shlex.quote(sys.executable)} -m tui.cli"


def serve(
    host: str = typer.Option("127.0.0.1", help="address to listen on; the default answers this machine only "
                             "(forward the port over SSH); 0.0.0.0 answers everyone who can reach it"),
    port: int = typer.Option(8000, help="TCP port to listen on"),
    public_url: Optional[str] = typer.Option(
        None, metavar="URL", help="the address browsers use to reach the server, when it is not http://HOST:PORT "
        "(a proxy, or --host 0.0.0.0 reached by the machine's name)",
    ),
) -> None:
    """Serve the workbench to a web browser (textual-serve): one app per browser tab, runs in ./runs.

    Ctrl+C stops the server. Exit codes: 0 stopped; 2 bad option, port in use, or textual-serve missing.
    """
    from tui.cli import fail

    if not 1 <= port <= 65535:
        raise fail(f"--port must be between 1 and 65535 (got {port}); e.g. --port 8000")
    try:
        from textual_serve.server import Server
    except ImportError:
        raise fail("tlwork serve needs textual-serve; install it with: pip install 'tlwork[serve]'") from None
    if not is_local(host):
        typer.echo(f"tlwork: warning: serving on {host}:{port}: anyone who can reach this port can use the workbench and "
                   "start runs on this machine; prefer the default --host 127.0.0.1 and an SSH tunnel "
                   f"(ssh -L {port}:127.0.0.1:{port} THIS_HOST)", err=True)
    server = Server(app_command(), host=host, port=port, title="tlwork", public_url=public_url)
    try:
        server.serve()
    except OSError as exc:
        raise fail(f"cannot listen on {host}:{port} ({exc.strerror or exc}); pick another --port", EXIT_USAGE) from None
