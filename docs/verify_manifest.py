#!/usr/bin/env python3
"""Verify the signature of an otadepot device manifest.

    python3 verify_manifest.py manifest.json keys.json

manifest.json is what the device received (or what `packageManifest`
returns); keys.json is GET /.well-known/otadepot/keys. Prints "OK" and
exits 0 when the signature verifies, exits 1 otherwise. Needs the
`cryptography` package (Debian: python3-cryptography).
"""
import base64
import json
import sys

try:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
except ImportError:
    sys.exit("verify_manifest.py needs Python's `cryptography` package: "
             "apt-get install python3-cryptography (Debian), or pip install cryptography")


def canonical(value):
    # Keys sorted, no whitespace, UTF-8 as is: the form otadepot signs.
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def verify(manifest, keys):
    signature = manifest.pop("signature")
    if signature.get("alg") != "Ed25519":
        return False
    key = next((k for k in keys["keys"] if k["kid"] == signature["kid"]), None)
    if key is None:
        return False
    raw = base64.urlsafe_b64decode(key["x"] + "=" * (-len(key["x"]) % 4))
    try:
        Ed25519PublicKey.from_public_bytes(raw).verify(base64.b64decode(signature["value"]), canonical(manifest))
        return True
    except InvalidSignature:
        return False


if __name__ == "__main__":
    with open(sys.argv[1], encoding="utf-8") as f:
        manifest = json.load(f)
    with open(sys.argv[2], encoding="utf-8") as f:
        keys = json.load(f)
    if verify(manifest, keys):
        print("OK")
        sys.exit(0)
    print("BAD SIGNATURE")
    sys.exit(1)
