"""Bounces and complaints read back: the VERP envelope sender that names each delivery
(``verp``), the reports' parser (``parse``), what a report does to the subscriber (``effects``)
and the bounce mailbox read over IMAP (``mailbox``)."""
