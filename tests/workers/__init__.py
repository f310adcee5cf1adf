"""Worker processes and helpers for the reliability tests (crash, fencing, reconnect)."""
