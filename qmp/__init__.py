"""Supervised QMP sessions to QEMU (qemu.qmp behind a trio API). Knows nothing of compose files."""
