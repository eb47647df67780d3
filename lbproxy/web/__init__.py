"""The admin web app: JSON API, event feed, metrics and the UI."""
