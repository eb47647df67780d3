"""
The admin API's routes of the config history: the versions kept, one
version with its diff, and rollback to one.

They answer only when the store keeps history
(L{lbproxy.control.store.history.IConfigHistory}); a rollback is a change
of the document like any other, so it is refused as a whole if the old
version cannot be put in force now.
"""

from __future__ import annotations

from typing import Any

from lbproxy.control.store.history import Change, IConfigHistory, diff
from lbproxy.model.errors import ConfigError
from lbproxy.web.errors import ApiError, send_json
from lbproxy.web.routing import API, guarded, routes


class HistoryRoutes:
    """
    The history routes, mixed into L{lbproxy.web.app.AdminApp}.
    """


    def _history(self) -> Any:
        store = self.controller.store
        if not IConfigHistory.providedBy(store):
            raise ApiError(404, "this config store keeps no history")
        return store

    @routes.route(API + "/history", methods=["GET"])
    @guarded
    async def get_history(self, request: Any) -> bytes:
        entries = await self._history().history()
        return send_json(request, [e.meta() for e in entries])

    async def _entry(self, version: str) -> Any:
        if not version.isdigit():
            raise ApiError(404, f"there is no version {version!r}")
        entry, previous = await self._history().entry(int(version))
        if entry is None:
            raise ApiError(404, f"version {version} is not in the history (it keeps the "
                           f"last {self._history().keep})")
        return entry, previous

    @routes.route(API + "/history/<string:version>", methods=["GET"])
    @guarded
    async def get_history_entry(self, request: Any, version: str) -> bytes:
        entry, previous = await self._entry(version)
        body = entry.meta()
        body["document"] = entry.document
        if previous is not None:
            body["previous"], body["diff"] = previous.version, diff(previous.document, entry.document)
        elif entry.changes is not None:
            # The version before is no longer kept: the diff made when this one was stored.
            body["previous"], body["diff"] = entry.version - 1, entry.changes
        else:
            body["previous"], body["diff"] = None, diff(None, entry.document)
        return send_json(request, body)

    @routes.route(API + "/history/<string:version>/rollback", methods=["POST"])
    @guarded
    async def rollback(self, request: Any, version: str) -> bytes:
        entry, _ = await self._entry(version)
        from lbproxy.model.service import Document, parse_document
        from lbproxy.web.services import change_document

        try:
            old = parse_document(entry.document, f"version {entry.version}")
            self.controller.table.check(old)
        except ConfigError as e:
            raise ApiError(409, f"version {entry.version} cannot be put back in force: {e}") from None
        new, _ = await change_document(
            self, request, lambda d: (Document(d.version + 1, old.services), None),
            note=Change(self._who(request), f"rolled back to version {entry.version}"),
        )
        return self._with_version(request, new.version, new.to_json())
