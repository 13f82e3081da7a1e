"""Stand-ins for the aiohttp pieces the pack's routes use (RouteTableDef decorators, json_response,
a request with match_info), so route handlers run without a server."""

from __future__ import annotations

import asyncio


class Routes:
    """Collects handlers the way aiohttp's RouteTableDef decorators do."""

    def __init__(self):
        self.handlers = {}

    def _add(self, method, path):
        def deco(fn):
            self.handlers[(method, path)] = fn
            return fn

        return deco

    def get(self, path):
        return self._add("GET", path)

    def post(self, path):
        return self._add("POST", path)


class Web:
    @staticmethod
    def json_response(data, status=200):
        return {"status": status, "data": data}


class Request:
    def __init__(self, **match_info):
        self.match_info = match_info


def call(routes, method, path, **match):
    return asyncio.run(routes.handlers[(method, path)](Request(**match)))
