"""Subscribers: the people who receive the newsletter and the bot's messages."""
