"""One error hierarchy: everything the service raises on purpose is a LmsWebhooksError."""

from __future__ import annotations


class LmsWebhooksError(Exception):
    """Base class of the service's own errors."""


class ConfigError(LmsWebhooksError):
    """A config mistake, naming the key path that is wrong."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


class UpstreamError(LmsWebhooksError):
    """A poll could not read the upstream API; `status` is the HTTP status when there was one."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class UpstreamRateLimited(UpstreamError):
    """429/408: the whole API key pauses for `retry_after` seconds."""

    def __init__(self, message: str, *, status: int, retry_after: float) -> None:
        super().__init__(message, status=status)
        self.retry_after = retry_after


class UpstreamProviderLimited(UpstreamError):
    """A 429 carrying `provider_errors`: the account's own provider limits it. Only that
    account waits `retry_after` seconds; the key and the other accounts go on."""

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message, status=429)
        self.retry_after = retry_after


class UpstreamUnavailable(UpstreamError):
    """5xx, timeout or broken connection: worth retrying with backoff."""


class UpstreamRejected(UpstreamError):
    """401/403/412 (account unusable) or 404 (unknown user): back off, do not hammer."""


class UpstreamMalformed(UpstreamError):
    """The answer was not JSON, not of the documented shape, or its `next` chain ran away."""


class ResourceUnserved(LmsWebhooksError):
    """A tracked resource after an account's first is not served by its provider (400/404/501
    on its route): the read ends there as a success (what was read before it is committed,
    and its lease is kept), and the resource is skipped for a while. Not an UpstreamError:
    nothing may take it for the account's own failure (a back-off, an `auto` fallback)."""

    def __init__(self, account_id: str, resource: str) -> None:
        super().__init__(f"{resource} not served for account {account_id}")
        self.resource = resource


class StaleLease(LmsWebhooksError):
    """Another process took over this work while we held it; our results are dropped."""


class AddressRefused(LmsWebhooksError, OSError):
    """An endpoint resolved to a loopback/private/link-local address (the SSRF guard).

    An OSError too, so aiohttp's connector passes it through as a connection error.
    """

    def __init__(self, host: str, address: str) -> None:
        super().__init__(
            f"{host} resolves to non-public address {address}; "
            "set delivery.allow_private_addresses to allow it"
        )
        self.host = host
        self.address = address


class InvalidInput(LmsWebhooksError, ValueError):
    """An operator's request that cannot be served as asked (a malformed cursor, a range
    that ends before it starts): the admin API answers it 400 with the reason."""


class NotFound(LmsWebhooksError, LookupError):
    """An operator asked for something the service does not know (an endpoint id): the admin
    API answers it 404."""
