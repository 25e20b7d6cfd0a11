"""Google service accounts for the Vertex AI tests: an RSA key made here, a key file in
Google's format whose `token_uri` is the mock's token endpoint, and the key's registration
with the mock, so google-auth's real signing and refresh run against it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa


@dataclass(frozen=True)
class Account:
    email: str
    path: Path  # the service-account key file
    public_pem: str

    def register(self, mock_url: str, expires_in: int = 3600) -> None:
        """Tell the mock this account's public key and its tokens' lifetime."""
        body = {"client_email": self.email, "public_key": self.public_pem}
        answer = httpx.post(
            f"{mock_url}/_mock/google/keys", json=body | {"expires_in": expires_in}, timeout=5
        )
        answer.raise_for_status()


def rsa_pems() -> tuple[str, str]:
    """A fresh 2048-bit RSA key: (private PKCS#8 PEM, public PEM)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return private, public


def write_account(
    directory: Path, name: str, token_uri: str, pems: tuple[str, str] | None = None
) -> Account:
    """A service-account key file `{name}.json` in `directory` signing for the mock."""
    private, public = pems or rsa_pems()
    email = f"{name}@tokenbudget-test.iam.gserviceaccount.com"
    info = {
        "type": "service_account",
        "project_id": "tokenbudget-test",
        "private_key_id": f"key-{name}",
        "private_key": private,
        "client_email": email,
        "client_id": "1234567890",
        "token_uri": token_uri,
    }
    path = directory / f"{name}.json"
    path.write_text(json.dumps(info))
    return Account(email, path, public)


def grants(mock_url: str, account: Account) -> int:
    """How many access tokens the mock has issued to `account`."""
    state = httpx.get(f"{mock_url}/_mock/google", timeout=5).json()
    return int(state["grants"].get(account.email, 0))
