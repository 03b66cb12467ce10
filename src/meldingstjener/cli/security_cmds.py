"""Commands for keys and crypto: ``pki`` (development PKI) and ``cms`` (payload debugging).

Passwords are read from a file or an environment variable, never from an argument: arguments
are visible to every user in the process list and end up in shell history.
(``ebxml verify`` lives with the ebXML commands.)
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from meldingstjener.cli.app import app
from meldingstjener.security.errors import SecurityError

if TYPE_CHECKING:
    from meldingstjener.security.keystore import KeyPair

pki_app = typer.Typer(help="Development PKI: a CA, a CRL and enterprise-like certificates.")
cms_app = typer.Typer(help="CMS payloads: encrypt, decrypt, sign and verify files.")
app.add_typer(pki_app, name="pki")
app.add_typer(cms_app, name="cms")

InPath = Annotated[Path, typer.Argument(help="Input file (DER, PEM or base64 for CMS input).")]
OutPath = Annotated[Path, typer.Argument(help="Output file.")]
PasswordFile = Annotated[
    Path | None,
    typer.Option("--password-file", help="File whose first line is the key password."),
]
PasswordEnv = Annotated[
    str | None,
    typer.Option("--password-env", help="Name of the environment variable holding the password."),
]
KeyOption = Annotated[
    Path, typer.Option("--key", help="Private key: PEM, or PKCS#12 (.p12) with its certificate.")
]


def _fail(error: SecurityError) -> typer.Exit:
    typer.echo(f"error [{error.code}]: {error.message}", err=True)
    return typer.Exit(1)


def _key_pair(
    key: Path, cert: Path | None, password_file: Path | None, password_env: str | None
) -> KeyPair:
    from meldingstjener.security.keystore import KeySource, load_key_pair

    return load_key_pair(KeySource(key, cert, password_file, password_env))


@pki_app.command("init")
def pki_init(
    directory: Annotated[Path, typer.Argument(help="Directory for the CA, CRL and keys.")],
    her_ids: Annotated[
        list[str], typer.Option("--her-id", help="HER-id to issue certificates for (repeatable).")
    ],
    crl_url: Annotated[
        str | None,
        typer.Option("--crl-url", help="CRL distribution point URL to put in the certificates."),
    ] = None,
    ocsp_url: Annotated[
        str | None,
        typer.Option("--ocsp-url", help="OCSP responder URL to put in the certificates."),
    ] = None,
) -> None:
    """Create (or extend) a development PKI with signing and encryption keys per HER-id."""
    from meldingstjener.security.devpki import init_pki

    try:
        pki = init_pki(directory, her_ids, crl_url=crl_url, ocsp_url=ocsp_url)
    except SecurityError as error:
        raise _fail(error) from None
    typer.echo(f"CA: {directory / 'ca.pem'}  CRL: {pki.crl_path}")
    for her_id, party in sorted(pki.parties.items()):
        typer.echo(
            f"HER-id {her_id}: org {party.organisation_number}, "
            f"{her_id}-sign.pem/.key/.p12, {her_id}-enc.pem/.key/.p12"
        )
    typer.echo(f"PKCS#12 password: {directory / 'p12-password.txt'}")


@pki_app.command("revoke")
def pki_revoke(
    cert: Annotated[Path, typer.Argument(help="Certificate (PEM or DER) to revoke.")],
    pki_dir: Annotated[
        Path | None,
        typer.Option("--pki-dir", help="Directory of the development PKI (default: CERT's)."),
    ] = None,
) -> None:
    """Revoke a certificate of the development CA and re-issue crl.pem."""
    from meldingstjener.security.devpki import revoke

    directory = pki_dir or cert.parent
    try:
        crl = revoke(directory, cert)
    except SecurityError as error:
        raise _fail(error) from None
    typer.echo(f"revoked; {directory / 'crl.pem'} now lists {len(crl)} certificate(s)")


@cms_app.command("encrypt")
def cms_encrypt(
    source: InPath,
    target: OutPath,
    cert: Annotated[Path, typer.Option("--cert", help="Recipient's encryption certificate.")],
    gzip: Annotated[
        bool, typer.Option("--gzip", help="Gzip the content before encrypting.")
    ] = False,
) -> None:
    """Encrypt a file as CMS EnvelopedData (DER; AES-256-CBC, RSA key transport)."""
    from meldingstjener.security import cms
    from meldingstjener.security.certs import load_certificate

    try:
        recipient = load_certificate(cert)
        target.write_bytes(cms.encrypt(source.read_bytes(), recipient, compress=gzip))
    except SecurityError as error:
        raise _fail(error) from None
    typer.echo(f"encrypted {source} -> {target}")


@cms_app.command("decrypt")
def cms_decrypt(
    source: InPath,
    target: OutPath,
    key: KeyOption,
    cert: Annotated[
        Path | None,
        typer.Option("--cert", help="Certificate of the key (not needed for PKCS#12)."),
    ] = None,
    password_file: PasswordFile = None,
    password_env: PasswordEnv = None,
    refuse_3des: Annotated[
        bool, typer.Option("--refuse-3des", help="Refuse content encrypted with 3DES.")
    ] = False,
) -> None:
    """Decrypt CMS EnvelopedData (gzipped content is gunzipped)."""
    from meldingstjener.security import cms

    try:
        pair = _key_pair(key, cert, password_file, password_env)
        der = cms.cms_der_from_any(source.read_bytes())
        plain = cms.decrypt(
            der,
            [(pair.key, pair.certificate)],
            allow_3des=not refuse_3des,
        )
    except SecurityError as error:
        raise _fail(error) from None
    target.write_bytes(plain)
    typer.echo(f"decrypted {source} -> {target} ({len(plain)} bytes)")


@cms_app.command("sign")
def cms_sign(
    source: InPath,
    target: OutPath,
    key: KeyOption,
    cert: Annotated[
        Path | None,
        typer.Option("--cert", help="Signing certificate (not needed for PKCS#12)."),
    ] = None,
    password_file: PasswordFile = None,
    password_env: PasswordEnv = None,
) -> None:
    """Sign a file as CMS SignedData with the content attached (DER, SHA-256)."""
    from meldingstjener.security import cms

    try:
        pair = _key_pair(key, cert, password_file, password_env)
        signed = cms.sign(source.read_bytes(), pair.key, pair.certificate)
    except SecurityError as error:
        raise _fail(error) from None
    target.write_bytes(signed)
    typer.echo(f"signed {source} -> {target}")


@cms_app.command("verify")
def cms_verify(
    source: InPath,
    target: Annotated[
        Path | None, typer.Argument(help="Where to write the verified content (optional).")
    ] = None,
    cert: Annotated[
        Path | None,
        typer.Option(
            "--cert",
            help="Expected signer's certificate; without it the embedded one is used.",
        ),
    ] = None,
) -> None:
    """Verify CMS SignedData; exit code 0 only when the signature verified."""
    from meldingstjener.security import cms
    from meldingstjener.security.certs import describe, load_certificate

    try:
        expected = load_certificate(cert) if cert else None
        verified = cms.verify(cms.cms_der_from_any(source.read_bytes()), expected_signer=expected)
    except SecurityError as error:
        raise _fail(error) from None
    if target is not None:
        target.write_bytes(verified.content)
    when = verified.signing_time.isoformat() if verified.signing_time else "not stated"
    typer.echo(f"signature OK: signer {describe(verified.signer)}, signing time {when}")
    if expected is None:
        typer.echo("note: signer taken from the message itself; pass --cert to pin it")
