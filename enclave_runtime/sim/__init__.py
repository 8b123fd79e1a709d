"""The simulated backend: the kernel image as an ordinary process on a simulated SGX platform (not confidential).

Host side (:mod:`.backend`): build and measure the image as a LibOS backend would, launch it as a process and
hand it its identity (:mod:`.identity`). The platform (:mod:`.platform`) holds what SGX hardware and Intel's
PCS would — certificates (:mod:`.certs`), collateral (:mod:`.collateral`) — in Intel's formats under a root
the verifier knows as *simulated*. In-TEE side (:mod:`.runtime`): quotes and sealing keys.

This file makes the folder a package: without it setuptools' package discovery leaves the default backend
out of the wheel, while an editable install hides the gap (tests/packaging checks every part's folders).
"""
