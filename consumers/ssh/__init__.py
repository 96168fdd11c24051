"""The SSH runner: scripts on users' servers, pooled, parallel and circuit-broken."""
