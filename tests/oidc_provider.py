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
- `/control/stats`: how many times the key set and the discovery document were fetched.

Keys and signatures come from joserfc; nothing here does cryptography itself
except the forgery a test needs to be refused.
"""

import base64
import hashlib
import hmac
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

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
        return json.loads(self.rfile.read(n) or b"{}")

    def do_GET(self):
        p = PROVIDER
        if self.path == "/control/stats":
            return self.reply(200, {"jwks_fetches": p.jwks_fetches, "discovery_fetches": p.discovery_fetches})
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
