"""The command-line edge: every typer command, option type, flag → config builder and rich rendering lives here,
and so does the mapping of our errors to one line and an exit code. Imports anything; nothing imports it.
"""
