"""Local stand-ins for the outside world, shipped with the code: an SMTP capture server (with
fault injection) and, later, Mastodon and Telegram API servers. Used by tests and the demo."""
