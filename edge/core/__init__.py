"""The bottom layer (pure): errors, configuration, tokens and revocation, admission, counters."""
