"""Run one botocore operation and translate whatever it raises into the project's errors."""

import botocore.exceptions
import botocore.parsers

from .errors import translate


def call(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except (
        botocore.exceptions.BotoCoreError,
        botocore.exceptions.ClientError,
        botocore.parsers.ResponseParserError,
    ) as exc:
        translated = translate(exc)
        if translated is None:
            raise
        raise translated from exc
