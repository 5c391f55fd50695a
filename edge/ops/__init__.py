"""Running on a device: systemd notification, health and metrics, ``edge check``."""
