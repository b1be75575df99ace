"""pushcli: campaign-style Web Push (RFC 8030 / 8291 / 8292) from the command line."""

__version__ = "0.1.0"
