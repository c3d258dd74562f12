"""AWS failures in the project's own terms: retry later, or record the reason and move on."""

import botocore.exceptions
import botocore.parsers

# Codes that say "try again later" rather than "this request is wrong".
RETRYABLE_CODES = frozenset(
    {
        "RequestLimitExceeded",
        "Throttling",
        "ThrottlingException",
        "TooManyRequestsException",
        "InternalError",
        "InternalFailure",
        "ServiceUnavailable",
        "Unavailable",
        "RequestTimeout",
        "RequestTimeoutException",
        "RequestExpired",
    }
)


class AwsError(Exception):
    def __init__(self, code, message, request_id=""):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.request_id = request_id


class RetryableAwsError(AwsError):
    """Worth trying again later (throttled, unavailable, timed out)."""


class PermanentAwsError(AwsError):
    """Trying again will not help (refused, invalid, not found)."""


class DryRunSucceeded(Exception):
    """A DryRun call that AWS would have accepted (error code ``DryRunOperation``)."""

    def __init__(self, request_id=""):
        super().__init__("DryRunOperation")
        self.request_id = request_id


def translate(exc):
    """Map a botocore exception to the project's errors (or DryRunSucceeded)."""
    if isinstance(exc, botocore.exceptions.ClientError):
        error = exc.response.get("Error", {})
        meta = exc.response.get("ResponseMetadata", {})
        code = error.get("Code", "Unknown")
        message = error.get("Message", str(exc))
        request_id = meta.get("RequestId", "")
        if code == "DryRunOperation":
            return DryRunSucceeded(request_id)
        status = meta.get("HTTPStatusCode", 0)
        if code in RETRYABLE_CODES or status >= 500:
            return RetryableAwsError(code, message, request_id)
        return PermanentAwsError(code, message, request_id)
    if isinstance(
        exc,
        (
            botocore.exceptions.ConnectionError,
            botocore.exceptions.HTTPClientError,
        ),
    ):
        return RetryableAwsError(type(exc).__name__, str(exc))
    if isinstance(exc, botocore.parsers.ResponseParserError):
        # An HTML error page or a truncated body: the endpoint failed, not our request.
        return RetryableAwsError("InvalidResponse", str(exc).splitlines()[0])
    if isinstance(exc, botocore.exceptions.NoCredentialsError | botocore.exceptions.PartialCredentialsError):
        return PermanentAwsError("NoCredentials", str(exc))
    return None
