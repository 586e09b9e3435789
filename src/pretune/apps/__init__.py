"""Applications built only from pretune's public library parts (the demo)."""
