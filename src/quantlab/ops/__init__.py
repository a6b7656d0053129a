"""Running quantlab under an init system: systemd's notify protocol and its unit files."""
