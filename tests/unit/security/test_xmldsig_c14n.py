"""Canonicalisation in xmldsig_refs: our C14N writer against libxml2, and document subsets.

libxml2 (through lxml) is the reference for a whole document; for a subtree that sits inside a
document (SignedInfo) lxml is not, so those cases are pinned to the bytes C14N 1.0 and
Exclusive C14N prescribe (and tests/integration/security proves them against xmlsec).
"""

from __future__ import annotations

import pytest
from lxml import etree

from meldingstjener.security.xmldsig_refs import (
    canonical_document,
    canonical_signed_info,
    canonical_subtree,
    same_document_octets,
)

DS = "http://www.w3.org/2000/09/xmldsig#"
EXC = "http://www.w3.org/2001/10/xml-exc-c14n#"
C14N = "http://www.w3.org/TR/2001/REC-xml-c14n-20010315"

DOCUMENTS = {
    "namespaces": b"""<r xmlns="urn:default" xmlns:a="urn:a" xmlns:unused="urn:unused">
 <a:x><y xmlns=""><z xmlns="urn:other"/></y></a:x>
 <a:x xmlns:a="urn:a-again" xmlns:b="urn:b"><b:q a:at="1"/></a:x>
 <plain/>
</r>""",
    "attributes": b"""<r xmlns:p="urn:p" xmlns:q="urn:p" xmlns:z="urn:a" b="2" a="1"
 z:c="3" p:d="4" xml:lang="nb"><e q:d="5" z:a="6" xml:space="preserve" c="7"/></r>""",
    "escaping": b"""<r a="&amp;&lt;&gt;&quot;'&#9;&#10;&#13;x"
>text &amp; &lt;tag&gt; "quoted" &#13; line
second<![CDATA[<cdata & stuff>]]>\xc3\xa6\xc3\xb8\xc3\xa5</r>""",
    "comments and instructions": b"""<r><!-- one --><?pi data  here?><?empty?>
<e>in<!--two-->side</e><e/></r>""",
    "signature shape": f"""<S:Envelope xmlns:S="urn:soap" xmlns:eb="urn:eb" xmlns:x="urn:x">
<S:Header><eb:M S:mustUnderstand="1">v</eb:M><ds:Signature xmlns:ds="{DS}">
<ds:SignedInfo><ds:CanonicalizationMethod Algorithm="c"/><ds:Reference URI="">
<ds:Transforms><ds:Transform Algorithm="t"><ds:XPath xmlns:S2="urn:soap">not(@S2:a)</ds:XPath>
</ds:Transform></ds:Transforms><ds:DigestValue>AA==</ds:DigestValue></ds:Reference>
</ds:SignedInfo></ds:Signature></S:Header><S:Body/></S:Envelope>""".encode(),
}
MODES = {
    "inclusive": (False, False, None),
    "inclusive with comments": (False, True, None),
    "exclusive": (True, False, None),
    "exclusive with comments": (True, True, None),
    "exclusive, PrefixList": (True, False, ["a", "p", "x", "S"]),
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", DOCUMENTS)
def test_whole_documents_come_out_as_libxml2_writes_them(name: str, mode: str) -> None:
    exclusive, with_comments, prefixes = MODES[mode]
    root = etree.fromstring(DOCUMENTS[name])
    expected = etree.tostring(
        root.getroottree(),
        method="c14n",
        exclusive=exclusive,
        with_comments=with_comments,
        inclusive_ns_prefixes=prefixes,
    )
    ours = canonical_subtree(
        root, exclusive=exclusive, with_comments=with_comments, prefixes=prefixes
    )
    assert ours == expected


def _signed_info(document: bytes) -> etree._Element:
    node = etree.fromstring(document).find(f".//{{{DS}}}SignedInfo")
    assert node is not None
    return node


def test_signed_info_gets_every_namespace_in_scope_including_an_inherited_default() -> None:
    # .NET writes <Signature xmlns="...xmldsig#">: SignedInfo's default namespace is declared
    # above it. Inclusive C14N renders it (and the unused ones) on SignedInfo, nowhere below.
    signed_info = _signed_info(
        f"""<S:Envelope xmlns:S="urn:soap" xmlns:unused="urn:unused"><S:Header>
<Signature xmlns="{DS}"><SignedInfo><CanonicalizationMethod
 Algorithm="{C14N}"/><Reference URI=""/></SignedInfo>
</Signature></S:Header></S:Envelope>""".encode()
    )
    expected = (
        f'<SignedInfo xmlns="{DS}" xmlns:S="urn:soap" xmlns:unused="urn:unused">'
        f'<CanonicalizationMethod Algorithm="{C14N}"></CanonicalizationMethod>'
        '<Reference URI=""></Reference></SignedInfo>'
    )
    assert canonical_signed_info(signed_info) == expected.encode()


def test_inclusive_c14n_copies_the_nearest_xml_attributes_onto_signed_info() -> None:
    signed_info = _signed_info(
        f"""<r xml:lang="nb" xml:space="preserve" xml:base="http://example.no/"><h xml:lang="en">
<ds:Signature xmlns:ds="{DS}"><ds:SignedInfo xml:base="own"><ds:CanonicalizationMethod
 Algorithm="{C14N}"/></ds:SignedInfo></ds:Signature>
</h></r>""".encode()
    )
    expected = (
        f'<ds:SignedInfo xmlns:ds="{DS}" xml:base="own" xml:lang="en" xml:space="preserve">'
        f'<ds:CanonicalizationMethod Algorithm="{C14N}"></ds:CanonicalizationMethod>'
        "</ds:SignedInfo>"
    )
    assert canonical_signed_info(signed_info) == expected.encode()


@pytest.mark.parametrize(
    ("prefix_list", "declared"),
    [
        ("", f'xmlns:ds="{DS}"'),
        ("S", f'xmlns:S="urn:soap" xmlns:ds="{DS}"'),
        ("#default S unbound", f'xmlns="urn:default" xmlns:S="urn:soap" xmlns:ds="{DS}"'),
    ],
)
def test_exclusive_c14n_of_signed_info_renders_what_is_used_and_listed(
    prefix_list: str, declared: str
) -> None:
    method = (
        f'<ds:CanonicalizationMethod Algorithm="{EXC}"><ec:InclusiveNamespaces xmlns:ec="{EXC}"'
        f' PrefixList="{prefix_list}"/></ds:CanonicalizationMethod>'
    )
    signed_info = _signed_info(
        f"""<S:Envelope xmlns="urn:default" xmlns:S="urn:soap" xml:lang="nb"><S:Header>
<ds:Signature xmlns:ds="{DS}"><ds:SignedInfo>{method}</ds:SignedInfo></ds:Signature>
</S:Header></S:Envelope>""".encode()
    )
    # Exclusive C14N inherits no xml:* attribute and renders xmlns:ec where it is used.
    expected = (
        f'<ds:SignedInfo {declared}><ds:CanonicalizationMethod Algorithm="{EXC}">'
        f'<ec:InclusiveNamespaces xmlns:ec="{EXC}" PrefixList="{prefix_list}">'
        "</ec:InclusiveNamespaces></ds:CanonicalizationMethod></ds:SignedInfo>"
    ).encode()
    assert canonical_signed_info(signed_info) == expected


def test_exclusive_c14n_undoes_a_rendered_default_namespace_only_where_needed() -> None:
    root = etree.fromstring(b'<r xmlns="urn:d"><a xmlns=""><b/></a><c xmlns=""/></r>')
    assert canonical_subtree(root, exclusive=True, with_comments=False) == (
        b'<r xmlns="urn:d"><a xmlns=""><b></b></a><c xmlns=""></c></r>'
    )
    assert canonical_subtree(root[0], exclusive=True, with_comments=False) == b"<a><b></b></a>"


def test_with_comments_follows_the_signed_info_method() -> None:
    template = f"""<ds:Signature xmlns:ds="{DS}"><ds:SignedInfo><!-- kept? -->
<ds:CanonicalizationMethod Algorithm="ALGORITHM"/></ds:SignedInfo></ds:Signature>"""
    base = C14N
    without = canonical_signed_info(_signed_info(template.replace("ALGORITHM", base).encode()))
    with_comments = canonical_signed_info(
        _signed_info(template.replace("ALGORITHM", base + "#WithComments").encode())
    )
    assert b"kept?" not in without and b"<!-- kept? -->" in with_comments


def test_an_unknown_canonicalisation_is_refused() -> None:
    signed_info = etree.fromstring(
        f'<ds:SignedInfo xmlns:ds="{DS}"><ds:CanonicalizationMethod Algorithm="urn:x"/>'
        "</ds:SignedInfo>".encode()
    )
    with pytest.raises(ValueError, match="canonicalisation method is not supported"):
        canonical_signed_info(signed_info)


# --- URI="": the whole document -----------------------------------------------------------

MSGHEAD = f"""<?xml version="1.0"?>
<?xml-stylesheet href="a.xsl"?><!-- before -->
<m:MsgHead xmlns:m="urn:msghead" xmlns="urn:default"><m:Info>x</m:Info>
<ds:Signature xmlns:ds="{DS}"><ds:SignedInfo/></ds:Signature></m:MsgHead>
<!-- after --><?done?>""".encode()


def _transforms(*algorithms: str) -> list[etree._Element]:
    return [etree.Element(f"{{{DS}}}Transform", Algorithm=a) for a in algorithms]


def test_the_whole_document_includes_instructions_around_the_root_but_no_comments() -> None:
    root = etree.fromstring(MSGHEAD)
    signature = root.find(f"{{{DS}}}Signature")
    assert signature is not None
    octets = same_document_octets(
        signature, _transforms("http://www.w3.org/2000/09/xmldsig#enveloped-signature")
    )
    assert octets == (
        b'<?xml-stylesheet href="a.xsl"?>\n'
        b'<m:MsgHead xmlns="urn:default" xmlns:m="urn:msghead"><m:Info>x</m:Info>\n'
        b"</m:MsgHead>\n<?done?>"
    )
    assert root.find(f"{{{DS}}}Signature") is signature  # the document itself is untouched


@pytest.mark.parametrize("prefixes", [None, ["m"], ["m", "unbound"]])
def test_exclusive_whole_document_matches_libxml2(prefixes: list[str] | None) -> None:
    tree = etree.fromstring(MSGHEAD).getroottree()
    expected = etree.tostring(
        tree, method="c14n", exclusive=True, with_comments=False, inclusive_ns_prefixes=prefixes
    )
    assert canonical_document(tree, prefixes) == expected


def test_exclusive_whole_document_with_default_in_the_prefix_list() -> None:
    tree = etree.fromstring(b'<m:r xmlns:m="urn:m" xmlns="urn:d"><m:e/></m:r>').getroottree()
    assert canonical_document(tree, None) == b'<m:r xmlns:m="urn:m"><m:e></m:e></m:r>'
    assert canonical_document(tree, ["#default"]) == (
        b'<m:r xmlns="urn:d" xmlns:m="urn:m"><m:e></m:e></m:r>'
    )
