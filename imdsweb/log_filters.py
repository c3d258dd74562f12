"""Logging filters named in ``settings.LOGGING``."""

import logging


class ClientErrorWithoutTraceback(logging.Filter):
    """A 4xx answer (a refused page, a missing object) is the client's doing: the line is enough.

    ``django.request`` attaches the PermissionDenied / Http404 / SuspiciousOperation it caught as
    ``exc_info``; a traceback of our own code raising it on purpose says nothing. 5xx keep theirs.
    """

    def filter(self, record):
        if 400 <= getattr(record, "status_code", 500) < 500:
            record.exc_info = None
            record.exc_text = None
        return True
