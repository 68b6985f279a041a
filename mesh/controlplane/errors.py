"""API errors: one JSON shape, ``{"error": CODE, "message": TEXT}``, with the HTTP status."""

from __future__ import annotations

from starlette.responses import JSONResponse


class ApiError(Exception):
    """Raised by handlers; turned into a JSON response by the app's exception handler."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def response(self) -> JSONResponse:
        """The JSON response for this error."""
        return JSONResponse({"error": self.code, "message": self.message}, status_code=self.status)
