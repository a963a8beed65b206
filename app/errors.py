"""The one error type whose message the user reads."""


class UserFacingError(Exception):
    """Raised for bad input or an unavailable backend; its message is shown in the chat as-is."""
