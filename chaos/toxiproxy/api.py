"""The Toxiproxy HTTP API (2.8.0): the same endpoints, JSON shapes, status codes and error bodies."""

from __future__ import annotations

import errno
import json
from typing import Any

from aiohttp import web

from chaos.toxiproxy.proxy import Proxy
from chaos.toxiproxy.toxics import BadToxic, toxic_from_body

VERSION = "2.8.0"

PROXIES = web.AppKey("proxies", dict[str, Proxy])


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, text=json.dumps(body, separators=(",", ":")), content_type="application/json")


def _error(message: str, status: int) -> web.Response:
    # The real server writes its errors as a JSON line under text/plain.
    text = json.dumps({"error": message, "status": status}, separators=(",", ":")) + "\n"
    return web.Response(status=status, text=text, content_type="text/plain", charset="utf-8")


class _Refused(Exception):
    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


async def _body(request: web.Request) -> Any:
    text = await request.text()
    try:
        return json.loads(text)
    except ValueError as error:
        raise _Refused(f"bad request body: {error}", 400) from None


def _proxy(request: web.Request) -> Proxy:
    proxy = request.app[PROXIES].get(request.match_info["proxy"])
    if proxy is None:
        raise _Refused("proxy not found", 404)
    return proxy


def _proxy_fields(body: Any, where: str = "") -> tuple[str, str, str, bool]:
    if not isinstance(body, dict):
        raise _Refused("bad request body: json: cannot unmarshal into a proxy", 400)
    for required in ("name", "upstream"):
        if not body.get(required):
            raise _Refused(f"missing required field: {required}{where}", 400)
    return str(body["name"]), str(body.get("listen") or ""), str(body["upstream"]), _enabled(body, True)


def _enabled(body: dict[str, Any], default: bool) -> bool:
    enabled = body.get("enabled", default)
    if enabled is None:
        return default
    if not isinstance(enabled, bool):
        kind = "string" if isinstance(enabled, str) else "number" if isinstance(enabled, int | float) else "object"
        raise _Refused(
            f"bad request body: json: cannot unmarshal {kind} into Go struct field Proxy.enabled of type bool", 400
        )
    return enabled


async def _start(proxy: Proxy) -> None:
    """Start listening, or refuse with 500 as the real server does, in the words of Go's net.Listen."""
    try:
        await proxy.start()
    except ValueError:
        raise _Refused(f"listen tcp: address {proxy.listen}: missing port in address", 500) from None
    except OSError as error:
        reason = "bind: address already in use" if error.errno == errno.EADDRINUSE else str(error)
        raise _Refused(f"listen tcp {proxy.listen}: {reason}", 500) from None


async def _create(proxies: dict[str, Proxy], name: str, listen: str, upstream: str, enabled: bool) -> Proxy:
    proxy = Proxy(name, listen or "[::]:0", upstream, enabled)
    if enabled:
        await _start(proxy)
    proxies[name] = proxy
    return proxy


@web.middleware
async def _refusals(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        response: web.StreamResponse = await handler(request)
    except _Refused as refused:
        return _error(refused.message, refused.status)
    return response


async def version(request: web.Request) -> web.Response:
    return web.Response(text=json.dumps({"version": VERSION}) + "\n", content_type="application/json")


async def list_proxies(request: web.Request) -> web.Response:
    proxies = request.app[PROXIES]
    return _json({name: proxies[name].to_json() for name in sorted(proxies)})


async def create_proxy(request: web.Request) -> web.Response:
    name, listen, upstream, enabled = _proxy_fields(await _body(request))
    proxies = request.app[PROXIES]
    if name in proxies:
        raise _Refused("proxy already exists", 409)
    proxy = await _create(proxies, name, listen, upstream, enabled)
    return _json(proxy.to_json(), 201)


async def populate(request: web.Request) -> web.Response:
    proxies = request.app[PROXIES]
    try:
        body = await _body(request)
        if not isinstance(body, list):
            raise _Refused("bad request body: json: cannot unmarshal object into Go value of type []", 400)
        wanted = [_proxy_fields(item, f" at proxy {index}") for index, item in enumerate(body, start=1)]
        created = []
        for name, listen, upstream, enabled in wanted:
            existing = proxies.get(name)
            if existing is not None and existing.listen == listen and existing.upstream == upstream:
                created.append(existing)
                continue
            if existing is not None:
                await existing.stop()
                del proxies[name]
            created.append(await _create(proxies, name, listen, upstream, enabled))
    except _Refused as refused:
        # /populate answers its errors as JSON, with the proxies it made (none).
        return _json({"error": refused.message, "status": refused.status, "proxies": None}, refused.status)
    return _json({"proxies": [proxy.to_json() for proxy in created]}, 201)


async def reset(request: web.Request) -> web.Response:
    for proxy in request.app[PROXIES].values():
        proxy.toxics.clear()
        proxy.toxics_changed()
        if not proxy.enabled:
            proxy.enabled = True
            await _start(proxy)
    return web.Response(status=204)


async def get_proxy(request: web.Request) -> web.Response:
    return _json(_proxy(request).to_json())


async def update_proxy(request: web.Request) -> web.Response:
    proxy = _proxy(request)
    body = await _body(request)
    if not isinstance(body, dict):
        raise _Refused("bad request body: json: cannot unmarshal into a proxy", 400)
    listen = str(body.get("listen") or proxy.listen)
    upstream = str(body.get("upstream") or proxy.upstream)
    enabled = _enabled(body, proxy.enabled)
    if listen != proxy.listen or upstream != proxy.upstream or not enabled:
        await proxy.stop()
    proxy.listen, proxy.upstream, proxy.enabled = listen, upstream, enabled
    if enabled:
        await _start(proxy)
    return _json(proxy.to_json())


async def delete_proxy(request: web.Request) -> web.Response:
    proxy = _proxy(request)
    await proxy.stop()
    del request.app[PROXIES][proxy.name]
    return web.Response(status=204)


async def list_toxics(request: web.Request) -> web.Response:
    return _json([toxic.to_json() for toxic in _proxy(request).ordered_toxics()])


async def create_toxic(request: web.Request) -> web.Response:
    proxy = _proxy(request)
    try:
        toxic = toxic_from_body(await _body(request))
    except BadToxic as bad:
        raise _Refused(str(bad), 400) from None
    if proxy.toxic(toxic.name) is not None:
        raise _Refused("toxic already exists", 409)
    proxy.toxics.append(toxic)
    proxy.toxics_changed()
    return _json(toxic.to_json())


def _toxic_of(request: web.Request) -> tuple[Proxy, Any]:
    proxy = _proxy(request)
    toxic = proxy.toxic(request.match_info["toxic"])
    if toxic is None:
        raise _Refused("toxic not found", 404)
    return proxy, toxic


async def get_toxic(request: web.Request) -> web.Response:
    _, toxic = _toxic_of(request)
    return _json(toxic.to_json())


async def update_toxic(request: web.Request) -> web.Response:
    proxy, toxic = _toxic_of(request)
    body = await _body(request)
    if not isinstance(body, dict):
        raise _Refused("bad request body: json: cannot unmarshal into a toxic", 400)
    try:
        toxic.update(body)
    except BadToxic as bad:
        raise _Refused(str(bad), 400) from None
    proxy.toxics_changed()
    return _json(toxic.to_json())


async def delete_toxic(request: web.Request) -> web.Response:
    proxy, toxic = _toxic_of(request)
    proxy.toxics.remove(toxic)
    proxy.toxics_changed()
    return web.Response(status=204)


async def _stop_proxies(app: web.Application) -> None:
    for proxy in list(app[PROXIES].values()):
        await proxy.stop()


def create_app() -> web.Application:
    app = web.Application(middlewares=[_refusals])
    app[PROXIES] = {}
    app.on_shutdown.append(_stop_proxies)
    app.router.add_get("/version", version)
    app.router.add_get("/proxies", list_proxies)
    app.router.add_post("/proxies", create_proxy)
    app.router.add_post("/populate", populate)
    app.router.add_post("/reset", reset)
    app.router.add_get("/proxies/{proxy}", get_proxy)
    app.router.add_post("/proxies/{proxy}", update_proxy)
    app.router.add_delete("/proxies/{proxy}", delete_proxy)
    app.router.add_get("/proxies/{proxy}/toxics", list_toxics)
    app.router.add_post("/proxies/{proxy}/toxics", create_toxic)
    app.router.add_get("/proxies/{proxy}/toxics/{toxic}", get_toxic)
    app.router.add_post("/proxies/{proxy}/toxics/{toxic}", update_toxic)
    app.router.add_patch("/proxies/{proxy}/toxics/{toxic}", update_toxic)
    app.router.add_delete("/proxies/{proxy}/toxics/{toxic}", delete_toxic)
    return app
