"""Maps the repository's top-level folders (the parts of the system) into the ``teelab`` namespace.

``gateway/`` is imported as ``teelab.gateway``, ``enclave_runtime/`` as ``teelab.enclave_runtime`` and so on
(ARCHITECTURE §2). pyproject.toml cannot discover subpackages under a remapped folder, so this file does.
"""

from setuptools import find_packages, setup

PARTS = ("enclave_runtime", "gateway", "kernel", "sealed_store", "extension")

package_dir = {"teelab": "teelab"}
packages = ["teelab", *(f"teelab.{p}" for p in find_packages("teelab"))]
for part in PARTS:
    package_dir[f"teelab.{part}"] = part
    packages.append(f"teelab.{part}")
    packages.extend(f"teelab.{part}.{sub}" for sub in find_packages(part))

setup(
    package_dir=package_dir,
    packages=packages,
    package_data={"": ["*.toml", "*.json", "*.proto", "*.html", "*.css", "*.js", "*.j2", "py.typed"]},
    include_package_data=True,
)
