"""Who asks: verified tokens and the identity a request acts as."""
