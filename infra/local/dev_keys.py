"""Generate the dev stack's JWT signing keys (fresh on every `make dev`, never committed).

Usage: dev_keys.py OUT_DIR
Writes OUT_DIR/rsa.pem and OUT_DIR/ec.pem (PKCS#8 private keys, for signing test tokens) and
prints the public JWKS (kids "dev-rsa" for RS256, "dev-ec" for ES256) as one compact JSON line.
These keys exist only on this machine, so no token signed with them works outside the dev stack.
"""
import base64
import json
import os
import sys

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa


def b64(n: int, length: int) -> str:
    return base64.urlsafe_b64encode(n.to_bytes(length, "big")).rstrip(b"=").decode()


def save(key, path: str) -> None:
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
        f.write(pem)


def main() -> None:
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    save(rsa_key, os.path.join(out, "rsa.pem"))
    save(ec_key, os.path.join(out, "ec.pem"))
    rn = rsa_key.public_key().public_numbers()
    en = ec_key.public_key().public_numbers()
    jwks = {"keys": [
        {"kty": "RSA", "kid": "dev-rsa", "use": "sig", "alg": "RS256", "n": b64(rn.n, (rn.n.bit_length() + 7) // 8), "e": b64(rn.e, 3)},
        {"kty": "EC", "kid": "dev-ec", "use": "sig", "alg": "ES256", "crv": "P-256", "x": b64(en.x, 32), "y": b64(en.y, 32)},
    ]}
    print(json.dumps(jwks, separators=(",", ":")))


if __name__ == "__main__":
    main()
