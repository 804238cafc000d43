"""The web doors into the core: public pages, archive and feed, the Telegram webhook."""
