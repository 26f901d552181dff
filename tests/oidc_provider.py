"""An OpenID Connect provider on loopback, for the test suite.

Started by the harness (`testkit::oidc_provider`) as its own process, one per
issuer: `python oidc_provider.py [port]` prints `listening <port>` and serves, as
`http://127.0.0.1:<port>`:

- `/.well-known/openid-configuration`: discovery;
- `/jwks`: its public keys (real RSA 2048, P-256 and Ed25519 keys, made at
  start by joserfc), each with its `kid`;
- `/control/mint` (POST `{claims, kid?, alg?}`): a token signed by one of its
  keys with the claims given (the test plays the provider's login);
  `alg` `none` and `HS256-public` make the two classic forgeries (an unsigned
  token; one MACed with the RSA key's public PEM as the "secret");
- `/control/rotate` (POST `{kty}`): a new key of that type published, the
  keys of that type before it withdrawn;
- `/control/down` (POST `{down}`): while down, every endpoint answers 503;
- `/control/stats`: how many times the key set and the discovery document were
  fetched, and how many code exchanges were made and refused;
- `/control/users` (POST `{username: claims}`): people who can sign in at its
  login page;
- `/authorize` (GET: its login page, a form; POST: the person signs in) and
  `/token`: OpenID Connect's authorization code flow with PKCE (S256 only),
  each code used once, for the redirect URI and client it was issued to; the
  ID token carries the sign-in's `nonce` and the person's claims.

Keys and signatures come from joserfc; nothing here does cryptography itself
except the forgery a test needs to be refused.
"""

import base64
import hashlib
import hmac
import html
import json
import secrets
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlencode, urlsplit

from joserfc import jwk, jwt

ALGS = {"RSA": "RS256", "EC": "ES256", "OKP": "EdDSA"}


def new_key(kty):
    if kty == "RSA":
        key = jwk.RSAKey.generate_key(2048, {"use": "sig", "alg": "RS256"})
    elif kty == "EC":
        key = jwk.ECKey.generate_key("P-256", {"use": "sig", "alg": "ES256"})
    else:
        key = jwk.OKPKey.generate_key("Ed25519", {"use": "sig", "alg": "EdDSA"})
    key.ensure_kid()
    return key


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Provider:
    def __init__(self):
        self.lock = threading.Lock()
        self.keys = [new_key(kty) for kty in ("RSA", "EC", "OKP")]
        self.down = False
        self.jwks_fetches = 0
        self.discovery_fetches = 0
        self.token_requests = 0
        self.token_refusals = 0
        self.users = {}
        self.codes = {}
        self.issuer = None

    def public(self):
        return {"keys": [k.as_dict(private=False) for k in self.keys]}

    def key(self, kid=None, kty="RSA"):
        for k in self.keys:
            if (kid is not None and k.kid == kid) or (kid is None and k.key_type == kty):
                return k
        raise KeyError(kid or kty)

    def mint(self, claims, kid=None, alg=None):
        claims = dict(claims)
        if alg == "none":
            header = {"alg": "none", "typ": "JWT"}
            return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}."
        if alg == "HS256-public":
            rsa = self.key(kid, "RSA")
            header = {"alg": "HS256", "typ": "JWT", "kid": rsa.kid}
            signing = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
            secret = rsa.as_pem(private=False)
            mac = hmac.new(secret, signing.encode(), hashlib.sha256).digest()
            return f"{signing}.{b64(mac)}"
        key = self.key(kid, {"RS256": "RSA", "ES256": "EC", "EdDSA": "OKP"}.get(alg or "RS256", "RSA"))
        header = {"alg": ALGS[key.key_type], "typ": "JWT", "kid": key.kid}
        return jwt.encode(header, claims, key, algorithms=[header["alg"]])

    def rotate(self, kty):
        fresh = new_key(kty)
        self.keys = [k for k in self.keys if k.key_type != kty] + [fresh]
        return fresh.kid


PROVIDER = Provider()


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def reply(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def body(self):
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n)
        if self.headers.get("Content-Type", "").startswith("application/x-www-form-urlencoded"):
            return {k: v[0] for k, v in parse_qs(raw.decode()).items()}
        return json.loads(raw or b"{}")

    def page(self, status, text):
        data = f"<!doctype html><html><body>{text}</body></html>".encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def login_page(self, params):
        if params.get("response_type") != "code" or params.get("code_challenge_method") != "S256" \
                or not params.get("code_challenge") or not params.get("redirect_uri"):
            return self.page(400, "<p id='error'>a code flow with PKCE (S256) is required</p>")
        hidden = "".join(
            f"<input type='hidden' name='{k}' value='{html.escape(v, quote=True)}'>"
            for k, v in params.items() if k in
            ("client_id", "redirect_uri", "state", "nonce", "code_challenge", "scope"))
        return self.page(200, "<h1>Test provider</h1><form method='post' action='/authorize'>"
                         f"{hidden}<input id='username' name='username'>"
                         "<button id='sign-in' type='submit'>Sign in</button></form>")

    def authorize(self, p, form):
        claims = p.users.get(form.get("username", ""))
        if claims is None:
            return self.page(200, "<p id='error'>no such user</p>")
        code = secrets.token_urlsafe(24)
        p.codes[code] = {**form, "claims": claims}
        target = form["redirect_uri"] + "?" + urlencode({"code": code, "state": form.get("state", "")})
        self.send_response(302)
        self.send_header("Location", target)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def token(self, p, form):
        p.token_requests += 1
        grant = p.codes.pop(form.get("code", ""), None)
        verifier = form.get("code_verifier", "")
        challenge = b64(hashlib.sha256(verifier.encode()).digest())
        if grant is None or grant.get("redirect_uri") != form.get("redirect_uri") \
                or grant.get("client_id") != form.get("client_id") or challenge != grant.get("code_challenge"):
            p.token_refusals += 1
            return self.reply(400, {"error": "invalid_grant"})
        now = int(time.time())
        claims = {"iss": p.issuer, "sub": grant.get("username", "user"),
                  "aud": grant["client_id"], "iat": now, "exp": now + 300, "nonce": grant.get("nonce", ""),
                  **grant["claims"]}
        token = p.mint(claims)
        return self.reply(200, {"id_token": token, "access_token": token, "token_type": "Bearer", "expires_in": 300})

    def do_GET(self):
        p = PROVIDER
        if self.path == "/control/stats":
            return self.reply(200, {"jwks_fetches": p.jwks_fetches, "discovery_fetches": p.discovery_fetches,
                                    "token_requests": p.token_requests, "token_refusals": p.token_refusals})
        if p.down:
            return self.reply(503, {"error": "down"})
        if self.path == "/.well-known/openid-configuration":
            with p.lock:
                p.discovery_fetches += 1
            return self.reply(200, {
                "issuer": p.issuer,
                "jwks_uri": f"{p.issuer}/jwks",
                "authorization_endpoint": f"{p.issuer}/authorize",
                "token_endpoint": f"{p.issuer}/token",
                "response_types_supported": ["code"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": list(ALGS.values()),
                "code_challenge_methods_supported": ["S256"],
            })
        url = urlsplit(self.path)
        if url.path == "/authorize":
            return self.login_page({k: v[0] for k, v in parse_qs(url.query).items()})
        if self.path == "/jwks":
            with p.lock:
                p.jwks_fetches += 1
                return self.reply(200, p.public())
        return self.reply(404, {"error": "not_found"})

    def do_POST(self):
        p = PROVIDER
        body = self.body()
        with p.lock:
            if self.path == "/control/mint":
                claims = {"iss": p.issuer, **body.get("claims", {})}
                return self.reply(200, {"token": p.mint(claims, body.get("kid"), body.get("alg"))})
            if self.path == "/control/rotate":
                return self.reply(200, {"kid": p.rotate(body.get("kty", "RSA"))})
            if self.path == "/control/down":
                p.down = bool(body.get("down"))
                return self.reply(200, {"down": p.down})
            if self.path == "/control/users":
                p.users.update(body)
                return self.reply(200, {"users": sorted(p.users)})
            if self.path == "/authorize":
                return self.authorize(p, body)
            if self.path == "/token":
                return self.token(p, body)
            if self.path == "/control/keys":
                return self.reply(200, {"keys": [{"kid": k.kid, "kty": k.key_type} for k in p.keys]})
        return self.reply(404, {"error": "not_found"})


def main():
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    PROVIDER.issuer = f"http://127.0.0.1:{server.server_address[1]}"
    print(f"listening {server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    sys.exit(main())
