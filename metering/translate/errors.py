"""The one error translation raises: a request that cannot be said in the other protocol."""


class TranslationError(ValueError):
    """A request feature with no equivalent upstream; the proxy answers it as a 400."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
