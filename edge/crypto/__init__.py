"""Patient data at rest: the data key, where it comes from (a file, a systemd
credential, or sealed with Clevis), and what it encrypts."""
