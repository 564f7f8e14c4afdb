"""authres: which Authentication-Results to believe, and what they prove (RFC 8601)."""

from __future__ import annotations

from hypothesis import example, given
from hypothesis import strategies as st

from mailcase.authres import authenticated_domains, sender_is_authenticated
from mailcase.inbound import InboundMail, parse_inbound

DOMAIN = "internet-plarey.com.mx"
AGENT = f"ana.tecnica@{DOMAIN}"
OUR_MX = "mail.internet-plarey.com.mx"

# What Gmail's MX writes (folded as received, with its comments).
GMAIL = (
    "mx.google.com;\r\n"
    f"       dkim=pass header.i=@{DOMAIN} header.s=default header.b=k3Jd9x/Q;\r\n"
    f"       spf=pass (google.com: domain of {AGENT} designates 200.57.1.10 as"
    f" permitted sender) smtp.mailfrom={AGENT};\r\n"
    f"       dmarc=pass (p=QUARANTINE sp=QUARANTINE dis=NONE) header.from={DOMAIN}"
)

# Exchange Online: no authserv-id, no space after some ";", extra non-RFC properties.
MICROSOFT_365 = (
    "spf=pass (sender IP is 200.57.1.10)\r\n"
    f" smtp.mailfrom={DOMAIN}; dkim=pass (signature was verified)\r\n"
    f" header.d={DOMAIN};dmarc=pass action=none\r\n"
    f" header.from={DOMAIN};compauth=pass reason=100"
)

# Postfix with milters: each writes its own header under the same authserv-id.
OPENDMARC = f"{OUR_MX}; dmarc=pass (p=none dis=none) header.from={DOMAIN}"
OPENDKIM = (
    f"{OUR_MX};\r\n"
    f"\tdkim=pass (2048-bit key; secure) header.d={DOMAIN} header.i=@{DOMAIN}"
    " header.a=rsa-sha256 header.s=mail header.b=Hq2fX0aB;\r\n"
    "\tdkim-atps=neutral"
)
POLICYD_SPF = (
    f"{OUR_MX}; spf=pass (sender SPF authorized) smtp.mailfrom={DOMAIN}"
    f" (client-ip=200.57.1.10; helo=smtp.{DOMAIN}; envelope-from={AGENT}; receiver=<UNKNOWN>)"
)

# What a forger at another server puts in the message before sending it.
FORGED = f"{OUR_MX}; dkim=pass header.d={DOMAIN}; spf=pass smtp.mailfrom={AGENT}"


def mail(*results: str, sender: str = AGENT, reply_to: str = "") -> InboundMail:
    """A parsed message carrying ``results`` as Authentication-Results, topmost first."""
    lines = [f"Authentication-Results: {value}" for value in results]
    lines += [
        f"From: Ana Tecnica <{sender}>",
        "To: contacto@internet-plarey.com.mx",
        "Subject: Re: [Folio PLR-2026-000123] Sin servicio",
        "Message-ID: <abc@example.com>",
    ]
    if reply_to:
        lines.append(f"Reply-To: {reply_to}")
    raw = "\r\n".join(lines) + "\r\n\r\n#cerrar\r\n"
    return parse_inbound(raw.encode(), web_form_senders=[f"web@{DOMAIN}"])


def all_three(domain: str = DOMAIN) -> frozenset[tuple[str, str]]:
    return frozenset({("dkim", domain), ("spf", domain), ("dmarc", domain)})


# --- real receivers ----------------------------------------------------------------


def test_gmail_header() -> None:
    assert authenticated_domains([GMAIL], trust_topmost=True) == all_three()
    assert sender_is_authenticated(mail(GMAIL), AGENT, trust_topmost=True)
    assert sender_is_authenticated(
        mail(GMAIL), AGENT, trusted_authserv_ids=frozenset({"mx.google.com"})
    )


def test_microsoft_365_header_without_an_authserv_id() -> None:
    assert authenticated_domains([MICROSOFT_365], trust_topmost=True) == all_three()
    assert sender_is_authenticated(mail(MICROSOFT_365), AGENT, trust_topmost=True)


def test_microsoft_365_header_is_not_trusted_by_name_because_it_has_none() -> None:
    trusted = frozenset({OUR_MX})
    assert authenticated_domains([MICROSOFT_365], trusted_authserv_ids=trusted) == frozenset()


def test_postfix_milters_each_add_a_header_and_the_trusted_list_reads_them_all() -> None:
    headers = [OPENDMARC, OPENDKIM, POLICYD_SPF]
    trusted = frozenset({OUR_MX})
    assert authenticated_domains(headers, trusted_authserv_ids=trusted) == all_three()
    # Without the list only the topmost (OpenDMARC's) is believed.
    assert authenticated_domains(headers, trust_topmost=True) == frozenset({("dmarc", DOMAIN)})


def test_opendkim_header_reads_header_d_and_header_i() -> None:
    assert authenticated_domains([OPENDKIM], trust_topmost=True) == frozenset({("dkim", DOMAIN)})


def test_a_semicolon_inside_a_comment_does_not_split_results() -> None:
    # policyd-spf's trailing comment holds "client-ip=...; helo=...": not results.
    assert authenticated_domains([POLICYD_SPF], trust_topmost=True) == frozenset({("spf", DOMAIN)})


# --- whom to believe -----------------------------------------------------------------


def test_a_forged_header_below_the_receivers_is_ignored() -> None:
    receiver = f"{OUR_MX}; dkim=none; spf=softfail smtp.mailfrom={AGENT}"
    assert authenticated_domains([receiver, FORGED], trust_topmost=True) == frozenset()
    assert not sender_is_authenticated(mail(receiver, FORGED), AGENT, trust_topmost=True)


def test_a_forged_header_claiming_our_servers_id_does_not_outvote_its_real_one() -> None:
    # RFC 8601 5 asks our server to delete headers that claim its id; when it does not
    # (OpenDKIM's removal has had bugs), the forged pass below its real results must
    # not count: per method the topmost header decides, and nothing below a failure.
    trusted = frozenset({OUR_MX})
    real = f"{OUR_MX}; dkim=none; spf=fail smtp.mailfrom={AGENT}; dmarc=fail header.from={DOMAIN}"
    forged = f"{OUR_MX}; dkim=pass header.d={DOMAIN}; spf=pass smtp.mailfrom={AGENT}"
    assert authenticated_domains([real, forged], trusted_authserv_ids=trusted) == frozenset()
    assert not sender_is_authenticated(mail(real, forged), AGENT, trusted_authserv_ids=trusted)
    # No failure above: "dkim=none" decides dkim; a method the header above did not
    # check is read from the next trusted one, as each Postfix milter writes its own.
    unsigned = f"{OUR_MX}; dkim=none"
    assert authenticated_domains([unsigned, forged], trusted_authserv_ids=trusted) == frozenset(
        {("spf", DOMAIN)}
    )


def test_the_trusted_list_ignores_other_servers_wherever_they_are() -> None:
    forged_elsewhere = f"mx.attacker.example; dkim=pass header.d={DOMAIN}"
    trusted = frozenset({"mx.google.com"})
    message = mail(forged_elsewhere, GMAIL.replace("dkim=pass", "dkim=fail"))
    assert authenticated_domains(
        message.headers["authentication-results"], trusted_authserv_ids=trusted
    ) == frozenset({("spf", DOMAIN), ("dmarc", DOMAIN)})
    only_forged = mail(forged_elsewhere)
    assert not sender_is_authenticated(only_forged, AGENT, trusted_authserv_ids=trusted)
    # The same header is believed without a list, because it is the topmost.
    assert sender_is_authenticated(only_forged, AGENT, trust_topmost=True)


def test_trusted_ids_compare_without_case_or_trailing_dot() -> None:
    header = f"Mail.Internet-Plarey.com.mx.; dkim=pass header.d={DOMAIN}"
    trusted = frozenset({"MAIL.internet-plarey.com.mx"})
    assert authenticated_domains([header], trusted_authserv_ids=trusted) == frozenset(
        {("dkim", DOMAIN)}
    )


def test_no_header_means_not_authenticated() -> None:
    assert authenticated_domains([], trust_topmost=True) == frozenset()
    assert not sender_is_authenticated(mail(), AGENT, trust_topmost=True)


# --- what a result proves -------------------------------------------------------------


def test_dkim_fail_does_not_count() -> None:
    header = f"{OUR_MX}; dkim=fail (bad signature) header.d={DOMAIN}"
    assert authenticated_domains([header], trust_topmost=True) == frozenset()
    assert not sender_is_authenticated(mail(header), AGENT, trust_topmost=True)


def test_softfail_neutral_and_temperror_do_not_count() -> None:
    for result in ("softfail", "neutral", "none", "temperror", "permerror", "policy", "passed"):
        header = f"{OUR_MX}; spf={result} smtp.mailfrom={AGENT}"
        assert authenticated_domains([header], trust_topmost=True) == frozenset(), result


def test_a_pass_for_another_domain_does_not_count() -> None:
    header = f"{OUR_MX}; dkim=pass header.d=gmail.com; spf=pass smtp.mailfrom=x@gmail.com"
    assert authenticated_domains([header], trust_topmost=True) == frozenset(
        {("dkim", "gmail.com"), ("spf", "gmail.com")}
    )
    assert not sender_is_authenticated(mail(header), AGENT, trust_topmost=True)


def test_a_subdomain_does_not_vouch_for_its_parent_nor_the_parent_for_it() -> None:
    sub = f"{OUR_MX}; dkim=pass header.d=mail.{DOMAIN}; spf=pass smtp.mailfrom=bounce@mail.{DOMAIN}"
    assert not sender_is_authenticated(mail(sub), AGENT, trust_topmost=True)
    parent = f"{OUR_MX}; dkim=pass header.d={DOMAIN}"
    assert not sender_is_authenticated(
        mail(parent, sender=f"ana@soporte.{DOMAIN}"), f"ana@soporte.{DOMAIN}", trust_topmost=True
    )


def test_a_lookalike_domain_does_not_count() -> None:
    header = f"{OUR_MX}; dkim=pass header.d=evil-{DOMAIN}; dkim=pass header.d={DOMAIN}.evil.example"
    assert not sender_is_authenticated(mail(header), AGENT, trust_topmost=True)


def test_spf_helo_is_not_the_sender() -> None:
    header = f"{OUR_MX}; spf=pass smtp.helo=smtp.{DOMAIN}"
    assert authenticated_domains([header], trust_topmost=True) == frozenset()


def test_the_address_must_be_the_from_address() -> None:
    header = f"{OUR_MX}; dkim=pass header.d={DOMAIN}"
    # Our web form's mail is signed by our own domain; the "customer" in its
    # Reply-To could be anyone typing an agent's address into the form.
    web = mail(header, sender=f"web@{DOMAIN}", reply_to=AGENT)
    assert web.sender == AGENT
    assert not sender_is_authenticated(web, AGENT, trust_topmost=True)
    assert not sender_is_authenticated(mail(header), f"luis@{DOMAIN}", trust_topmost=True)
    assert sender_is_authenticated(
        mail(header), "Ana.Tecnica@Internet-Plarey.com.mx", trust_topmost=True
    )


def test_an_address_without_a_domain_is_never_authenticated() -> None:
    header = f"{OUR_MX}; dkim=pass header.d={DOMAIN}"
    for address in ("", "ana", "ana@", f"@{DOMAIN}"):
        assert not sender_is_authenticated(mail(header), address, trust_topmost=True)


# --- syntax ---------------------------------------------------------------------------


def test_names_and_results_are_case_insensitive_and_domains_lower_cased() -> None:
    header = (
        f"{OUR_MX}; DKIM=PASS Header.D=Internet-Plarey.COM.MX.; SPF=Pass SMTP.MailFrom=X@{DOMAIN}"
    )
    assert authenticated_domains([header], trust_topmost=True) == frozenset(
        {("dkim", DOMAIN), ("spf", DOMAIN)}
    )


def test_quoted_strings_versions_and_spacing() -> None:
    header = (
        f'"{OUR_MX}" 1; dkim/1 = pass reason="good; (really)" header.d = {DOMAIN}'
        f' ; spf=pass smtp.mailfrom="ana tecnica"@{DOMAIN}'
    )
    assert authenticated_domains([header], trust_topmost=True) == frozenset(
        {("dkim", DOMAIN), ("spf", DOMAIN)}
    )


def test_a_pass_inside_a_comment_is_not_a_pass() -> None:
    header = f"{OUR_MX}; dkim=fail (dkim=pass header.d={DOMAIN}) header.d={DOMAIN}"
    assert authenticated_domains([header], trust_topmost=True) == frozenset()


def test_nested_and_escaped_comments() -> None:
    header = f"{OUR_MX}; dkim=pass (a (nested \\) comment) here) header.d={DOMAIN}"
    assert authenticated_domains([header], trust_topmost=True) == frozenset({("dkim", DOMAIN)})


def test_base64_signature_values_do_not_confuse_the_parser() -> None:
    header = f"{OUR_MX}; dkim=pass header.b=ab/+cd== header.d={DOMAIN}"
    assert authenticated_domains([header], trust_topmost=True) == frozenset({("dkim", DOMAIN)})


def test_no_result_header() -> None:
    assert authenticated_domains([f"{OUR_MX} 1; none"], trust_topmost=True) == frozenset()


@given(st.lists(st.text(max_size=300), max_size=4), st.frozensets(st.text(max_size=30), max_size=3))
@example([f'{OUR_MX}; dkim=pass "unterminated'], frozenset())
@example(["(unterminated; comment"], frozenset())
@example(['"; \\', ";;;==//"], frozenset({""}))
def test_never_raises_and_only_the_topmost_counts_without_a_list(
    headers: list[str], trusted: frozenset[str]
) -> None:
    found = authenticated_domains(headers, trusted_authserv_ids=trusted)
    assert all(method in {"dkim", "spf", "dmarc"} and domain for method, domain in found)
    assert authenticated_domains(headers, trust_topmost=True) == authenticated_domains(
        headers[:1], trust_topmost=True
    )
    assert authenticated_domains(headers) == frozenset()  # no trusted server: none counts


def test_by_default_no_header_is_believed() -> None:
    # With no trusted server named, a header the sender wrote itself (the
    # only one when our server adds none) must not make an agent.
    assert authenticated_domains([FORGED]) == frozenset()
    assert authenticated_domains([GMAIL]) == frozenset()
    assert not sender_is_authenticated(mail(FORGED), AGENT)
    assert sender_is_authenticated(mail(FORGED), AGENT, trust_topmost=True)


@given(st.text(max_size=300), st.text(max_size=60))
def test_sender_check_never_raises(header: str, address: str) -> None:
    message = mail(" ".join(header.split()) or "x")
    assert isinstance(sender_is_authenticated(message, address, trust_topmost=True), bool)
