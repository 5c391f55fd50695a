"""Keys for data at rest: sealing and unsealing the journal's data key with Clevis."""
