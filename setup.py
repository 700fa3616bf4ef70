"""Build the optional fused C kernel (updelta._fused).

The extension is optional: if no C compiler is available the install still
succeeds and updelta falls back to its pure-torch implementation of the same
metrics (slower, same numbers).
"""
from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "updelta._fused",
            sources=["updelta/_ext/fused.c"],
            extra_compile_args=["-O3", "-std=c99", "-fno-math-errno", "-fno-trapping-math", "-fassociative-math", "-fno-signed-zeros", "-ffp-contract=fast"],
            optional=True,
        )
    ]
)
