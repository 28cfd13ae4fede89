"""The graph in Netron, inline in Jupyter: ``show_in_netron(path)`` serves the file on a local port and returns an
``IFrame`` (the URL outside Jupyter); ``stop_netron()`` stops the servers it started.

Named ``netron_view`` rather than ``netron`` so that ``from bevnb import netron_view`` never hides the ``netron``
package it drives.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import netron

if TYPE_CHECKING:
    from IPython.display import IFrame

_servers: dict[Path, tuple[str, int]] = {}


def show_in_netron(path: str | Path, height: int = 600) -> IFrame | str:
    """Serve ``path`` with Netron on 127.0.0.1 (a free port) and return an inline ``IFrame`` in Jupyter, the URL
    elsewhere. Re-running with the same file reuses its server; ``stop_netron()`` stops them all.

    * The first time, Netron shows a consent dialog ("This app uses cookies …"): click Accept once (a cookie keeps
      it for 30 days). Netron works offline; only that dialog blocks the page.
    * Remote Jupyter (JupyterHub, VS Code Remote, Docker): the IFrame is loaded by *your* browser, so the address
      must be reachable from it. Set ``BEVNB_NETRON_HOST`` (bind address, e.g. ``0.0.0.0`` in Docker) and
      ``BEVNB_NETRON_PORT`` (a port you forward or publish, e.g. ``ssh -L 8081:localhost:8081``), and, behind a
      proxy, ``BEVNB_NETRON_URL`` with ``{port}`` in it (jupyter-server-proxy:
      ``https://hub.example.org/user/me/proxy/{port}/``). With a fixed port one file is served at a time.
    """
    url = _serve(path)
    if _in_jupyter():
        from IPython.display import IFrame

        return IFrame(url, width="100%", height=height)
    return url


def _serve(path: str | Path) -> str:
    """Start (or reuse) the Netron server for ``path``; return the URL a browser should open."""
    path = Path(path).resolve()
    if not path.is_file():
        raise ValueError(f"{path}: no such file (expected an ONNX file to open in Netron)")
    host = os.environ.get("BEVNB_NETRON_HOST", "127.0.0.1")
    port = int(os.environ.get("BEVNB_NETRON_PORT", "0"))
    address = _servers.get(path)
    if address is None or not netron.status(address) or address[0] != host or port not in (0, address[1]):
        if address is not None:
            netron.stop(address)
        root = logging.getLogger()
        quiet = logging.NullHandler()
        root.addHandler(quiet)  # netron.serve calls logging.basicConfig(INFO) on an unconfigured root logger
        try:
            address = tuple(netron.serve(str(path), None, (host, port), browse=False))
        finally:
            root.removeHandler(quiet)
        for other, served in list(_servers.items()):
            if served == address:  # a fixed port: netron.serve has just replaced that server
                del _servers[other]
        _servers[path] = address
    return os.environ.get("BEVNB_NETRON_URL", "http://{host}:{port}").format(host=address[0], port=address[1])


def stop_netron() -> None:
    """Stop every Netron server that ``show_in_netron`` started."""
    for address in _servers.values():
        netron.stop(address)
    _servers.clear()


def _in_jupyter() -> bool:
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return getattr(shell, "kernel", None) is not None
