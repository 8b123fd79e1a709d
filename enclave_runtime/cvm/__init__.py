"""The confidential-VM backend: the kernel runs as a process inside an SEV-SNP or TDX guest.

In-TEE side (:mod:`.runtime`): evidence through configfs-tsm (:mod:`.tsm`), falling back to ``/dev/sev-guest``
(:mod:`.sevguest`); SNP sealing keys from the firmware's derived key; none on TDX. Collateral: AMD's VCEK from
KDS (:mod:`.kds`) and Intel's TCB info, QE identity and CRLs from a PCCS (:mod:`.pccs`), each with a cache.
Host side (:mod:`.backend`): a local process inside the guest; the measurement belongs to the VM image.
"""
