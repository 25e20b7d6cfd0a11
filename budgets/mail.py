"""Notification e-mails: one plain-text part and one HTML part from the same text, with a link
to the page the mail is about.

Bodies are composed by their callers with budgets.formatting (numbers for people); this module
only wraps them, so every mail looks alike and links are absolute (TB_PUBLIC_BASE_URL), because
a mail client has no page to resolve a relative one against.
"""

from __future__ import annotations

from django.conf import settings
from django.core.mail import EmailMultiAlternatives
from django.template.loader import render_to_string
from django.urls import reverse


def page_url(name: str, *args: object) -> str:
    """The absolute address of a page (`pages:<name>`) for a mail."""
    base = getattr(settings, "TB_PUBLIC_BASE_URL", "").rstrip("/")
    return base + reverse(f"pages:{name}", args=args)


def mail_send(
    *, subject: str, text: str, recipients: list[str], link: str = "", link_label: str = ""
) -> None:
    """Send `text` (paragraphs separated by blank lines) as plain text and as HTML, with the
    link at the end of both. Raises what the mail backend raises; callers decide."""
    plain = text + (f"\n\n{link_label or 'Open'}: {link}" if link else "")
    paragraphs = [p.splitlines() for p in text.split("\n\n") if p.strip()]
    html = render_to_string(
        "mail/notification.html",
        {"subject": subject, "paragraphs": paragraphs, "link": link, "link_label": link_label},
    )
    message = EmailMultiAlternatives(subject, plain, None, recipients)
    message.attach_alternative(html, "text/html")
    message.send(fail_silently=False)
