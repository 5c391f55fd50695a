"""Patient data at rest: the data key, where it comes from, and what it encrypts."""
