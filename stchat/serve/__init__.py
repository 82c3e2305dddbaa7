"""`stchat serve`: an OpenAI-compatible HTTP server on the stchat runtime.

`command` is the Typer command (light imports only, so `stchat --help` stays fast); `app`
maps HTTP to generation requests (Starlette), `schema` reads and checks the OpenAI request
bodies, `worker` runs one generation at a time in a thread with a bounded queue, and `errors`
shapes every failure as OpenAI does.
"""
