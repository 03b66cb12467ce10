"""The security layer: own keys, CMS payload encryption and signatures, XML signatures on the
ebXML envelope and MsgHead, certificate validation with revocation, and a development PKI.

Modules: ``keystore`` (own keys), ``cms`` (EnvelopedData/SignedData), ``xmldsig`` (XMLDSig),
``validation`` + ``revocation`` (certificate checks), ``devpki`` (test/demo certificates),
``certs`` (certificate helpers). Every failure is a :class:`SecurityError` with a ``code``.
"""

from meldingstjener.security.errors import SecurityError

__all__ = ["SecurityError"]
