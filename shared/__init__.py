"""Code both the gateway and the workers use: no aiohttp, no torch."""
