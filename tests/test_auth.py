"""MONAI Label's authentication, checked through a real server against a stand-in identity provider.

A small HTTP server in this process plays Keycloak for one realm: it serves the realm document
(``GET /realms/monailabel`` with the realm's RSA public key, the only thing MONAI Label reads to
check a token), the OpenID configuration (MONAI Label reads ``token_endpoint`` from it) and the
password-grant token endpoint (MONAI Label's ``POST /auth/token`` forwards logins there). Tokens
are RS256 JWTs signed here, shaped like Keycloak's access tokens (``realm_access.roles``).

``monailabel start_server`` (0.8.5) is then started for real on 127.0.0.1 with
``MONAI_LABEL_AUTH_ENABLE=true`` pointing at that realm, serving ``monailabel_app/`` on a copy
of ``bundle/`` without a trained model, twice, one after the other:

- ``TestStockServer``: MONAI Label as installed. Every protected request without a token is
  refused (401). So is every request *with* a token, however valid: 0.8.5 calls ``jwt.decode``
  without ``algorithms``, which PyJWT 2 (which MONAI Label 0.8.5 requires) rejects. The test pins
  that, so it fails (and ``docs/security.md`` needs updating) once MONAI Label or PyJWT changes it.
- ``TestPinnedAlgorithmServer``: the same server started with ``--uvicorn_app
  monailabel_app.auth_fix:app`` (``monailabel_app/auth_fix.py``), which only pins
  ``algorithms=["RS256"]``. There, a token from the realm with the right role is accepted,
  and tokens signed by another key, expired, unsigned (``alg: none``), HMAC-signed with the
  public key, or lacking the role are refused.

See ``docs/security.md`` for what this does and does not verify.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs

import pytest

pytest.importorskip("monailabel", reason="MONAI Label is not installed (pip install -e '.[all]')")
jwt = pytest.importorskip("jwt", reason="PyJWT is not installed")
requests = pytest.importorskip("requests", reason="requests is not installed")
pytest.importorskip("cryptography", reason="cryptography is not installed")

from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: E402
from monailabel.client import MONAILabelClient  # noqa: E402
from monailabel.client.client import MONAILabelClientException  # noqa: E402
from servers import free_port, stop_process  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
APP = REPO / "monailabel_app"
REALM = "monailabel"
CLIENT_ID = "monailabel-app"  # MONAI_LABEL_AUTH_CLIENT_ID default
USER, ANNOTATOR, REVIEWER, ADMIN = "monailabel-user", "monailabel-annotator", "monailabel-reviewer", "monailabel-admin"
ALL_ROLES = [USER, ANNOTATOR, REVIEWER, ADMIN]
IMAGE_ID = "ceph_0"
ALGORITHMS_ERROR = 'It is required that you pass in a value for the "algorithms" argument'

# The workaround module (also printed in docs/security.md): MONAI Label's app with the signature
# algorithm pinned. ``from_token`` looks ``jwt`` up in its module at call time, so replacing that
# name is enough; nothing else in MONAI Label is changed.

# Every route MONAI Label 0.8.5 guards with RBAC, one per router, with the role it asks for.
PROTECTED = [
    ("GET", "/info/", USER),
    ("GET", "/datastore/", USER),
    ("GET", f"/datastore/image?image={IMAGE_ID}", USER),
    ("GET", "/datastore/dataset", ANNOTATOR),
    ("PUT", f"/datastore/label?image={IMAGE_ID}&tag=final", ANNOTATOR),
    ("DELETE", f"/datastore/image?id={IMAGE_ID}", ADMIN),
    ("POST", f"/infer/maht_net?image={IMAGE_ID}", USER),
    ("GET", "/train/", USER),
    ("POST", "/train/maht_net", ADMIN),
    ("POST", "/activelearning/first", USER),
    ("POST", "/scoring/maht_uncertainty", ANNOTATOR),
    ("GET", "/batch/infer", USER),
    ("GET", "/model/maht_net", ADMIN),
    ("PUT", "/model/maht_net", ANNOTATOR),  # its API summary says admin; 0.8.5 asks for annotator
    ("DELETE", "/model/maht_net", ANNOTATOR),  # likewise
    ("GET", "/logs/", ADMIN),
    ("GET", "/ohif/", USER),
    ("PUT", "/session/", USER),
    ("GET", "/proxy/dicom/studies", USER),
]


# --------------------------------------------------------------------------- tokens


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _claims(roles=None, exp_in: float | None = 300, **extra) -> dict:
    """Claims shaped like a Keycloak realm access token."""
    now = int(time.time())
    claims = {
        "iss": f"http://keycloak.invalid/realms/{REALM}", "aud": "account", "azp": CLIENT_ID, "typ": "Bearer",
        "sub": "0b5c1a8e-0000-4000-8000-000000000001", "iat": now - 5,
        "preferred_username": "orthodontist", "email": "ortho@example.org", "name": "Ortho Dontist",
        "realm_access": {"roles": list(ALL_ROLES if roles is None else roles) + ["offline_access"]},
    }
    if exp_in is not None:
        claims["exp"] = now + int(exp_in)
    claims.update(extra)
    return {k: v for k, v in claims.items() if v is not None}


def _rs256(key, claims: dict) -> str:
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": "stand-in"})


def _hs256(secret: bytes, claims: dict) -> str:
    """HMAC-signed token (built by hand: PyJWT refuses a PEM public key as an HMAC secret)."""
    head = _b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = _b64url(json.dumps(claims).encode())
    sig = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{_b64url(sig)}"


def _unsigned(claims: dict) -> str:
    head = _b64url(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    return f"{head}.{_b64url(json.dumps(claims).encode())}."


def _bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


# --------------------------------------------------------------------------- stand-in identity provider


class StandInIdP:
    """Keycloak's realm document, OpenID configuration and password grant for one realm."""

    USERS = {"orthodontist": ("correct horse", ALL_ROLES), "viewer": ("battery staple", [USER])}

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        spki = serialization.PublicFormat.SubjectPublicKeyInfo
        der = self.key.public_key().public_bytes(serialization.Encoding.DER, spki)
        self.public_key_b64 = base64.b64encode(der).decode()
        self.public_pem = self.key.public_key().public_bytes(serialization.Encoding.PEM, spki)
        self.seen: list[tuple[str, str, dict]] = []  # (method, path, form)
        idp = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _send(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):  # noqa: N802
                idp.seen.append(("GET", self.path, {}))
                if self.path == f"/realms/{REALM}":
                    self._send(200, {"realm": REALM, "public_key": idp.public_key_b64,
                                     "token-service": f"{idp.realm}/protocol/openid-connect",
                                     "account-service": f"{idp.realm}/account", "tokens-not-before": 0})
                elif self.path == f"/realms/{REALM}/.well-known/openid-configuration":
                    self._send(200, {"issuer": idp.realm,
                                     "authorization_endpoint": f"{idp.realm}/protocol/openid-connect/auth",
                                     "token_endpoint": f"{idp.realm}/protocol/openid-connect/token",
                                     "jwks_uri": f"{idp.realm}/protocol/openid-connect/certs",
                                     "grant_types_supported": ["authorization_code", "password", "refresh_token"],
                                     "id_token_signing_alg_values_supported": ["RS256"]})
                else:
                    self._send(404, {"error": "not found"})

            def do_POST(self):  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
                idp.seen.append(("POST", self.path, form))
                if self.path != f"/realms/{REALM}/protocol/openid-connect/token":
                    return self._send(404, {"error": "not found"})
                if form.get("client_id") != CLIENT_ID or form.get("grant_type") != "password":
                    return self._send(400, {"error": "unauthorized_client"})
                user = idp.USERS.get(form.get("username", ""))
                if user is None or user[0] != form.get("password"):
                    return self._send(401, {"error": "invalid_grant", "error_description": "Invalid user credentials"})
                token = _rs256(idp.key, _claims(user[1], preferred_username=form["username"], iss=idp.realm))
                self._send(200, {"access_token": token, "expires_in": 300, "token_type": "Bearer",
                                 "refresh_expires_in": 0, "scope": "profile email"})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.realm = f"{self.url}/realms/{REALM}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def token(self, roles=None, **claims) -> str:
        return _rs256(self.key, _claims(roles, **claims))

    def paths(self, method: str) -> list[str]:
        return [p for m, p, _ in self.seen if m == method]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def idp():
    server = StandInIdP()
    try:
        yield server
    finally:
        server.close()


# --------------------------------------------------------------------------- MONAI Label server


def _serve(root: Path, idp: StandInIdP, pinned: bool):
    """Start ``monailabel start_server`` with auth on; yield a dict; always stop it."""
    import numpy as np
    from PIL import Image

    app = root / "monailabel_app"
    shutil.copytree(APP, app, ignore=shutil.ignore_patterns("__pycache__", "logs", "model", "bin"))
    bundle = root / "bundle"  # configs only: no models/model.pt (the app starts untrained)
    shutil.copytree(REPO / "bundle" / "configs", bundle / "configs")
    studies = root / "studies"
    studies.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (80, 64), dtype=np.uint8)).save(studies / f"ceph_{i}.png")
    python_path = [str(REPO)]
    cmd = [
        sys.executable, "-m", "monailabel.main", "start_server", "--app", str(app), "--studies", str(studies),
        "--host", "127.0.0.1", "--port", str(port := free_port()),
        "--conf", "bundle", str(bundle), "--conf", "zoo_source", "local", "--conf", "device", "cpu",
    ]
    if pinned:
        cmd += ["--uvicorn_app", "monailabel_app.auth_fix:app"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MONAI_LABEL_")}
    env.update(
        MONAI_LABEL_AUTH_ENABLE="true",
        MONAI_LABEL_AUTH_REALM_URI=idp.realm,
        MONAI_LABEL_AUTH_TIMEOUT="5",
        MONAI_LABEL_AUTO_UPDATE_SCORING="false",
        MONAI_LABEL_SESSIONS="false",
        MONAI_LABEL_DATASTORE_AUTO_RELOAD="false",
        PYTHONPATH=os.pathsep.join(python_path + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])),
    )
    log = root / "server.log"
    with open(log, "w") as out:  # own process group: _stop ends it with its children
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env, cwd=str(root))
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 150
        ready = False
        while time.time() < deadline and proc.poll() is None:
            try:  # /auth/ is open by design; it answers once the app has initialised
                ready = requests.get(f"{url}/auth/", timeout=5).status_code == 200
                if ready:
                    break
            except requests.ConnectionError:
                pass
            time.sleep(0.5)
        if not ready:
            pytest.fail(f"server did not start:\n{log.read_text()[-4000:]}")
        yield {"url": url, "log": log, "proc": proc, "client": MONAILabelClient(url, tmpdir=str(root))}
    finally:
        stop_process(proc)


def _call(url: str, method: str, path: str, token: str | None = None, **kwargs) -> requests.Response:
    headers = _bearer(token) if token else {}
    return requests.request(method, url + path, headers=headers, timeout=30, **kwargs)


def _client_status(call, *args) -> int:
    with pytest.raises(MONAILabelClientException) as err:
        call(*args)
    return int(err.value.msg.split("Status: ")[1].split(";")[0])


# --------------------------------------------------------------------------- MONAI Label as installed


@pytest.fixture(scope="class")
def server(request, idp, tmp_path_factory):
    """One server per test class (stopped when the class is done): stock, or with ``auth_fix``."""
    pinned = request.cls.PINNED
    yield from _serve(tmp_path_factory.mktemp("pinned" if pinned else "stock"), idp, pinned=pinned)


class TestStockServer:
    PINNED = False

    def test_auth_is_reported_enabled(self, server, idp):
        expected = {"enabled": True, "client_id": CLIENT_ID, "realm": idp.realm}
        assert _call(server["url"], "GET", "/auth/").json() == expected
        assert server["client"].auth_enabled()

    def test_requests_without_a_token_are_refused(self, server):
        for method, path, _ in PROTECTED:
            r = _call(server["url"], method, path)
            assert r.status_code == 401, (method, path, r.status_code, r.text)
            assert r.headers.get("www-authenticate") == "Bearer", (method, path)
        for header in ({"Authorization": "Basic b3J0aG86cGFzcw=="}, {"Authorization": "Bearer"}, _bearer("not-a-jwt")):
            r = requests.get(server["url"] + "/info/", headers=header, timeout=30)
            assert r.status_code == 401, (header, r.text)
        client = server["client"]  # MONAI Label's own client, as Slicer's module uses it, no token
        assert _client_status(client.info) == 401
        assert _client_status(client.datastore) == 401
        assert _client_status(client.infer, "maht_net", IMAGE_ID, {}) == 401
        assert not client.auth_valid_token()

    def test_even_a_valid_token_is_refused_pyjwt_needs_algorithms(self, server, idp):
        """Known defect of MONAI Label 0.8.5 with PyJWT 2: auth on locks everyone out (fail-closed)."""
        token = idp.token()
        # the token itself is fine
        assert jwt.decode(token, idp.public_pem, algorithms=["RS256"], options={"verify_aud": False})
        for path in ("/info/", "/auth/token/valid"):
            r = _call(server["url"], "GET", path, token)
            assert r.status_code == 401, (path, r.status_code, r.text)
        assert f"/realms/{REALM}" in idp.paths("GET")  # the key was fetched from the realm ...
        assert ALGORITHMS_ERROR in server["log"].read_text()  # ... and the decode failed for this reason

    def test_login_is_forwarded_to_the_realm_token_endpoint(self, server, idp):
        before = len(idp.seen)
        token = server["client"].auth_token("orthodontist", "correct horse")
        assert token["token_type"] == "Bearer" and token["access_token"].count(".") == 2
        new = idp.seen[before:]
        assert f"/realms/{REALM}/.well-known/openid-configuration" in idp.paths("GET")  # token_endpoint read from here
        (form,) = [f for m, p, f in new if m == "POST"]
        assert form == {
            "client_id": CLIENT_ID, "username": "orthodontist", "password": "correct horse", "grant_type": "password"}
        # a wrong password: the realm says 401, MONAI Label 0.8.5 turns that into a 500 (no token either way)
        assert _client_status(server["client"].auth_token, "orthodontist", "wrong") == 500

    def test_routes_left_open_with_auth_on(self, server):
        """Routes MONAI Label 0.8.5 does not guard: API description, docs, static files and POST /reload."""
        url = server["url"]
        for path in ("/", "/docs", "/openapi.json", "/favicon.ico", "/auth/"):
            assert _call(url, "GET", path).status_code == 200, path
        assert "/info/" in _call(url, "GET", "/openapi.json").json()["paths"]
        # /reload drops the app instance (the next request re-creates it): open to anyone who can connect
        assert _call(url, "POST", "/reload").status_code == 200
        assert _call(url, "GET", "/info/").status_code == 401  # still closed afterwards


# --------------------------------------------------------------------------- with the algorithm pinned


class TestPinnedAlgorithmServer:
    PINNED = True

    def test_requests_without_a_token_are_still_refused(self, server):
        for method, path, _ in PROTECTED:
            r = _call(server["url"], method, path)
            assert r.status_code == 401, (method, path, r.status_code, r.text)

    def test_a_realm_token_with_the_role_is_accepted(self, server, idp):
        url, token = server["url"], idp.token()
        r = _call(url, "GET", "/info/", token)
        assert r.status_code == 200, r.text
        assert "maht_net" in r.json()["models"]
        assert _call(url, "GET", "/datastore/", token).json()["total"] == 2
        assert _call(url, "GET", "/auth/token/valid", token).json() == {
            "username": "orthodontist", "email": "ortho@example.org", "name": "Ortho Dontist",
            "roles": ALL_ROLES + ["offline_access"]}
        # past the auth check, the app answers for itself: no trained model yet
        r = _call(url, "POST", f"/infer/maht_net?image={IMAGE_ID}", token)
        assert r.status_code == 409 and "no trained model" in r.json()["detail"], r.text

    def test_login_through_monai_label_then_the_client_is_let_in(self, server):
        client = MONAILabelClient(server["url"], tmpdir=str(server["log"].parent))
        assert _client_status(client.info) == 401
        client.update_auth(client.auth_token("orthodontist", "correct horse"))
        assert client.auth_valid_token()
        assert "maht_net" in client.info()["models"]
        assert len(client.datastore()["objects"]) == 2

    def test_forged_expired_and_malformed_tokens_are_refused(self, server, idp):
        other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        cases = {
            "signed by another key": _rs256(other, _claims()),
            "expired": idp.token(exp_in=-60),
            "alg none": _unsigned(_claims()),
            "HS256 with the realm public key as secret": _hs256(idp.public_pem, _claims()),
            "HS256 with the base64 key as secret": _hs256(idp.public_key_b64.encode(), _claims()),
            "signature cut off": idp.token().rsplit(".", 1)[0] + ".",
            "payload altered": _tamper(idp.token()),
        }
        for name, token in cases.items():
            for method, path in (("GET", "/info/"), ("GET", "/auth/token/valid"),
                                 ("POST", f"/infer/maht_net?image={IMAGE_ID}")):
                r = _call(server["url"], method, path, token)
                assert r.status_code == 401, (name, path, r.status_code, r.text)

    def test_roles_are_enforced_without_hierarchy(self, server, idp):
        url = server["url"]
        viewer = idp.token([USER])
        for method, path, role in PROTECTED:
            r = _call(url, method, path, viewer)
            if role == USER:
                assert r.status_code not in (401, 403), (method, path, r.status_code, r.text)
            else:
                assert r.status_code == 403 and role in r.json()["detail"], (method, path, r.status_code, r.text)
        assert _call(url, "GET", "/info/", idp.token([])).status_code == 403
        # roles are exact names, not levels: admin alone does not include "monailabel-user"
        assert _call(url, "GET", "/info/", idp.token([ADMIN])).status_code == 403
        assert _call(url, "GET", "/logs/", idp.token([ADMIN])).status_code == 200
        # replacing or deleting the served model needs only the annotator role (past auth: no file sent / no model yet)
        annotator = idp.token([ANNOTATOR])
        assert _call(url, "PUT", "/model/maht_net", annotator).status_code == 422
        r = _call(url, "DELETE", "/model/maht_net", annotator)
        assert r.status_code == 404 and "Model File NOT Found" in r.text, r.text
        # a client role (resource_access) is not read: only realm_access.roles counts
        client_role = idp.token([], resource_access={CLIENT_ID: {"roles": ALL_ROLES}})
        assert _call(url, "GET", "/info/", client_role).status_code == 403
        # no realm_access claim at all: refused, but as a 500 (0.8.5 indexes into None)
        assert _call(url, "GET", "/info/", idp.token(realm_access=None)).status_code == 500

    def test_claims_monai_label_does_not_check(self, server, idp):
        """Pinned as found: audience, issuer and authorised party are not checked, and ``exp`` is optional."""
        url = server["url"]
        for claims in ({"aud": "some-other-client", "azp": "some-other-client"},
                       {"iss": "https://elsewhere.invalid/realms/x"},
                       {"exp_in": None}):
            r = _call(url, "GET", "/info/", idp.token(**claims))
            assert r.status_code == 200, (claims, r.status_code, r.text)


def _tamper(token: str) -> str:
    head, body, sig = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    claims["preferred_username"] = "someone-else"
    return f"{head}.{_b64url(json.dumps(claims).encode())}.{sig}"
