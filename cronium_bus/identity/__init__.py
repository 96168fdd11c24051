"""Identities checked by nats-server: the operator, accounts and users of one installation.

Cronium uses NATS decentralized JWT auth, nothing of its own in front of NATS: an operator key
signs the accounts, the ``CRONIUM`` account's keys sign users, and nats-server checks every
connection's credentials and applies its permissions. A user's credentials are a standard
``.creds`` file (nats-py ``user_credentials``, the JS ``credsAuthenticator``, the ``nats`` CLI).

- :mod:`cronium_bus.identity.jwt` — encoding NATS JWTs and ``.creds`` files with ``nkeys``;
- :mod:`cronium_bus.identity.roles` — what each role may publish and subscribe to;
- :mod:`cronium_bus.identity.authority` — the keys, users and revocations of an installation,
  kept in ``DATA_DIR/auth`` (0700), and the nats-server configuration they give.
"""
