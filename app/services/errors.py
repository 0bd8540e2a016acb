"""Errors the services raise; the API turns each into its HTTP status with ``{"detail": message}``."""

from __future__ import annotations


class ServiceError(Exception):
    """A rule was broken by the request; ``status_code`` is what the API answers."""

    status_code = 400

    def __init__(self, detail: object) -> None:
        super().__init__(str(detail))
        self.detail = detail


class NotFound(ServiceError):
    status_code = 404


class Forbidden(ServiceError):
    status_code = 403


class Conflict(ServiceError):
    status_code = 409


class Invalid(ServiceError):
    """Well-formed but semantically wrong input (unknown attribute, level out of range, ...)."""

    status_code = 422


class TooLarge(ServiceError):
    status_code = 413
