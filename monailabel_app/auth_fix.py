"""MONAI Label 0.8.5 with the token signature algorithm pinned, so its authentication works.

MONAI Label 0.8.5 calls ``jwt.decode`` without ``algorithms``; PyJWT 2 (which it requires)
then refuses every token, so with ``MONAI_LABEL_AUTH_ENABLE=true`` no request gets through.
This module pins RS256 (Keycloak's default realm key) and hands over MONAI Label's own app.
Start the server with it (the repository root on ``PYTHONPATH``, as ``make serve`` sets)::

    monailabel start_server --uvicorn_app monailabel_app.auth_fix:app --app monailabel_app ...

See docs/security.md (tested in tests/test_auth.py).
"""

import types

import jwt
from monailabel.endpoints.user import auth

ALGORITHMS = ["RS256"]  # Keycloak's default realm signing key; the realm's "public_key" is that RSA key


def _decode(token, key, options=None, **kwargs):
    return jwt.decode(token, key, algorithms=ALGORITHMS, options=options)


auth.jwt = types.SimpleNamespace(decode=_decode)

from monailabel.app import app  # noqa: E402,F401  (the ASGI app uvicorn serves)
