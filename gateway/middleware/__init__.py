"""The gateway's steps, one per file, run in the order ``gateway/app.py`` lists them."""
