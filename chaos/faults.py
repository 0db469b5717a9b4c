"""How the chaos harness injects faults: a Toxiproxy server found or started, and the client that drives it.

Every fault goes through Toxiproxy's own Python client (`toxiproxy-python`) against a Toxiproxy HTTP API,
so a run behaves the same against the real server and against ours. `toxiproxy_server` picks that API:

- `TOXIPROXY_URL` set (or a URL passed): the Toxiproxy answering there; when nothing answers, one started
  on that URL's host and port.
- `TOXIPROXY_URL` unset: the Toxiproxy answering at the default `http://127.0.0.1:8474` (a developer's
  own, long-lived server); when nothing answers, one started for this run alone on a free loopback port,
  never on 8474, so runs started side by side never share a server one of them will stop.

A server it starts is `toxiproxy-server` when one is on `PATH`, else `python -m chaos.toxiproxy`, and it
stops only what it started. Whatever answers `GET /version` must say a Toxiproxy version (`{"version":
"2.8.0"}`, or the bare `2.1.4` of older servers): any other HTTP server, or a port that does not speak
HTTP (PostgreSQL, NATS), is refused with a `FaultError` saying what it found. A started server that
exits or fails before answering is a `FaultError` carrying the last lines of its log.
`Faults` is the harness's one handle on the network; the client's errors become one `FaultError` that
names the proxy or toxic and says what to do.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote, urlsplit

from toxiproxy import Toxiproxy
from toxiproxy.api import APIConsumer
from toxiproxy.exceptions import InvalidToxic, NotFound, ProxyExists

from chaos.processes import free_port
from server.ownership import die_with_parent

TOXIPROXY_URL_ENV = "TOXIPROXY_URL"
DEFAULT_TOXIPROXY_URL = "http://127.0.0.1:8474"
#: Where a run's own server listens when TOXIPROXY_URL is unset (on a free port of it).
LOOPBACK = "127.0.0.1"
#: How long a started server gets to answer /version.
START_TIMEOUT_S = 15.0
#: How long a started server gets to stop after SIGTERM before SIGKILL.
STOP_TIMEOUT_S = 5.0
#: How long one /version probe waits: whatever holds the port answers at once or is not a Toxiproxy.
PROBE_TIMEOUT_S = 1.0
#: How long `proxies` and `destroy` wait for the server to connect and to answer (each).
REQUEST_TIMEOUT_S = 10.0
#: How many free ports a run's own server is tried on (another process may take a port first).
START_ATTEMPTS = 3
#: How many of its log's last lines a started server's failure quotes.
LOG_TAIL_LINES = 12
_POLL_S = 0.05
_ROOT = Path(__file__).resolve().parents[1]
#: The bare version older servers answer /version with (`2.1.4`, `v2.1.4`, `2.1.4-dev`).
_BARE_VERSION = re.compile(r"v?\d+\.\d+(\.\d+)?([-+.][0-9A-Za-z.+-]*)?")


class FaultError(Exception):
    """A fault could not be set or healed: the message names the proxy or toxic and what to do."""


class _StartFailed(FaultError):
    """A started server exited, or logged an error, before answering; `in_use` when its port was taken."""

    def __init__(self, message: str, in_use: bool) -> None:
        super().__init__(message)
        self.in_use = in_use


@dataclass(frozen=True)
class ToxiproxyServer:
    """The Toxiproxy API the harness talks to, and where it came from."""

    url: str
    #: "running" (something already answered), "binary" (toxiproxy-server from PATH), "builtin" (ours)
    origin: str
    version: str


@contextlib.contextmanager
def toxiproxy_server(url: str | None = None, *, log_path: Path | None = None) -> Iterator[ToxiproxyServer]:
    """A Toxiproxy API for the block; stops only a server it started, however the block ends.

    With `url` (or $TOXIPROXY_URL): the Toxiproxy answering there, else one started on its host and port.
    Without: the Toxiproxy answering at DEFAULT_TOXIPROXY_URL (a developer's own), else one started for
    this block alone on a free loopback port, so two runs at once never share a server one will stop.
    A started server is toxiproxy-server from PATH, else ours (`python -m chaos.toxiproxy`); its output
    goes to `log_path` (appended) when given. Raises FaultError when what answers is not a Toxiproxy, or
    when the started server fails before answering (quoting the last lines of its log)."""
    explicit = (url or os.environ.get(TOXIPROXY_URL_ENV, "").strip()).rstrip("/")
    probed = explicit or DEFAULT_TOXIPROXY_URL
    _address(probed)  # a malformed URL is a ValueError before anything is probed
    version = _version(probed)
    if version is not None:
        yield ToxiproxyServer(probed, "running", version)  # not ours: nothing to stop
        return
    for attempt in range(1, START_ATTEMPTS + 1):
        target = explicit or f"http://{LOOPBACK}:{free_port()}"
        try:
            started = contextlib.ExitStack()
            server = started.enter_context(_started(target, log_path))
        except _StartFailed as failed:
            # our free port taken in between by someone else: another one; a URL given is the caller's
            if explicit or not failed.in_use or attempt == START_ATTEMPTS:
                raise
            continue
        with started:
            yield server
        return


@contextlib.contextmanager
def _started(url: str, log_path: Path | None) -> Iterator[ToxiproxyServer]:
    """A server started on `url`'s host and port, answering; stopped on exit."""
    host, port = _address(url)
    binary = shutil.which("toxiproxy-server")
    if binary is not None:
        origin, command = "binary", [binary, "-host", host, "-port", str(port)]
    else:
        origin = "builtin"
        command = [sys.executable, "-m", "chaos.toxiproxy", "--host", host, "--port", str(port)]
    with contextlib.ExitStack() as files:
        output: IO[bytes] = (
            files.enter_context(log_path.open("ab")) if log_path else files.enter_context(tempfile.TemporaryFile("w+b"))
        )
        log = _Log(output, log_path)
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
            version = _await_version(url, process, command, log)
        except BaseException:
            _stop(process)
            raise
        try:
            yield ToxiproxyServer(url, origin, version)
        finally:
            _stop(process)


class _Log:
    """What a started server wrote since it started: the log file's tail from the offset it started at."""

    def __init__(self, output: IO[bytes], path: Path | None) -> None:
        output.flush()
        self._output, self._path = output, path
        self._start = output.seek(0, os.SEEK_END)

    def lines(self) -> list[str]:
        # a log file given is opened for appending only: read it by its path; the temporary one is readable
        with contextlib.ExitStack() as opened:
            reader = opened.enter_context(self._path.open("rb")) if self._path else self._output
            reader.seek(self._start)
            return reader.read().decode(errors="replace").splitlines()

    def failure(self) -> str | None:
        """The real server's own error line (it logs a failed listen, then waits for a signal)."""
        for line in self.lines():
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if isinstance(entry, dict) and entry.get("level") in ("error", "fatal", "panic"):
                    return line
        return None

    def tail(self) -> str:
        lines = [line for line in self.lines() if line.strip()][-LOG_TAIL_LINES:]
        where = f"; its log: {self._path}" if self._path else ""
        if not lines:
            return f"it wrote nothing{where}"
        return (
            "its log's last lines:\n"
            + "\n".join(f"    {line}" for line in lines)
            + (f"\n({where[2:]})" if where else "")
        )


def _await_version(url: str, process: subprocess.Popen[bytes], command: list[str], log: _Log) -> str:
    started = " ".join(command)
    deadline = time.monotonic() + START_TIMEOUT_S
    while (version := _version(url)) is None:
        if process.poll() is not None:
            tail = log.tail()
            raise _StartFailed(
                f"`{started}` exited with {process.returncode} before answering {url}/version; {tail}",
                in_use="address already in use" in tail,
            )
        if log.failure() is not None:
            tail = log.tail()
            raise _StartFailed(
                f"`{started}` failed before answering {url}/version; {tail}", in_use="address already in use" in tail
            )
        if time.monotonic() > deadline:
            raise FaultError(f"`{started}` did not answer {url}/version within {START_TIMEOUT_S} s; {log.tail()}")
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
        """Delete `proxy`; one already gone is fine (a run removes only its own proxies, twice if it must).
        Waits REQUEST_TIMEOUT_S at most to connect and as long for the answer."""
        with self._client(f"deleting proxy {proxy!r}"), contextlib.suppress(NotFound):  # gone already
            APIConsumer.delete(f"/proxies/{quote(proxy, safe='')}", timeout=REQUEST_TIMEOUT_S)

    def proxies(self) -> list[str]:
        """The names of every proxy on the server, sorted (anyone's, not only the harness's). Waits
        REQUEST_TIMEOUT_S at most to connect and as long for the answer."""
        with self._client("listing the proxies"):
            answer = APIConsumer.get("/proxies", timeout=REQUEST_TIMEOUT_S).json()
        if not isinstance(answer, dict):
            raise FaultError(f"listing the proxies: {self.url} answered {answer!r}, not an object of proxies")
        return sorted(str(name) for name in answer)

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


def toxiproxy_version(url: str) -> str | None:
    """The version of the Toxiproxy answering at `url`, None when nothing accepts a connection there; a
    FaultError when what answers is not a Toxiproxy. Waits PROBE_TIMEOUT_S to connect and as long to read."""
    return _version(url)


def _version(url: str) -> str | None:
    """The version of the Toxiproxy answering at `url`; None when nothing accepts a connection there.

    Raises FaultError when something does but is not a Toxiproxy: another HTTP server, or a port that does
    not speak HTTP (PostgreSQL, NATS) or says nothing within PROBE_TIMEOUT_S."""
    host, port = _address(url)
    try:
        socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S).close()
    except OSError:
        return None  # refused, unreachable, or no connection within the probe's time: nothing there
    with _pointed_at(url):
        try:
            # the client's get, with a bound: its own version() has none and waits forever on a mute port
            response = APIConsumer.get("/version", timeout=PROBE_TIMEOUT_S)
        except (OSError, NotFound, InvalidToxic, ProxyExists) as error:
            said = _shortened(f"{type(error).__name__}: {error}")
            raise _not_toxiproxy(url, f"no HTTP answer to GET /version ({said})") from None
    text = str(response.text).strip()
    if response.status_code == 200:
        if _BARE_VERSION.fullmatch(text):
            return text  # before 2.6: the bare version
        with contextlib.suppress(ValueError):
            answer = json.loads(text)  # {"version": "2.8.0"}
            if isinstance(answer, dict) and isinstance(answer.get("version"), str) and answer["version"].strip():
                return str(answer["version"]).strip()
    raise _not_toxiproxy(url, f"GET /version answered {response.status_code} {_shortened(text)!r}")


def _shortened(text: str, limit: int = 160) -> str:
    """`text` on one line, cut to `limit` characters: enough to recognise what answered."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _not_toxiproxy(url: str, found: str) -> FaultError:
    return FaultError(
        f"{url} answers but is not Toxiproxy: {found}; point {TOXIPROXY_URL_ENV} at a Toxiproxy,"
        " or stop what holds that port"
    )
