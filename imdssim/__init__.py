"""imdssim: a simulated AWS endpoint with real EC2 Instance Metadata Service semantics.

Dev and test tooling for imdsweb, not product code. It runs moto's server in-process and wraps it
in a WSGI layer that fills moto's IMDS gaps (partial modifies, validation, DryRun, pending/applied,
account defaults, declarative policies, throttling, fault injection) and can seed a demo fleet.
Start it with ``python -m imdssim --port 5000 --seed-demo``; clients reach it through the standard
``AWS_ENDPOINT_URL`` environment variable, like any other AWS endpoint.
"""
