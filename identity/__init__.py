"""Self-sovereign identity: HSM-backed Ed25519 keys, did:key, key event logs, registry.

Pure modules (no HSM, clock or network): ``canonical``, ``signer``, ``did``, ``soft``,
``records``, ``registry``, ``pop``. HSM access lives only in ``identity.pkcs11``.
"""
