#!/usr/bin/env bash
# Install, configure and start a local mail server for the EDI-over-SMTP tests (Debian 12, root,
# no systemd): Postfix on 127.0.0.1:25 (plain, local relay) and 127.0.0.1:587 (submission with
# STARTTLS and authentication), delivering the test EDI domains into maildirs that Dovecot serves
# by POP3 (110 STLS / 995 TLS) and IMAP (143 STARTTLS / 993 TLS) with a self-signed certificate.
#
# Idempotent: running it again rewrites the same configuration and reloads what already runs.
# Test users live in /etc/dovecot/meldingstjener-users (passwd-file, "user:{PLAIN}password");
# tests running as root may append to it. Every fixed user has the password below. This server
# accepts connections from 127.0.0.1 only and is for tests; never use it for real traffic.
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
    echo "install-mail-server.sh must run as root" >&2
    exit 1
fi

DOMAINS="testedi.nhn.no samsvar.nhn.no"
PASSWORD="meldingstjener-test"
# HER-ids used by the tests and the demo sites (devsites.py: 8100001 GP, 8200001/8200002 hospital).
USERS="8100001 8200001 8200002 8300001 8300002 8300003 8300004 8300005 8300006"
# Users whose POP3 mailbox admits one session at a time (Dovecot's pop3_lock_session, set per
# user as a userdb extra field): a second session is refused with "-ERR [IN-USE]" (RFC 2449),
# as a mailbox held open by another server or a mail client is.
LOCKED_USERS="8300007"
MAIL_ROOT=/var/mail/vhosts
CERT_DIR=/etc/dovecot/private
CERT="$CERT_DIR/meldingstjener-mail.pem"
KEY="$CERT_DIR/meldingstjener-mail.key"
USERS_FILE=/etc/dovecot/meldingstjener-users

need=()
for package in postfix dovecot-core dovecot-pop3d dovecot-imapd openssl; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" \
        || need+=("$package")
done
if [ "${#need[@]}" -gt 0 ]; then
    echo "postfix postfix/main_mailer_type select Local only" | debconf-set-selections
    echo "postfix postfix/mailname string localhost" | debconf-set-selections
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

# One system user owns every virtual mailbox (Postfix writes, Dovecot reads as it).
getent group vmail >/dev/null || groupadd --system --gid 5000 vmail
getent passwd vmail >/dev/null \
    || useradd --system --uid 5000 --gid 5000 --home-dir "$MAIL_ROOT" --shell /usr/sbin/nologin vmail
install -d -o vmail -g vmail -m 0770 "$MAIL_ROOT"

# Self-signed certificate for 127.0.0.1 / localhost, made once (tests trust it via its path).
install -d -m 0755 "$CERT_DIR"
if [ ! -s "$CERT" ] || [ ! -s "$KEY" ]; then
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=localhost" \
        -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
        -keyout "$KEY" -out "$CERT" 2>/dev/null
    chmod 0644 "$CERT"
    chmod 0640 "$KEY"
fi

# --- Postfix ---------------------------------------------------------------------------------
postconf -e \
    "myhostname = mail.meldingstjener.test" \
    "mydomain = meldingstjener.test" \
    "myorigin = meldingstjener.test" \
    "mydestination = localhost" \
    "inet_interfaces = 127.0.0.1" \
    "inet_protocols = ipv4" \
    "mynetworks = 127.0.0.0/8" \
    "relayhost =" \
    "message_size_limit = 60000000" \
    "mailbox_size_limit = 0" \
    "virtual_mailbox_limit = 0" \
    "virtual_mailbox_domains = ${DOMAINS}" \
    "virtual_mailbox_base = ${MAIL_ROOT}" \
    "virtual_mailbox_maps = hash:/etc/postfix/meldingstjener-vmailbox" \
    "virtual_uid_maps = static:5000" \
    "virtual_gid_maps = static:5000" \
    "smtpd_tls_cert_file = ${CERT}" \
    "smtpd_tls_key_file = ${KEY}" \
    "smtpd_tls_security_level = may" \
    "smtpd_sasl_type = dovecot" \
    "smtpd_sasl_path = private/auth" \
    "smtpd_relay_restrictions = permit_mynetworks permit_sasl_authenticated defer_unauth_destination" \
    "compatibility_level = 3.6" \
    "maillog_file = /var/log/postfix.log" \
    "smtpd_error_sleep_time = 0" \
    "smtpd_soft_error_limit = 100" \
    "smtpd_hard_error_limit = 200"
# Each test user gets a maildir <domain>/<local part>/ (the trailing / means maildir). Postfix's
# virtual agent allows no regexp substitution, so the map is written out user by user.
: >/etc/postfix/meldingstjener-vmailbox
for her_id in $USERS $LOCKED_USERS; do
    for domain in $DOMAINS; do
        echo "${her_id}@${domain} ${domain}/${her_id}/" >>/etc/postfix/meldingstjener-vmailbox
    done
done
postmap hash:/etc/postfix/meldingstjener-vmailbox
# Submission on 587: STARTTLS required, then SASL authentication (through Dovecot) required.
postconf -M "submission/inet=submission inet n - y - - smtpd"
postconf -P "submission/inet/smtpd_tls_security_level=encrypt" \
    "submission/inet/smtpd_sasl_auth_enable=yes" \
    "submission/inet/smtpd_client_restrictions=permit_sasl_authenticated,reject" \
    "submission/inet/smtpd_relay_restrictions=permit_sasl_authenticated,reject"
# Postfix runs smtpd chrooted; the key must be readable before it drops privileges (it is, as root).

# --- Dovecot ---------------------------------------------------------------------------------
if [ -f /etc/dovecot/dovecot.conf ] && ! grep -q "meldingstjener" /etc/dovecot/dovecot.conf; then
    cp /etc/dovecot/dovecot.conf /etc/dovecot/dovecot.conf.debian
fi
cat >/etc/dovecot/dovecot.conf <<EOF
# meldingstjener test mail server (written by scripts/install-mail-server.sh)
protocols = imap pop3
listen = 127.0.0.1
log_path = /var/log/dovecot.log
ssl = yes
ssl_cert = <${CERT}
ssl_key = <${KEY}
# Plain-text login is allowed without TLS so "security = none" can be tested on 110/143.
disable_plaintext_auth = no
auth_mechanisms = plain login
# Tests try wrong passwords on purpose; no 2 s penalty on this local test server.
auth_failure_delay = 0
# No growing login penalty for 127.0.0.1 either (the tests' wrong passwords come from there).
login_trusted_networks = 127.0.0.0/8
mail_location = maildir:${MAIL_ROOT}/%d/%n
first_valid_uid = 5000
passdb {
  driver = passwd-file
  args = scheme=PLAIN username_format=%u ${USERS_FILE}
}
userdb {
  driver = static
  args = uid=5000 gid=5000 home=${MAIL_ROOT}/%d/%n
}
service auth {
  unix_listener /var/spool/postfix/private/auth {
    mode = 0660
    user = postfix
    group = postfix
  }
}
service imap-login {
  inet_listener imap {
    port = 143
  }
  inet_listener imaps {
    port = 993
    ssl = yes
  }
}
service pop3-login {
  inet_listener pop3 {
    port = 110
  }
  inet_listener pop3s {
    port = 995
    ssl = yes
  }
}
protocol pop3 {
  pop3_uidl_format = %08Xu%08Xv
}
EOF
touch "$USERS_FILE"
for her_id in $USERS; do
    for domain in $DOMAINS; do
        user="${her_id}@${domain}"
        grep -q "^${user}:" "$USERS_FILE" || echo "${user}:{PLAIN}${PASSWORD}" >>"$USERS_FILE"
    done
done
# passwd-file fields: user:password:uid:gid:gecos:home:shell:extra. An extra field named
# userdb_<setting> is handed to the userdb (here the static one) as that user's own setting.
# The line is written again on every run, so an older line without the field is replaced.
for her_id in $LOCKED_USERS; do
    for domain in $DOMAINS; do
        user="${her_id}@${domain}"
        sed -i "/^${user//./\\.}:/d" "$USERS_FILE"
        echo "${user}:{PLAIN}${PASSWORD}::::::userdb_pop3_lock_session=yes" >>"$USERS_FILE"
    done
done
chown root:dovecot "$USERS_FILE"
chmod 0640 "$USERS_FILE"

# --- start or reload -------------------------------------------------------------------------
/usr/lib/postfix/configure-instance.sh - >/dev/null 2>&1 || true
if postfix status >/dev/null 2>&1; then
    postfix reload >/dev/null 2>&1
else
    postfix start >/dev/null 2>&1
fi
if doveadm reload >/dev/null 2>&1; then
    :
else
    dovecot
fi

# Wait until every port answers (the daemons fork and bind in the background).
for port in 25 587 110 995 143 993; do
    for _ in $(seq 1 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/${port}") 2>/dev/null; then
            break
        fi
        sleep 0.1
    done
done
echo "mail server ready: smtp 127.0.0.1:25/587, pop3 110/995, imap 143/993 (domains: ${DOMAINS})"
