"""Error classes by kind, mapped to HTTP status codes by the API layer
(as moby's ``types.*Errorf`` are).  Their message is what the user reads."""

from __future__ import annotations


class QiaoError(Exception):
    status = 500


class InvalidParameter(QiaoError):
    status = 400


class NotFound(QiaoError):
    status = 404


class Conflict(QiaoError):
    status = 409
