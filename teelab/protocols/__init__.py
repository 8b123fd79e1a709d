"""The protocols both ends of a connection across the untrusted host speak, each defined once.

A module here imports nothing of teelab's parts (the verifier, the key broker, the backends): the code that
runs inside the TEE imports it, and the smaller that surface, the less the kernel image has to trust.
"""
