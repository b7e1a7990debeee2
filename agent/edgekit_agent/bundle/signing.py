"""ed25519 keys and signatures over the canonical manifest bytes.

Keys are stored as PEM (PKCS#8 private, SubjectPublicKeyInfo public), readable by openssl.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ..errors import EdgekitError, SignatureError


def generate_keypair(prefix: str | Path) -> tuple[Path, Path]:
    """Write PREFIX.key (mode 0600) and PREFIX.pub; refuse to overwrite an existing key."""
    key_path, pub_path = Path(f"{prefix}.key"), Path(f"{prefix}.pub")
    for p in (key_path, pub_path):
        if p.exists():
            raise EdgekitError(f"{p} already exists; refusing to overwrite a key")
    private = Ed25519PrivateKey.generate()
    key_pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    pub_pem = private.public_key().public_bytes(serialization.Encoding.PEM,
                                                serialization.PublicFormat.SubjectPublicKeyInfo)
    try:
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key_pem)
        pub_path.write_bytes(pub_pem)
    except OSError as exc:
        raise EdgekitError(f"cannot write key pair: {exc}") from None
    return key_path, pub_path


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    key = _load(path, serialization.load_pem_private_key, password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise SignatureError(f"{path}: not an ed25519 private key")
    return key


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    key = _load(path, serialization.load_pem_public_key)
    if not isinstance(key, Ed25519PublicKey):
        raise SignatureError(f"{path}: not an ed25519 public key")
    return key


def _load(path: str | Path, loader, **kwargs):
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise SignatureError(f"cannot read key {path}: {exc.strerror or exc}") from None
    try:
        return loader(data, **kwargs)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise SignatureError(f"{path}: not a PEM key ({exc})") from None


def sign(private: Ed25519PrivateKey, message: bytes) -> bytes:
    return private.sign(message)


def verify(public: Ed25519PublicKey, message: bytes, signature: bytes) -> None:
    if len(signature) != 64:
        raise SignatureError(f"signature is {len(signature)} bytes, expected 64 (ed25519)")
    try:
        public.verify(signature, message)
    except InvalidSignature:
        raise SignatureError(f"signature does not match: signed with another key than "
                             f"{key_id(public)}, or changed after signing") from None


def key_id(public: Ed25519PublicKey) -> str:
    """Short fingerprint shown in reports: first 16 hex chars of the raw key's sha256."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]
