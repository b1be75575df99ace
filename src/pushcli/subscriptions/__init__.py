"""Subscriptions: the value and its validation (``model``), and the files that carry
them (``formats``: streaming JSON/NDJSON/CSV parsers, exporters, ``read_files``).

Callers import from here; ``formats`` depends on ``model``, never the reverse.
"""

from pushcli.subscriptions.formats import (
    CSV_DELIMITERS,
    CSV_REQUIRED,
    CSV_RESERVED,
    FORMATS,
    JSON_CHUNK,
    MAX_RECORD_BYTES,
    Format,
    ParsedRecord,
    csv_delimiter,
    detect_format,
    open_source,
    parse_stream,
    read_files,
    write_csv,
    write_json,
)
from pushcli.subscriptions.model import (
    ATTR_NAME_RE,
    LOCALE_RE,
    MAX_ATTRIBUTE_LENGTH,
    MAX_ATTRIBUTES,
    TAG_RE,
    Rejected,
    Subscription,
    describe_rejection,
    make_subscription,
    stored_keys_valid,
    validate_auth,
    validate_p256dh,
    validate_tag,
)

__all__ = [
    "ATTR_NAME_RE",
    "CSV_DELIMITERS",
    "CSV_REQUIRED",
    "CSV_RESERVED",
    "FORMATS",
    "Format",
    "JSON_CHUNK",
    "LOCALE_RE",
    "MAX_ATTRIBUTES",
    "MAX_ATTRIBUTE_LENGTH",
    "MAX_RECORD_BYTES",
    "ParsedRecord",
    "Rejected",
    "Subscription",
    "TAG_RE",
    "csv_delimiter",
    "describe_rejection",
    "detect_format",
    "make_subscription",
    "open_source",
    "parse_stream",
    "read_files",
    "stored_keys_valid",
    "validate_auth",
    "validate_p256dh",
    "validate_tag",
    "write_csv",
    "write_json",
]
