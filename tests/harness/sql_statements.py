"""The SQL Statement Execution API for ``DatabricksHarness``: a warehouse that answers canned rows.

Plug ``SqlWarehouse().handler`` into ``DatabricksHarness.handlers``. It records every statement
it receives (text, parameters, warehouse), keeps a statement RUNNING for ``running_polls``
GETs, can fail it, and serves the rows in chunks. Responses are built from
``databricks.sdk.service.sql`` dataclasses (``as_dict()``), so a change in the SDK's types shows
up as a failing test.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

STATEMENTS = "/api/2.0/sql/statements"


@dataclass
class SqlWarehouse:
    """Answers with ``columns`` (name, SDK type name) and ``rows`` (JSON_ARRAY strings or None)."""

    columns: list[tuple[str, str]] = field(default_factory=list)
    rows: list[list[str | None]] = field(default_factory=list)
    warehouse_ids: set[str] = field(default_factory=lambda: {"wh-1"})
    running_polls: int = 0  # GETs a statement stays RUNNING before it succeeds
    fail_with: str | None = None  # an error message: the statement ends FAILED
    chunk_rows: int = 1000  # rows per result chunk
    received: list[dict[str, Any]] = field(default_factory=list)
    canceled: list[str] = field(default_factory=list)
    _polls: dict[str, int] = field(default_factory=dict)
    _ids: Any = field(default_factory=lambda: itertools.count(1))

    def handler(self, method: str, path: str, body: Any, headers: Any) -> tuple[int, Any] | None:
        if not path.startswith(STATEMENTS):
            return None
        rest = path[len(STATEMENTS):].strip("/").split("/") if path != STATEMENTS else []
        if method == "POST" and not rest:
            return self._execute(body or {})
        if method == "GET" and len(rest) == 1:
            return self._get(rest[0])
        if method == "GET" and len(rest) == 4 and rest[1:3] == ["result", "chunks"]:
            return 200, self._chunk(rest[0], int(rest[3])).as_dict()
        if method == "POST" and len(rest) == 2 and rest[1] == "cancel":
            self.canceled.append(rest[0])
            return 200, {}
        return None

    def _execute(self, body: dict[str, Any]) -> tuple[int, Any]:
        if body.get("warehouse_id") not in self.warehouse_ids:
            return 404, {"error_code": "RESOURCE_DOES_NOT_EXIST",
                         "message": f"Warehouse {body.get('warehouse_id')} does not exist"}
        statement_id = f"st-{next(self._ids)}"
        self.received.append({**body, "statement_id": statement_id})
        self._polls[statement_id] = self.running_polls
        return 200, self._response(statement_id).as_dict()

    def _get(self, statement_id: str) -> tuple[int, Any]:
        if statement_id not in self._polls:
            return 404, {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": f"No statement {statement_id}"}
        self._polls[statement_id] = max(0, self._polls[statement_id] - 1)
        return 200, self._response(statement_id).as_dict()

    def _response(self, statement_id: str) -> Any:
        from databricks.sdk.service import sql

        if statement_id in self.canceled:
            return sql.StatementResponse(statement_id=statement_id,
                                         status=sql.StatementStatus(state=sql.StatementState.CANCELED))
        if self._polls[statement_id] > 0:
            return sql.StatementResponse(statement_id=statement_id,
                                         status=sql.StatementStatus(state=sql.StatementState.RUNNING))
        if self.fail_with:
            return sql.StatementResponse(statement_id=statement_id, status=sql.StatementStatus(
                state=sql.StatementState.FAILED, sql_state="42703",
                error=sql.ServiceError(error_code=sql.ServiceErrorCode.BAD_REQUEST, message=self.fail_with)))
        chunks = max(1, -(-len(self.rows) // self.chunk_rows))
        manifest = sql.ResultManifest(
            format=sql.Format.JSON_ARRAY,
            schema=sql.ResultSchema(column_count=len(self.columns), columns=[
                sql.ColumnInfo(name=name, position=i, type_name=sql.ColumnInfoTypeName(kind), type_text=kind)
                for i, (name, kind) in enumerate(self.columns)
            ]),
            total_row_count=len(self.rows), total_chunk_count=chunks, truncated=False,
        )
        return sql.StatementResponse(statement_id=statement_id, manifest=manifest, result=self._chunk(statement_id, 0),
                                     status=sql.StatementStatus(state=sql.StatementState.SUCCEEDED))

    def _chunk(self, statement_id: str, index: int) -> Any:
        from databricks.sdk.service import sql

        part = self.rows[index * self.chunk_rows:(index + 1) * self.chunk_rows]
        more = (index + 1) * self.chunk_rows < len(self.rows)
        return sql.ResultData(chunk_index=index, row_offset=index * self.chunk_rows, row_count=len(part),
                              data_array=part, next_chunk_index=index + 1 if more else None)
