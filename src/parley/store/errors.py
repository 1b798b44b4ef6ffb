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


class InvalidStoreInput(InvalidRequest):
    """A value the store won't keep (bad id, role, status, title, cursor); nothing was written."""

    code = "invalid_value"


class DatabaseURLError(ValueError):
    """The database URL names a database Parley can't use."""
