"""The forecast ledger: a per-model hash chain over every recorded live run.

`canonical` (standard library only, shared by the server and `foretell verify`) defines the
bytes that are hashed and signed; `chain` appends entries and rebuilds payloads (server);
`keys` keeps the Ed25519 checkpoint-signing keys (server). Nothing is imported here, so the
client can import `canonical` without the server stack.
"""
