"""The Occlum backend: the kernel image as an SGX enclave under the Occlum LibOS.

Host side (:mod:`.backend`): an Occlum instance with the Python runtime copied in (:mod:`.config` writes the
copy_bom list, ``Occlum.json`` and the measured launcher), ``occlum build --sign-key``, ``occlum run``.
In-TEE side (:mod:`.runtime`): evidence and sealing keys through Occlum's ``/dev/sgx`` ioctls (:mod:`.ioctl`).
"""
