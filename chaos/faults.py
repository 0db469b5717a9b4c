"""How the chaos harness injects faults: a Toxiproxy server found or started, and the client that drives it.

Every fault goes through Toxiproxy's own Python client (`toxiproxy-python`) against the Toxiproxy HTTP
API at `TOXIPROXY_URL` (default `http://127.0.0.1:8474`), so a run behaves the same against the real
server and against ours. `toxiproxy_server` uses whatever already answers there; otherwise it starts
`toxiproxy-server` when one is on `PATH`, else `python -m chaos.toxiproxy`, and stops what it started.
`Faults` is the harness's one handle on the network; the client's errors become one `FaultError` that
names the proxy or toxic and says what to do.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

from toxiproxy import Toxiproxy
from toxiproxy.api import APIConsumer
from toxiproxy.exceptions import InvalidToxic, NotFound, ProxyExists

from server.ownership import die_with_parent

TOXIPROXY_URL_ENV = "TOXIPROXY_URL"
DEFAULT_TOXIPROXY_URL = "http://127.0.0.1:8474"
#: How long a started server gets to answer /version.
START_TIMEOUT_S = 15.0
#: How long a started server gets to stop after SIGTERM before SIGKILL.
STOP_TIMEOUT_S = 5.0
#: How long one /version probe waits: whatever holds the port answers at once or is not a Toxiproxy.
PROBE_TIMEOUT_S = 1.0
_POLL_S = 0.05
_ROOT = Path(__file__).resolve().parents[1]


class FaultError(Exception):
    """A fault could not be set or healed: the message names the proxy or toxic and what to do."""


@dataclass(frozen=True)
class ToxiproxyServer:
    """The Toxiproxy API the harness talks to, and where it came from."""

    url: str
    #: "running" (something already answered), "binary" (toxiproxy-server from PATH), "builtin" (ours)
    origin: str
    version: str


@contextlib.contextmanager
def toxiproxy_server(url: str | None = None, *, log_path: Path | None = None) -> Iterator[ToxiproxyServer]:
    """A Toxiproxy API at `url` ($TOXIPROXY_URL, else the default): the one answering there, or one started
    for the block (the binary on PATH, else ours) and stopped when it ends, however it ends."""
    url = (url or os.environ.get(TOXIPROXY_URL_ENV, "").strip() or DEFAULT_TOXIPROXY_URL).rstrip("/")
    host, port = _address(url)
    version = _version(url)
    if version is not None:
        yield ToxiproxyServer(url, "running", version)  # not ours: nothing to stop
        return
    binary = shutil.which("toxiproxy-server")
    if binary is not None:
        origin, command = "binary", [binary, "-host", host, "-port", str(port)]
    else:
        origin = "builtin"
        command = [sys.executable, "-m", "chaos.toxiproxy", "--host", host, "--port", str(port)]
    with contextlib.ExitStack() as files:
        output: IO[bytes] | int = files.enter_context(log_path.open("ab")) if log_path else subprocess.DEVNULL
        process = subprocess.Popen(
            command,
            cwd=_ROOT,  # `-m chaos.toxiproxy` runs from the checkout
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent(),  # a killed harness takes its server along (Linux)
            # a session of its own: a Ctrl-C in the terminal reaches the harness, which stops the run's
            # processes first and this server last, instead of the proxies vanishing under them
            start_new_session=True,
        )
        try:
            yield ToxiproxyServer(url, origin, _await_version(url, process, command, log_path))
        finally:
            _stop(process)


def _await_version(url: str, process: subprocess.Popen[bytes], command: list[str], log_path: Path | None) -> str:
    started = " ".join(command)
    where = f"see {log_path}" if log_path else "pass log_path to see its output"
    deadline = time.monotonic() + START_TIMEOUT_S
    while (version := _version(url)) is None:
        if process.poll() is not None:
            raise FaultError(f"`{started}` exited with {process.returncode} before answering {url}/version ({where})")
        if time.monotonic() > deadline:
            raise FaultError(f"`{started}` did not answer {url}/version within {START_TIMEOUT_S} s ({where})")
        time.sleep(_POLL_S)
    return version


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class Faults:
    """The harness's only way to touch the network: every call goes through the toxiproxy-python client."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        with _pointed_at(self.url):
            pass  # checks the URL now, not at the first fault

    def create_proxy(self, name: str, upstream: str, listen: str = "127.0.0.1:0") -> str:
        """Listen at `listen` and forward to `upstream`, replacing a proxy of that name; the address bound."""
        with self._client(f"creating proxy {name!r} ({listen} -> {upstream})") as server:
            existing = server.get_proxy(name)
            if existing is not None:
                existing.destroy()
            try:
                proxy = server.create(upstream=upstream, name=name, listen=listen)
            except KeyError:
                # the client reads any answer as a proxy: a 500 (cannot listen) surfaces as a missing key
                raise FaultError(
                    f"{self.url} refused proxy {name!r}: is {listen} free and an address of this host?"
                ) from None
            return str(proxy.listen)

    def add_toxic(
        self,
        proxy: str,
        name: str,
        type: str,  # the API's own word, as the client takes it
        *,
        stream: str = "downstream",
        toxicity: float = 1.0,
        attributes: Mapping[str, int] | None = None,
    ) -> None:
        """Add toxic `name` of `type` to `proxy`'s `stream`, on a `toxicity` share of its connections."""
        with self._client(f"adding toxic {name!r} ({type}, {stream}) to proxy {proxy!r}") as server:
            self._proxy(server, proxy).add_toxic(
                name=name, type=type, stream=stream, toxicity=toxicity, attributes=dict(attributes or {})
            )

    def remove_toxic(self, proxy: str, name: str) -> None:
        """Heal: remove toxic `name` from `proxy`; a toxic already gone is fine."""
        with self._client(f"removing toxic {name!r} from proxy {proxy!r}") as server:
            found = self._proxy(server, proxy)
            with contextlib.suppress(NotFound):
                found.destroy_toxic(name)

    def disable(self, proxy: str) -> None:
        """Stop `proxy` listening and drop its connections: the upstream is unreachable."""
        with self._client(f"disabling proxy {proxy!r}") as server:
            self._proxy(server, proxy).disable()

    def enable(self, proxy: str) -> None:
        """Make `proxy` listen again."""
        with self._client(f"enabling proxy {proxy!r}") as server:
            self._proxy(server, proxy).enable()

    def reset(self) -> None:
        """Every proxy enabled, every toxic removed."""
        with self._client("resetting every proxy") as server:
            server.reset()

    def destroy(self, proxy: str) -> None:
        """Delete `proxy`; one already gone is fine (a run removes only its own proxies, twice if it must)."""
        with self._client(f"deleting proxy {proxy!r}") as server:
            found = server.get_proxy(proxy)
            if found is not None:
                with contextlib.suppress(NotFound):  # deleted by someone else in between
                    found.destroy()

    def destroy_all(self) -> None:
        """Delete every proxy."""
        with self._client("deleting every proxy") as server:
            server.destroy_all()

    def toxics(self, proxy: str) -> list[dict[str, Any]]:
        """`proxy`'s toxics as the API shows them."""
        with self._client(f"listing the toxics of proxy {proxy!r}") as server:
            found = self._proxy(server, proxy).toxics().values()
            return [
                {
                    "name": toxic.name,
                    "type": toxic.type,
                    "stream": toxic.stream,
                    "toxicity": toxic.toxicity,
                    "attributes": toxic.attributes,
                }
                for toxic in found
            ]

    @staticmethod
    def _proxy(server: Any, name: str) -> Any:
        proxy = server.get_proxy(name)
        if proxy is None:  # the client answers None where the server would answer 404: say it the same way
            raise NotFound(b"proxy not found")
        return proxy

    @contextlib.contextmanager
    def _client(self, doing: str) -> Iterator[Any]:
        """The client pointed at this server, its errors turned into FaultError saying what failed."""
        with _pointed_at(self.url):
            try:
                yield Toxiproxy()
            except ProxyExists as error:  # also a toxic whose name is taken
                raise FaultError(f"{doing}: already exists ({_said(error)}); remove it first") from error
            except NotFound as error:
                raise FaultError(f"{doing}: {_said(error)} on {self.url}; create it first") from error
            except InvalidToxic as error:
                raise FaultError(f"{doing}: refused ({_said(error)}); check the type, stream and attributes") from error
            except OSError as error:  # requests' errors are OSErrors: nothing answers, or not in HTTP
                raise FaultError(f"{doing}: no Toxiproxy answers at {self.url} ({error}); start one") from error


#: The client keeps its server's host and port on a class: one caller points it at a time.
_consumer = threading.Lock()


@contextlib.contextmanager
def _pointed_at(url: str) -> Iterator[None]:
    host, port = _address(url)
    with _consumer:
        Toxiproxy().update_api_consumer(host, port)
        yield


def _address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname or parts.port is None:
        raise ValueError(f"{url!r} is not a Toxiproxy URL: write http://HOST:PORT (as {DEFAULT_TOXIPROXY_URL})")
    return parts.hostname, parts.port


def _said(error: Exception) -> str:
    """What the server said: the client keeps the response's raw body as the exception's argument."""
    body = error.args[0] if error.args else b""
    text = body.decode(errors="replace") if isinstance(body, bytes) else str(body)
    try:
        answer = json.loads(text)
    except ValueError:
        return text.strip()
    return str(answer.get("error", text.strip())) if isinstance(answer, dict) else text.strip()


def _version(url: str) -> str | None:
    """The version of the Toxiproxy answering at `url`, None when nothing answers there in HTTP."""
    with _pointed_at(url):
        try:
            # the client's get, with a bound: its own version() has none and waits forever on a mute port
            response = APIConsumer.get("/version", timeout=PROBE_TIMEOUT_S)
        except (OSError, NotFound, InvalidToxic, ProxyExists):
            return None
    if response.status_code != 200:
        return None
    text = str(response.text).strip()
    try:
        answer = json.loads(text)  # {"version": "2.8.0"}; before 2.6 the bare version
    except ValueError:
        return text or None
    return str(answer.get("version", text)) if isinstance(answer, dict) else text
