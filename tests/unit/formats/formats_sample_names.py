"""Names of the fagmelding samples that are valid business messages (shared by the tests)."""

from __future__ import annotations

# Samples that are valid business messages (they round-trip and are XSD-valid).
VALID_MSGHEAD_SAMPLES = (
    "dialogmelding__1.0__foresporsel-og-svar__dialog-foresporsel-samsvar-test.xml",
    "dialogmelding__1.0__foresporsel-og-svar__dialog-notat-webmed-test.xml",
    "dialogmelding__1.0__foresporsel-og-svar__dialog-svar-webmed-test-2.xml",
    "dialogmelding__1.0__foresporsel-og-svar__dialog-svar-webmed-test.xml",
    "dialogmelding__1.1__helsefaglig-dialog__samsvar-test-message.xml",
    "helsenorge-Helsenorge_Message.xml",
)
VALID_APPREC_SAMPLES = (
    "app-rec__1.0__all-data.xml",
    "app-rec__1.0__example-avvist.xml",
    "app-rec__1.0__example-ok-feil-i-delmelding.xml",
    "app-rec__1.0__example-ok.xml",
    "app-rec__1.1__all-data.xml",
    "app-rec__1.1__example-avvist.xml",
    "app-rec__1.1__example-ok.xml",
    "helsenorge-MetadataTests_Apprec10.xml",
    "helsenorge-MetadataTests_Apprec11.xml",
)
