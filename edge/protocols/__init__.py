"""Wire protocols, one pure (sans-IO) module each: frames in, typed events out, and back."""
