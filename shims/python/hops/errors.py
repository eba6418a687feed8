"""The one exception type of hops."""


class HopsError(RuntimeError):
    """A call the provider (or the shim, before calling it) refused.

    `status` is the status name of hops.h ("HOPS_ERR_INVALID_ARGUMENT",
    "HOPS_ERR_UNSUPPORTED", ...); `message` is the provider's last_error text,
    which names the op, the argument, what was expected and what came.
    """

    def __init__(self, status: str, message: str):
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


def unsupported(message: str) -> HopsError:
    """A valid call that hops does not implement (the patch layer falls back on it)."""
    return HopsError("HOPS_ERR_UNSUPPORTED", message)
