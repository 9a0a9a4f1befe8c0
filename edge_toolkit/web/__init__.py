"""The clinic web station (`edge-toolkit serve`, extra `[web]`): Flask pages under waitress.

`station` (checks, keeps and classifies pictures; no Flask), `store` (SQLite history),
`auth` (token, loopback rules), `app` (the pages), `cli` (the command). Nothing outside this
package imports it, so the device runtime never needs Flask.
"""
