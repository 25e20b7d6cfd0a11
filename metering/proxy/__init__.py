"""The metering proxy: a pure core (`call`, `errors`) and a thin async shell (`shell`, `hold`,
`relay`) that only awaits; `metering.asgi` serves it straight from ASGI and `endpoints` through
Django's URLconf. See docs/architecture.md, "The proxy"."""
