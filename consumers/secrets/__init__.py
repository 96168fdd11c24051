"""The sealing service (secrets are set through it, never with the key in a client)."""
