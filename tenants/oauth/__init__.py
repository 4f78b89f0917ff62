"""Sluice's own OAuth2 authorization server: signing keys and JWKS (``keys``), access tokens
(``tokens``), and the client-credentials server on top of authlib."""
