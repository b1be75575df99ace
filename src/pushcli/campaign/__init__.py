"""Campaigns: load and validate YAML files, render Declarative Web Push payloads.

``model`` (pydantic models and validators) <- ``loader`` (YAML with line numbers,
errors as file:line:field); ``sandbox`` (the bounded jinja2 environment) <-
``model`` and ``render`` (payloads per subscriber, size checks). Callers import
from here.
"""

from pushcli.campaign.loader import load_campaign, parse_campaign
from pushcli.campaign.model import (
    Action,
    Audience,
    Campaign,
    Delivery,
    LocaleOverride,
    Notification,
    VapidSettings,
)
from pushcli.campaign.render import Renderer, RenderError, check_payload_size, resolve_locale
from pushcli.campaign.sandbox import MAX_PLAINTEXT

__all__ = [
    "MAX_PLAINTEXT",
    "Action",
    "Audience",
    "Campaign",
    "Delivery",
    "LocaleOverride",
    "Notification",
    "RenderError",
    "Renderer",
    "VapidSettings",
    "check_payload_size",
    "load_campaign",
    "parse_campaign",
    "resolve_locale",
]
