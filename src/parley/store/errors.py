"""The store's domain errors; each is a ParleyError, so the API maps it with no extra code."""

from __future__ import annotations

from parley.errors import InvalidRequest, ParleyError


class ConversationNotFound(ParleyError):
    status_code = 404
    error_type = "invalid_request_error"
    code = "conversation_not_found"

    def __init__(self, conversation_id: str) -> None:
        super().__init__(f"conversation {conversation_id!r} does not exist", param="conversation_id")
        self.conversation_id = conversation_id


class ConversationExists(ParleyError):
    status_code = 409
    error_type = "invalid_request_error"
    code = "conversation_exists"

    def __init__(self, conversation_id: str) -> None:
        super().__init__(f"conversation {conversation_id!r} already exists", param="conversation_id")
        self.conversation_id = conversation_id


class MessageNotFound(ParleyError):
    status_code = 404
    error_type = "invalid_request_error"
    code = "message_not_found"

    def __init__(self, message_id: str) -> None:
        super().__init__(f"message {message_id!r} does not exist", param="message_id")
        self.message_id = message_id


class MessageNotStreaming(ParleyError):
    """`finish_message` on a message that is already finished: the first outcome stands."""

    status_code = 409
    error_type = "invalid_request_error"
    code = "message_already_finished"

    def __init__(self, message_id: str, status: str) -> None:
        super().__init__(f"message {message_id!r} is already {status}", param="message_id")
        self.message_id = message_id


class ReplyNotSaved(ParleyError):
    """A reply was generated but could not be stored; the stream ends with this instead of completing."""

    status_code = 503
    error_type = "server_error"
    code = "reply_not_saved"

    def __init__(self) -> None:
        super().__init__("the reply could not be saved: the conversation store is unavailable")


class StoreUnavailable(ParleyError):
    """The database can't be used right now (unreachable, shutting down, busy, or without Parley's schema).

    The message is Parley's own and names no host or database; the driver's words go to `detail`
    (the log). The client may retry: a failed transaction was rolled back (unless the connection
    was lost during its commit, when the outcome is unknown).
    """

    status_code = 503
    error_type = "server_error"
    code = "store_unavailable"
    RETRY_AFTER_SECONDS = 5

    def __init__(self, reason: str, *, detail: str | None = None, schema: bool = False) -> None:
        super().__init__(
            f"the conversation store is unavailable ({reason}); retry shortly",
            headers={"Retry-After": str(self.RETRY_AFTER_SECONDS)},
            detail=detail,
        )
        self.reason = reason  # "database unreachable", "database schema missing", ...: no names or hosts
        self.schema = schema  # the database answers, without the tables Parley needs: migrating fixes it


class InvalidStoreInput(InvalidRequest):
    """A value the store won't keep (bad id, role, status, title, cursor); nothing was written."""

    code = "invalid_value"


class DatabaseURLError(ValueError):
    """The database URL names a database Parley can't use."""
