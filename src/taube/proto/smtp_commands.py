"""The SMTP commands' own rules (RFC 5321 4.1.1, RFC 1985, RFC 3207, RFC 4954): the syntax of
each argument, the EHLO keywords, and what each command emits or answers at once.

A ``_do_<verb>`` method runs only once ``SMTPConnection._dispatch`` has found the command valid
in the current state; it either queues a reply (and counts an error for a negative one) or emits
the event the session must decide, and changes the state only through ``_enter`` (QUIT, an
accepted HELO/EHLO). The helpers they call (``_error``, ``_send``, ``_emit``, ``_enter``) are the
engine's.
"""

from __future__ import annotations

from . import replies as R
from . import sasl
from .address import (
    AddressError,
    Path,
    is_domain,
    parse_mail_argument,
    parse_mail_params,
    parse_path,
    parse_rcpt_params,
    split_params,
)
from .common import ascii_upper
from .replies import Reply
from .smtp_events import (
    AuthStart,
    Closed,
    DataStart,
    Etrn,
    Expn,
    Hello,
    MailFrom,
    RcptTo,
    SMTPConfig,
    StartTLS,
    Vrfy,
)
from .smtp_rules import _USAGE

__all__ = ["Commands"]


class Commands:
    """The command handlers of :class:`~taube.proto.smtp.SMTPConnection` (a mixin)."""

    config: SMTPConfig
    esmtp: bool
    helo: str
    recipients: int
    mail: MailFrom | None
    tls_active: bool
    authenticated: str | None
    _auth_initial: bytes | None

    def _do_helo(self, arg: str, esmtp: bool = False) -> None:
        domain = arg.split(" ")[0] if arg else ""
        if not domain:
            self._error(R.syntax(_USAGE["EHLO" if esmtp else "HELO"]))
            return
        self._reset_transaction()
        self._emit(Hello(esmtp=esmtp, domain=domain))

    def _do_ehlo(self, arg: str) -> None:
        self._do_helo(arg, esmtp=True)

    def _hello_accepted(self, event: Hello, reply: Reply | None) -> None:
        self._enter("hello")
        self.esmtp = event.esmtp
        self.helo = event.domain
        if reply is not None:
            self._send(reply)
        elif event.esmtp:
            self._send(Reply(code=250, enhanced=None, text=(self.config.hostname, *self.extensions())))
        else:
            self._send(Reply(code=250, enhanced=None, text=self.config.hostname))

    def extensions(self) -> list[str]:
        """The EHLO keywords, in Postfix's order."""
        c = self.config
        ext = ["PIPELINING", f"SIZE {c.max_message_size}"]
        if c.vrfy:
            ext.append("VRFY")
        if c.etrn:
            ext.append("ETRN")
        if c.tls_available and not self.tls_active:
            ext.append("STARTTLS")
        mechanisms = self.offered_mechanisms()
        if mechanisms:
            ext.append("AUTH " + " ".join(mechanisms))
            if c.auth_legacy_line:
                ext.append("AUTH=" + " ".join(mechanisms))
        ext += list(c.extra_extensions)
        ext += ["ENHANCEDSTATUSCODES", "8BITMIME", "DSN", "SMTPUTF8"]
        return ext

    def offered_mechanisms(self) -> tuple[str, ...]:
        c = self.config
        return c.auth_mechanisms if self.tls_active or not c.auth_requires_tls else ()

    def _do_mail(self, arg: str) -> None:
        if self.config.auth_required and self.authenticated is None:
            self._error(R.AUTH_REQUIRED)
            return
        parsed = self._path_and_params(arg, "FROM", "MAIL")
        if parsed is None:
            return
        path_text, params = parsed
        checked = parse_mail_params(params, max_message_size=self.config.max_message_size,
                                    auth=bool(self.config.auth_mechanisms))
        if isinstance(checked, Reply):
            self._error(checked)
            return
        path = self._path(path_text, "sender", "5.1.7", utf8=checked.smtputf8, allow_null=True)
        if path is None:
            return
        self._emit(MailFrom(path=path, params=params, size=checked.size, body=checked.body,
                            smtputf8=checked.smtputf8, ret=checked.ret, envid=checked.envid))

    def _path(self, text: str, role: str, enhanced: str, *, utf8: bool, **options: bool) -> Path | None:
        """``text`` as the ``role``'s path (RFC 5321 4.1.2), or None once its error is sent:
        553 5.6.7 for a non-ASCII address without SMTPUTF8 (RFC 6531 3.4), else 501 ``enhanced``."""
        try:
            return parse_path(text, utf8=utf8, **options)
        except AddressError as e:
            if not utf8 and "SMTPUTF8" in str(e):
                self._error(Reply(code=553, enhanced="5.6.7",
                                  text=f"Error: non-ASCII {role} address needs SMTPUTF8 (RFC 6531)"))
            else:
                self._error(Reply(code=501, enhanced=enhanced, text=f"Error: bad {role} address syntax: {e}"))
            return None

    def _path_and_params(self, arg: str, keyword: str, verb: str) -> tuple[str, dict[str, str | None]] | None:
        """Split a MAIL/RCPT argument; None (with the error sent) when it does not parse."""
        try:
            path_text, param_text = parse_mail_argument(arg, keyword)
        except AddressError:
            self._error(R.syntax(_USAGE[verb]))
            return None
        try:
            params = split_params(param_text)
        except AddressError as e:
            self._error(R.bad_parameters(str(e)))  # a bad word or a parameter given twice
            return None
        if params and not self.esmtp:
            self._error(R.UNSUPPORTED_PARAMETER)  # RFC 5321 4.1.1.2: parameters need EHLO
            return None
        return path_text, params

    def _do_rcpt(self, arg: str) -> None:
        parsed = self._path_and_params(arg, "TO", "RCPT")
        if parsed is None:
            return
        path_text, params = parsed
        checked = parse_rcpt_params(params)
        if isinstance(checked, Reply):
            self._error(checked)
            return
        notify, orcpt = checked
        if self.recipients >= self.config.max_recipients:
            self._error(R.TOO_MANY_RECIPIENTS)  # RFC 5321 4.5.3.1.10
            return
        path = self._path(path_text, "recipient", "5.1.3", utf8=self._smtputf8, allow_bare_postmaster=True)
        if path is None:
            return
        self._emit(RcptTo(path=path, params=params, notify=notify, orcpt=orcpt))

    @property
    def _smtputf8(self) -> bool:
        return self.mail is not None and self.mail.smtputf8

    def _do_data(self, arg: str) -> None:
        if arg:
            self._error(R.syntax(_USAGE["DATA"]))
            return
        self._emit(DataStart())

    def _do_rset(self, arg: str) -> None:
        if arg:
            self._error(R.syntax(_USAGE["RSET"]))
            return
        self._reset_transaction()
        self._send(R.RESET_OK)

    def _do_noop(self, arg: str) -> None:
        self._send(R.NOOP_OK)  # RFC 5321 4.1.1.9: a parameter is allowed and ignored

    def _do_quit(self, arg: str) -> None:
        if arg:
            self._error(R.syntax(_USAGE["QUIT"]))
            return
        self._send(Reply(code=221, enhanced="2.0.0", text=f"{self.config.hostname} Bye"))
        self._enter("quit")
        self._emit(Closed(reason="quit"))

    def _do_help(self, arg: str) -> None:
        self._send(Reply(code=214, enhanced="2.0.0", text=(
            "Commands: HELO EHLO MAIL RCPT DATA RSET NOOP QUIT HELP VRFY EXPN STARTTLS AUTH ETRN",
            "See RFC 5321 for their syntax",
        )))

    def _do_vrfy(self, arg: str) -> None:
        if not arg:
            self._error(R.syntax(_USAGE["VRFY"]))
            return
        self._emit(Vrfy(argument=arg))

    def _do_expn(self, arg: str) -> None:
        if not arg:
            self._error(R.syntax(_USAGE["EXPN"]))
            return
        self._emit(Expn(argument=arg))

    def _do_etrn(self, arg: str) -> None:
        """RFC 1985: ``ETRN example.org``, ``ETRN @example.org`` (and its subdomains) or
        ``ETRN #queue``. Reached only when enabled and outside a transaction."""
        if not arg or " " in arg:
            self._error(R.ETRN_SYNTAX)
        elif arg.startswith("#"):
            name = arg[1:]
            if not name or not name.isascii() or not name.isprintable():
                self._error(R.ETRN_SYNTAX)
            else:
                self._emit(Etrn(domain=None, queue_name=name))
        else:
            subdomains = arg.startswith("@")
            domain = arg[1:] if subdomains else arg
            if not is_domain(domain):
                self._error(R.ETRN_SYNTAX)
            else:
                self._emit(Etrn(domain=domain.lower(), subdomains=subdomains))

    # --- STARTTLS (RFC 3207) and AUTH (RFC 4954) ---------------------------------------------
    def _do_starttls(self, arg: str) -> None:
        if arg:
            self._error(R.syntax(_USAGE["STARTTLS"]))
        elif self.tls_active:
            self._error(R.TLS_ALREADY_ACTIVE)
        elif not self.config.tls_available:
            self._error(R.NOT_IMPLEMENTED)
        else:
            self._emit(StartTLS())

    def _do_auth(self, arg: str) -> None:
        name, _, initial_text = arg.partition(" ")
        name = ascii_upper(name)
        if not self.config.auth_mechanisms:
            self._error(R.NOT_IMPLEMENTED)
        elif not name:
            self._error(R.syntax(_USAGE["AUTH"]))
        elif self.authenticated is not None:
            self._error(R.ALREADY_AUTHENTICATED)
        elif not self.esmtp:
            self._error(R.NEED_EHLO_FOR_AUTH)
        elif name not in self.config.auth_mechanisms:
            self._error(R.UNKNOWN_MECHANISM)
        elif not self.offered_mechanisms():
            self._error(R.ENCRYPTION_REQUIRED)
        else:
            text = initial_text.strip()
            initial = sasl.decode_response(text) if text else None
            if text and initial is None:
                self._error(R.CANNOT_DECODE)
                return
            self._auth_initial = initial
            self._emit(AuthStart(mechanism=name))

