"""systemd over D-Bus (dbus-fast behind a trio API): transient units, their state and signals.

Knows nothing of compose files.
"""
